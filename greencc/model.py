"""``Model``: the IR graph plus its input/output signature and provenance.

This is what frontends produce, passes rewrite and targets lower.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from greencc.errors import InputMismatchError, ModelLoadError
from greencc.ir.io import save_model, weights_nbytes

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype name and shape of a model input or output (str dims are symbolic)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None

    @classmethod
    def of(cls, value: ir.Value) -> TensorSpec:
        """The spec of an IR value."""
        dtype = value.dtype.numpy().name if value.dtype is not None else "unknown"
        shape = None
        if value.shape is not None:
            shape = tuple(d if isinstance(d, int) else d.value for d in value.shape)
        return cls(value.name, dtype, shape)

    def __str__(self) -> str:
        dims = "?" if self.shape is None else ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass
class Provenance:
    """Where a model came from: source, the exporter used and its options, and notes."""

    source: str
    exporter: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of this provenance."""
        return dataclasses.asdict(self)


DECODER_KEY = "greencc.decoder"


@dataclass(frozen=True)
class DecoderSpec:
    """What a generation loop needs to know about an autoregressive decoder graph.

    Stored as JSON in ``model.ir.metadata_props["greencc.decoder"]`` by the decoder
    frontend. The graph's signature is ``input_ids``, ``attention_mask``, ``position_ids``
    and ``past_key_values.{i}.key|value`` in; ``logits`` and ``present.{i}.key|value`` out.
    """

    family: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    max_positions: int | None = None
    rope_theta: float | None = None
    source: str | None = None

    @classmethod
    def of(cls, model: Model | ir.Model) -> DecoderSpec | None:
        """The spec stored on ``model``, or None when it is not a decoder."""
        ir_model = model.ir if isinstance(model, Model) else model
        raw = ir_model.metadata_props.get(DECODER_KEY)
        if raw is None:
            return None
        try:
            fields = json.loads(raw)
            fields["eos_token_ids"] = tuple(fields.get("eos_token_ids") or ())
            return cls(**fields)
        except (ValueError, TypeError) as exc:
            raise ModelLoadError(
                f"the model's '{DECODER_KEY}' metadata is malformed: {exc}",
                hint="re-export the model with greencc.from_pretrained or greencc.from_torch",
            ) from None

    def attach(self, model: Model | ir.Model) -> None:
        """Store this spec in ``model``'s metadata (saved with the ONNX file)."""
        ir_model = model.ir if isinstance(model, Model) else model
        ir_model.metadata_props[DECODER_KEY] = json.dumps(dataclasses.asdict(self), sort_keys=True)

    def past_names(self) -> list[str]:
        """The past KV input names, layer by layer, key before value."""
        return [f"past_key_values.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]

    def present_names(self) -> list[str]:
        """The present KV output names, in the order of :meth:`past_names`."""
        return [f"present.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]


class Model:
    """An ONNX graph in greencc's IR together with its signature and provenance."""

    def __init__(self, ir_model: ir.Model, provenance: Provenance | None = None) -> None:
        self.ir = ir_model
        self.provenance = provenance or Provenance(source="in-memory")

    @property
    def graph(self) -> ir.Graph:
        """The main graph."""
        return self.ir.graph

    @property
    def inputs(self) -> list[TensorSpec]:
        """Specs of the graph inputs a caller must feed (initializers excluded)."""
        return [TensorSpec.of(v) for v in self.graph.inputs if v.name not in self.graph.initializers]

    @property
    def outputs(self) -> list[TensorSpec]:
        """Specs of the graph outputs."""
        return [TensorSpec.of(v) for v in self.graph.outputs]

    def clone(self) -> Model:
        """A structural copy that shares (immutable) weight tensors with this model."""
        return Model(self.ir.clone(), dataclasses.replace(self.provenance))

    def save(self, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
        """Save as ONNX atomically (weights in ``<file>.data`` when large); returns the path."""
        return save_model(self.ir, path, external_data=external_data)

    def op_counts(self) -> Counter[str]:
        """How many nodes of each op type (``domain::Op`` for non-default domains)."""
        return Counter(
            f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
            for n in self.graph
        )

    def parameter_count(self) -> int:
        """Number of scalar weights held in initializers."""
        return sum(
            v.const_value.size for v in self.graph.initializers.values() if v.const_value is not None
        )

    def weights_nbytes(self) -> int:
        """Bytes of weights held in initializers."""
        return weights_nbytes(self.ir)

    def check_feeds(self, feeds: Mapping[str, Any], specs: Sequence[TensorSpec] | None = None) -> dict[str, np.ndarray]:
        """Validate call-time ``feeds`` against the inputs; return them as numpy arrays.

        ``specs``: the inputs' specs when the caller keeps them (they are recomputed from
        the graph otherwise). Raises :class:`InputMismatchError` naming the missing,
        unknown or mismatched input.
        """
        if not isinstance(feeds, Mapping):
            raise InputMismatchError(
                f"feeds must be a mapping of input name to array, got {type(feeds).__name__}",
                hint=f"call it as model({{{', '.join(repr(s.name) for s in self.inputs)}: ...}})",
            )
        specs = {s.name: s for s in (self.inputs if specs is None else specs)}
        unknown = sorted(set(feeds) - set(specs))
        if unknown:
            raise InputMismatchError(
                f"unknown input name(s) {unknown}",
                hint=f"the model's inputs are {', '.join(str(s) for s in specs.values())}",
            )
        missing = [name for name in specs if name not in feeds]
        if missing:
            raise InputMismatchError(
                f"missing input(s) {missing}",
                hint=f"the model's inputs are {', '.join(str(s) for s in specs.values())}",
            )
        arrays: dict[str, np.ndarray] = {}
        for name, spec in specs.items():
            array = np.asarray(feeds[name])
            if spec.dtype != "unknown" and array.dtype.name != spec.dtype:
                raise InputMismatchError(
                    f"input '{name}' has dtype {array.dtype.name}, the model expects {spec.dtype}",
                    hint=f"convert it, e.g. np.asarray(x, dtype=np.{spec.dtype})",
                )
            if spec.shape is not None:
                if array.ndim != len(spec.shape) or any(
                    isinstance(d, int) and d != got for d, got in zip(spec.shape, array.shape, strict=True)
                ):
                    raise InputMismatchError(
                        f"input '{name}' has shape {list(array.shape)}, the model expects {spec}",
                        hint="only the symbolic (named) dims may vary",
                    )
            arrays[name] = array
        return arrays

    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.inputs)
        return f"<greencc.Model {len(self.graph)} nodes ({ins}) from {self.provenance.source}>"
