"""The version of a model, as the executor's session cache keys it.

Passes rewrite onnx_ir models in place, so neither the model object nor a counter tells
whether a cached session still computes what the graph says. ``model_version`` walks the
model once (no serialization) and describes everything a session depends on: opsets, the
main graph, subgraphs and local functions, with values numbered by first appearance (so a
clone, whose nodes and values are new objects, has the same version) and weights by the
identity of their tensor objects. Weight tensors are immutable in greencc (a pass that
changes a weight writes a new initializer, as ``passes.lib.graph_edits`` does); the
version pins those tensors, so while a cache entry lives no other tensor can take the
identity its key records.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from greencc.model import Model


@dataclass(frozen=True)
class ModelVersion:
    """A model's structure and weights as a hashable ``key``; ``pins`` holds the tensors
    whose identities the key records (compared and hashed by ``key`` only)."""

    key: tuple[Hashable, ...]
    pins: tuple[object, ...] = field(compare=False, hash=False, repr=False)


def model_version(model: Model | ir.Model) -> ModelVersion:
    """The version of ``model``: equal for a model and its unchanged clone, different after
    any change to an op, attribute, edge, value name, dtype or shape, graph input or
    output, initializer tensor or opset. Costs one walk over the nodes and values."""
    ir_model = model.ir if isinstance(model, Model) else model
    walk = _Walk()
    main = walk.graph(ir_model.graph)
    functions = tuple(
        (identifier, tuple(sorted(function.opset_imports.items())),
         tuple(walk.ref(v) for v in function.inputs),
         tuple((name, walk.attribute(attr)) for name, attr in function.attributes.items()),
         walk.nodes(function),
         tuple(walk.ref(v) for v in function.outputs))
        for identifier, function in ir_model.functions.items()
    )
    # Subgraphs are described after the graphs that hold them (a worklist, not recursion).
    subgraphs = []
    while len(subgraphs) < len(walk.pending):
        subgraphs.append(walk.graph(walk.pending[len(subgraphs)]))
    key = (ir_model.ir_version, tuple(sorted(ir_model.opset_imports.items())), main, functions, tuple(subgraphs))
    return ModelVersion(key, tuple(walk.pins))


class _Walk:
    """One description of a model: value numbering, pinned tensors, subgraphs to describe."""

    def __init__(self) -> None:
        self.numbers: dict[int, int] = {}
        self.pins: list[object] = []
        self.pending: list[ir.Graph] = []

    def ref(self, value: ir.Value | None) -> int:
        """The value's number (by first appearance); -1 for an omitted optional input."""
        if value is None:
            return -1
        return self.numbers.setdefault(id(value), len(self.numbers))

    def value(self, value: ir.Value) -> tuple[Hashable, ...]:
        tensor = value.const_value
        return (self.ref(value), value.name, str(value.type), str(value.shape), self.tensor(tensor))

    def tensor(self, tensor: object) -> int | None:
        if tensor is None:
            return None
        self.pins.append(tensor)
        return id(tensor)

    def graph(self, graph: ir.Graph) -> tuple[Hashable, ...]:
        return (
            tuple(self.value(v) for v in graph.inputs),
            tuple((name, self.value(v)) for name, v in graph.initializers.items()),
            self.nodes(graph),
            tuple(self.ref(v) for v in graph.outputs),
        )

    def nodes(self, nodes: Iterable[ir.Node]) -> tuple[Hashable, ...]:
        return tuple(
            (node.domain, node.op_type, node.overload, node.version,
             tuple(self.ref(v) for v in node.inputs),
             tuple(self.value(v) for v in node.outputs),
             tuple((name, self.attribute(attr)) for name, attr in node.attributes.items()))
            for node in nodes
        )

    def attribute(self, attr: Any) -> Hashable:
        if attr.is_ref():
            return ("ref", attr.ref_attr_name, attr.type)
        kind, value = attr.type, attr.value
        if kind in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            graphs = [value] if kind == ir.AttributeType.GRAPH else list(value)
            self.pending.extend(graphs)
            return (kind, tuple(range(len(self.pending) - len(graphs), len(self.pending))))
        if kind in (ir.AttributeType.TENSOR, ir.AttributeType.SPARSE_TENSOR):
            return (kind, self.tensor(value))
        if kind in (ir.AttributeType.TENSORS, ir.AttributeType.SPARSE_TENSORS):
            return (kind, tuple(self.tensor(t) for t in value))
        if kind in (ir.AttributeType.TYPE_PROTO, ir.AttributeType.TYPE_PROTOS):
            return (kind, str(value))
        if isinstance(value, (list, tuple)):
            return (kind, tuple(value))
        return (kind, value)
