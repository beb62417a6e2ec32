"""A decoder's past shapes from its mask: the decoder contract fixes every past tensor's
shape as [batch, kv_heads, past, head_dim] with past = attention_mask's length −
input_ids' length, so the shapes the export reads off the past inputs (for its causal mask
and position arithmetic) are computed from the mask instead.

After ``fuse-decoder-attention`` only the attention ops then read the past, which is what
lets a generation loop bind one KV buffer of its full capacity as both the past and the
present of GroupQueryAttention (the kernel appends in place; see targets/ort/cpu.py).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from greencc.ir import inherit_provenance
from greencc.model import DecoderSpec, Model
from greencc.passes.lib.graph_edits import (
    NameScope,
    is_onnx_op,
    new_initializer,
    redirect,
    remove_node,
)
from greencc.pipeline.base import Pass, PassResult, register_pass
from greencc.pipeline.context import PassContext

_PAST_RANK = 4


@register_pass("past-shape-from-mask")
class PastShapeFromMask(Pass):
    """Shape(past_key_values.*) -> [batch, kv_heads, len(attention_mask) − len(input_ids), head_dim].

    Exact under the decoder contract (the mask covers the past and the new tokens).
    ``Shape``'s start/end select the same dims. Rewrites only where a GroupQueryAttention
    reads the past — the one op that can append in place; other targets' importers (TVM's)
    keep the shapes they can trace. Does nothing to a model that is not a decoder; declines
    without rank-2 ``attention_mask`` and ``input_ids`` graph inputs.
    """

    lossy = False

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        """Rewrite every Shape node that reads a past input; count them."""
        spec = DecoderSpec.of(model)
        if spec is None:
            return PassResult(model, modified=False)
        graph = model.ir.graph
        inputs = {value.name: value for value in graph.inputs}
        readers = [user for name in spec.past_names() if name in inputs
                   for user, _ in inputs[name].uses() if user.op_type == "Shape" and is_onnx_op(user)]
        appends = any(user.op_type == "GroupQueryAttention" for name in spec.past_names() if name in inputs
                      for user, _ in inputs[name].uses())
        if not readers or not appends:
            return PassResult(model, modified=False)
        mask, ids = inputs.get("attention_mask"), inputs.get("input_ids")
        if any(v is None or v.shape is None or len(v.shape) != 2 for v in (mask, ids)):
            for node in readers:
                self.decline(ctx, node, "no rank-2 'attention_mask' and 'input_ids' graph inputs to compute the past length from")
            return PassResult(model, modified=False)
        assert mask is not None and ids is not None
        names = NameScope(model.ir)
        dims = _contract_dims(graph, names, mask, ids, spec, anchor=readers[0])
        for node in readers:
            start, end = _bounds(node)
            value = dims[start] if end - start == 1 else _concat(graph, names, dims[start:end], before=node)
            redirect(graph, node.outputs[0], value, before=node, replaced=[node])
            remove_node(node)
        return PassResult(model, modified=True, stats={"rewritten": len(readers)})


def _bounds(node: ir.Node) -> tuple[int, int]:
    """Shape's [start, end) over a rank-4 input, negatives and overruns clamped as ONNX does."""
    start_attr, end_attr = node.attributes.get("start"), node.attributes.get("end")
    start = start_attr.as_int() if start_attr is not None else 0
    end = end_attr.as_int() if end_attr is not None else _PAST_RANK
    start, end = (min(max(b + _PAST_RANK if b < 0 else b, 0), _PAST_RANK) for b in (start, end))
    return start, max(start, end)


def _contract_dims(graph: ir.Graph, names: NameScope, mask: ir.Value, ids: ir.Value, spec: DecoderSpec, *,
                   anchor: ir.Node) -> list[ir.Value]:
    """The four past dims as 1-element int64 values, computed once at the top of ``graph``."""
    made: list[ir.Node] = []

    def node(op: str, inputs: list[ir.Value], **attributes: int) -> ir.Value:
        made.append(ir.node(op, inputs, attributes=attributes, outputs=[ir.Value(name=names.fresh(f"past_{op.lower()}"))]))
        inherit_provenance(made[-1], [anchor])
        return made[-1].outputs[0]

    def constant(base: str, number: int) -> ir.Value:
        return new_initializer(graph, names.fresh(base), np.array([number], dtype=np.int64))

    batch = node("Shape", [mask], start=0, end=1)
    past = node("Sub", [node("Shape", [mask], start=1, end=2), node("Shape", [ids], start=1, end=2)])
    graph.insert_before(graph[0], made)
    return [batch, constant("past_kv_heads", spec.num_kv_heads), past, constant("past_head_dim", spec.head_dim)]


def _concat(graph: ir.Graph, names: NameScope, parts: list[ir.Value], *, before: ir.Node) -> ir.Value:
    """``parts`` joined into one int64 vector (an empty one for an empty selection)."""
    if not parts:
        return new_initializer(graph, names.fresh("past_no_dims"), np.zeros(0, dtype=np.int64))
    joined = ir.node("Concat", parts, attributes={"axis": 0}, outputs=[ir.Value(name=names.fresh("past_shape"))])
    inherit_provenance(joined, [before])
    graph.insert_before(before, joined)
    return joined.outputs[0]
