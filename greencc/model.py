"""``Model``: the IR graph plus its input/output signature and provenance.

This is what frontends produce, passes rewrite and targets lower.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from greencc.errors import InputMismatchError
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
