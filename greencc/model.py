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


# What a value holds besides a plain tensor: ONNX ``seq(tensor)``, ``optional(tensor)`` and
# ``optional(seq(tensor))``. As feeds they are a list of arrays, an array or None, and a
# list of arrays or None.
CONTAINERS = ("tensor", "sequence", "optional", "optional-sequence")


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype name and shape of a model input or output (str dims are symbolic).

    ``container`` is ``"tensor"`` for a plain tensor, else one of :data:`CONTAINERS`;
    ``dtype`` is then the element tensors' dtype and ``shape`` is None (an element's shape
    is not part of the signature).
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None
    container: str = "tensor"

    @classmethod
    def of(cls, value: ir.Value) -> TensorSpec:
        """The spec of an IR value."""
        dtype = value.dtype.numpy().name if value.dtype is not None else "unknown"
        container = container_of(value.type)
        shape = None
        if value.shape is not None and container == "tensor":
            shape = tuple(d if isinstance(d, int) else d.value for d in value.shape)
        return cls(value.name, dtype, shape, container)

    def __str__(self) -> str:
        dims = "?" if self.shape is None else ", ".join("?" if d is None else str(d) for d in self.shape)
        if self.container == "tensor":
            return f"{self.name}: {self.dtype}[{dims}]"
        return f"{self.name}: {self.container}<{self.dtype}>"


def container_of(type_: ir.TypeProtocol | None) -> str:
    """The :data:`CONTAINERS` entry of an IR type (``"tensor"`` for a tensor or no type)."""
    if isinstance(type_, ir.OptionalType):
        return "optional-sequence" if isinstance(type_.elem_type, ir.SequenceType) else "optional"
    if isinstance(type_, ir.SequenceType):
        return "sequence"
    return "tensor"


def container_feed(spec: TensorSpec, value: Any) -> tuple[Any, str | None]:
    """``value`` as the feed of a sequence or optional input ``spec`` (a list of arrays, an
    array, or None) and, when it does not fit, why (else None)."""
    if value is None:
        if spec.container.startswith("optional"):
            return None, None
        return None, f"input '{spec.name}' is a {spec.container} and cannot be None"
    holds_sequence = spec.container in ("sequence", "optional-sequence")
    if holds_sequence:
        if not isinstance(value, (list, tuple)):
            return None, (f"input '{spec.name}' is a sequence of {spec.dtype} tensors, "
                          f"got a {type(value).__name__} (give a list of arrays)")
        items = [as_array(item) for item in value]
    else:
        items = [as_array(value)]
    if any(item is None for item in items):
        return None, f"input '{spec.name}' holds a ragged nested list, not an array"
    for item in items:
        if spec.dtype != "unknown" and item.dtype.name != spec.dtype and not _is_text(spec, item):
            return None, f"input '{spec.name}' holds dtype {item.dtype.name}, the model expects {spec.dtype}"
    return (items if holds_sequence else items[0]), None


def as_array(value: Any) -> np.ndarray | None:
    """``value`` as a numpy array, or None when it is a ragged nested list (numpy cannot
    make one array of it)."""
    try:
        return np.asarray(value)
    except ValueError:
        return None


def _is_text(spec: TensorSpec, array: np.ndarray) -> bool:
    """Whether ``array`` holds text for a string input (numpy str or object arrays)."""
    return spec.dtype == "object" and array.dtype.kind in "OU"


def native_byte_order(array: np.ndarray) -> np.ndarray:
    """``array`` in the machine's byte order: a big-endian array (``>f4``, as some files and
    network buffers hold) is copied into native order, since ONNX Runtime reads raw bytes
    and would see other numbers; a native one is returned as is."""
    if array.dtype.isnative:
        return array
    return array.astype(array.dtype.newbyteorder("="))


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


# The sizes a decoder's metadata must give as positive integers.
SIZE_FIELDS = ("num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size", "vocab_size")


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
            if not isinstance(fields, dict):
                raise TypeError(f"it holds a {type(fields).__name__}, not a JSON object")
            fields["eos_token_ids"] = tuple(fields.get("eos_token_ids") or ())
            spec = cls(**fields)
            sizes = {name: getattr(spec, name) for name in SIZE_FIELDS}
            bad = sorted(name for name, size in sizes.items()
                         if isinstance(size, bool) or not isinstance(size, int) or size < 1)
            if bad:
                raise ValueError(f"{', '.join(bad)} must be positive integers")
            if 2 * spec.num_layers > len(ir_model.graph.inputs):
                raise ValueError(f"it names {spec.num_layers} layers and the graph has "
                                 f"{len(ir_model.graph.inputs)} inputs")
            return spec
        except (ValueError, TypeError, RecursionError) as exc:
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

    def check_feeds(self, feeds: Mapping[str, Any], specs: Sequence[TensorSpec] | None = None) -> dict[str, Any]:
        """Validate call-time ``feeds`` against the inputs; return them as numpy arrays
        (a list of arrays for a sequence input, None for an empty optional one).

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
        arrays: dict[str, Any] = {}
        for name, spec in specs.items():
            if spec.container != "tensor":
                arrays[name], problem = container_feed(spec, feeds[name])
                if problem is not None:
                    raise InputMismatchError(problem, hint=f"the model's inputs are {', '.join(str(s) for s in specs.values())}")
                continue
            array = as_array(feeds[name])
            if array is None:
                raise InputMismatchError(
                    f"input '{name}' is a ragged nested list, not an array",
                    hint=f"give an array of the model's shape: {spec}",
                )
            if spec.dtype != "unknown" and array.dtype.name != spec.dtype and not _is_text(spec, array):
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
            arrays[name] = native_byte_order(array)
        return arrays

    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.inputs)
        return f"<greencc.Model {len(self.graph)} nodes ({ins}) from {self.provenance.source}>"
