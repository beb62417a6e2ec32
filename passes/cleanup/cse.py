"""Common-subexpression elimination: compute each distinct value once.

Duplicate initializers are merged first (same dtype, shape and bytes), so that nodes
reading equal weights become equal themselves; then one topological sweep per graph
keys each node on (op, attributes, input identities) and reuses the first of a kind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable

import onnx_ir as ir

from greencc.ir import inherit_provenance, subgraphs
from greencc.model import Model
from greencc.passes.lib.graph_edits import (
    NON_DETERMINISTIC_OPS,
    all_graphs,
    redirect,
    remove_node,
)
from greencc.pipeline.base import Pass, PassResult, register_pass
from greencc.pipeline.context import PassContext

# Domains whose ops are pure functions of their inputs and attributes.
DETERMINISTIC_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
# Binary ops where op(a, b) == op(b, a) bit for bit, so their inputs may be keyed unordered.
COMMUTATIVE_OPS = frozenset(
    {"Add", "Mul", "And", "Or", "Xor", "Equal", "BitwiseAnd", "BitwiseOr", "BitwiseXor"}
)
# Attribute tensors and initializers up to this many bytes are keyed by their bytes;
# larger ones by a SHA-256 digest (confirmed byte for byte before merging).
_INLINE_KEY_BYTES = 256


@register_pass("cse")
class CommonSubexpressionElimination(Pass):
    """Merge nodes that compute the same thing, and initializers that hold the same data.

    Rewrites:
      w1, w2 initializers with equal dtype, shape and bytes  ->  w1 (uses of w2 read w1)
      Op[attrs](a, b) -> y1;  Op[attrs](a, b) -> y2          ->  Op[attrs](a, b) -> y1 (y2 read as y1)
      Add(a, b) -> y1;  Add(b, a) -> y2                      ->  Add(a, b) -> y1 (commutative ops)
      Op(a) -> y1;  Op(a) -> y2 (both graph outputs)         ->  Op(a) -> y1;  Identity(y1) -> y2

    Non-deterministic ops, ops with subgraphs and ops of custom domains are never merged
    (a near miss is recorded for a custom-domain duplicate). Initializers larger than
    ``max_size`` bytes are not compared, so huge weights are never paged in.
    """

    lossy = False
    max_size: int = 64 * 1024 * 1024

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        merged_initializers = merged_nodes = 0
        for graph in all_graphs(model.ir):
            merged_initializers += self._merge_initializers(graph)
            merged_nodes += self._merge_nodes(graph, ctx)
        stats = {"merged_nodes": merged_nodes, "merged_initializers": merged_initializers}
        return PassResult(model, modified=bool(merged_nodes or merged_initializers), stats=stats)

    def _merge_initializers(self, graph: ir.Graph) -> int:
        first_of: dict[Hashable, ir.Value] = {}
        merged = 0
        for value in list(graph.initializers.values()):
            tensor = value.const_value
            if (
                tensor is None
                or value.is_graph_input()
                or value.is_graph_output()
                or tensor.nbytes > self.max_size
            ):
                continue
            key = (tensor.dtype, tuple(tensor.shape.numpy()), _content_key(tensor))
            kept = first_of.get(key)
            if kept is None:
                first_of[key] = value
                continue
            if tensor.nbytes > _INLINE_KEY_BYTES and not _same_bytes(kept.const_value, tensor):
                continue  # a digest collision: keep both
            value.replace_all_uses_with(kept)
            assert value.name is not None
            del graph.initializers[value.name]
            merged += 1
        return merged

    def _merge_nodes(self, graph: ir.Graph, ctx: PassContext) -> int:
        first_of: dict[Hashable, ir.Node] = {}
        merged = 0
        for node in list(graph):
            if node.graph is not graph or node.op_type in NON_DETERMINISTIC_OPS:
                continue
            if subgraphs(node):
                continue
            key = _node_key(node)
            if key is None:
                continue
            kept = first_of.get(key)
            if kept is None:
                first_of[key] = node
                continue
            if node.domain not in DETERMINISTIC_DOMAINS:
                self.decline(
                    ctx, node,
                    f"duplicates {kept.name or kept.op_type}, but op domain '{node.domain}' "
                    "is not known to be deterministic",
                )
                continue
            if node.op_type == "Identity" and all(out.is_graph_output() for out in node.outputs):
                # Merging would only swap it for another Identity carrying the output name.
                continue
            for old, new in zip(node.outputs, kept.outputs, strict=True):
                redirect(graph, old, new, before=node, replaced=[node])
            inherit_provenance(kept, [node])
            remove_node(node)
            merged += 1
        return merged


def _node_key(node: ir.Node) -> Hashable | None:
    """What makes two nodes compute the same outputs; ``None`` for an unkeyable node."""
    # Values themselves (hashed by identity) rather than id(): the key keeps them alive,
    # so a freed value's id can never be reused by a new one within the sweep.
    inputs = list(node.inputs)
    if node.op_type in COMMUTATIVE_OPS and len(inputs) == 2 and None not in inputs:
        inputs.sort(key=id)
    attributes = []
    for name, attr in sorted(node.attributes.items()):
        if attr.is_ref():
            return None  # a reference to a function attribute: value unknown here
        attributes.append((name, attr.type, _attribute_key(attr)))
    return (
        node.domain,
        node.op_type,
        node.overload,
        len(node.outputs),
        tuple(inputs),
        tuple(attributes),
    )


def _attribute_key(attr: ir.Attr) -> Hashable:
    kind = attr.type
    if kind == ir.AttributeType.FLOAT:
        return float(attr.value).hex()  # tells -0.0 from 0.0
    if kind == ir.AttributeType.FLOATS:
        return tuple(float(v).hex() for v in attr.value)
    if kind in (ir.AttributeType.INTS, ir.AttributeType.STRINGS):
        return tuple(attr.value)
    if kind == ir.AttributeType.TENSOR:
        tensor = attr.as_tensor()
        return (tensor.dtype, tuple(tensor.shape.numpy()), _content_key(tensor))
    if kind == ir.AttributeType.TENSORS:
        return tuple(
            (t.dtype, tuple(t.shape.numpy()), _content_key(t)) for t in attr.value
        )
    if kind in (ir.AttributeType.INT, ir.AttributeType.STRING):
        return attr.value
    # Sparse tensors, type protos and anything newer: identity only.
    return ("object", id(attr))


def _tensor_bytes(tensor: ir.TensorProtocol) -> bytes:
    if tensor.dtype == ir.DataType.STRING:
        return b"\x00".join(tensor.string_data()) + repr(
            [len(s) for s in tensor.string_data()]
        ).encode()
    return tensor.tobytes()


def _content_key(tensor: ir.TensorProtocol) -> Hashable:
    data = _tensor_bytes(tensor)
    if len(data) <= _INLINE_KEY_BYTES:
        return data
    return hashlib.sha256(data).digest()


def _same_bytes(a: ir.TensorProtocol | None, b: ir.TensorProtocol) -> bool:
    return a is not None and _tensor_bytes(a) == _tensor_bytes(b)
