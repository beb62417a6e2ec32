"""Attention detection and the ``attention-heads`` analysis: for every self-attention block,
its number of heads, head size and the initializers holding its Q/K/V/O weights.

A block is found from its Softmax: ``Softmax(QKᵀ·scale [+ mask]) [NaN guard] @ V``, where
Q, K and V are projections ``X @ W (+ b)`` of one input X (separate, or packed and split)
and the heads are split and merged by any chain of Reshape/Transpose that
:mod:`head_layout` proves equivalent to ``[b, h, s, d]``. Already fused
``com.microsoft::Attention`` nodes are reported too, so pruning can run before or after
fusion. ``fuse-attention`` rewrites the blocks this analysis finds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from greencc.ir import infer_shapes, source_module, symbolic_dims
from greencc.model import Model
from greencc.passes.lib.graph_edits import constant_array, constant_tensor
from greencc.passes.lib.head_layout import (
    MOVEMENT_OPS,
    SCALING_OPS,
    Axis,
    Factors,
    Layout,
    apply,
    replay,
    trace_back,
)
from greencc.passes.lib.matching import (
    CONTRIB_DOMAIN,
    float_attr,
    int_attr,
    ints_attr,
    label,
    only_consumer,
    other_readers,
    producer,
    scalar_constant,
    single_reader,
)
from greencc.pipeline.context import PassContext, register_analysis


@dataclass(frozen=True)
class AttentionHeads:
    """The head structure of one attention block (what head pruning needs).

    Weights are ``[in, out]`` initializers (MatMul convention; ``transposed`` when stored
    ``[out, in]``); ``*_columns`` is the ``[start, end)`` range of output columns a
    projection owns within its weight (packed Q/K/V share one weight). Column ``j`` of a
    projection belongs to head ``j // head_size``.
    """

    block: str
    num_heads: int
    head_size: int
    hidden_size: int
    q_weight: str
    k_weight: str
    v_weight: str
    o_weight: str | None
    q_columns: tuple[int, int]
    k_columns: tuple[int, int]
    v_columns: tuple[int, int]
    q_bias: str | None = None
    k_bias: str | None = None
    v_bias: str | None = None
    o_bias: str | None = None
    transposed: bool = False
    fused: bool = False
    module: str | None = None


@dataclass
class Projection:
    """``X @ W + b`` restricted to output columns ``columns`` (a packed projection's share)."""

    x: ir.Value
    weight: ir.Value
    bias: ir.Value | None
    columns: tuple[int, int]
    nodes: list[ir.Node]
    output: ir.Value  # the value with layout [b][s][columns]
    transposed: bool = False  # the weight is stored [out, in] (Gemm transB=1)


@dataclass
class AttentionSite:
    """One matched, unfused self-attention block (nodes in execution order)."""

    softmax: ir.Node
    x: ir.Value
    q: Projection
    k: Projection
    v: Projection
    num_heads: int
    head_size: int
    scale: float
    mask: ir.Value | None  # the additive mask, or the Where condition
    mask_kind: str  # "none", "add", "keep-where-true", "mask-where-true"
    fill_value: float | None
    output: ir.Value
    nodes: list[ir.Node]
    intermediates: list[ir.Value]
    o_weight: str | None
    o_bias: str | None

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_size


@dataclass
class AttentionAnalysis:
    """Result of the ``attention-heads`` analysis of one model."""

    model: ir.Model
    blocks: list[AttentionHeads] = field(default_factory=list)
    sites: dict[ir.Node, AttentionSite] = field(default_factory=dict)
    declined: dict[ir.Node, str] = field(default_factory=dict)


@register_analysis("attention-heads")
def attention_heads(model: Model, ctx: PassContext) -> AttentionAnalysis:
    """Find every attention block of ``model`` (fused or not) and its head structure."""
    return analyze_attention(model.ir)


def analyze_attention(model: ir.Model) -> AttentionAnalysis:
    """The :class:`AttentionAnalysis` of ``model`` (main graph)."""
    result = AttentionAnalysis(model)
    if any(n.op_type == "Softmax" for n in model.graph):
        # Head layouts need ranks and sizes. On dynamic axes ONNX Runtime's symbolic
        # inference names dims consistently (batch, seq) where exporters leave placeholders.
        infer_shapes(model, symbolic=bool(symbolic_dims(model)))
    for node in model.graph:
        if node.domain == CONTRIB_DOMAIN and node.op_type == "Attention":
            block = _fused_block(node)
            if block is not None:
                result.blocks.append(block)
            continue
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        found = AttentionMatcher().match(node)
        if isinstance(found, str):
            if found:
                result.declined[node] = found
            continue
        result.sites[node] = found
        result.blocks.append(_site_block(found))
    return result


def _site_block(site: AttentionSite) -> AttentionHeads:
    return AttentionHeads(
        block=site.softmax.name or "Softmax",
        num_heads=site.num_heads,
        head_size=site.head_size,
        hidden_size=site.hidden_size,
        q_weight=site.q.weight.name or "",
        k_weight=site.k.weight.name or "",
        v_weight=site.v.weight.name or "",
        o_weight=site.o_weight,
        q_columns=site.q.columns,
        k_columns=site.k.columns,
        v_columns=site.v.columns,
        q_bias=site.q.bias.name if site.q.bias is not None else None,
        k_bias=site.k.bias.name if site.k.bias is not None else None,
        v_bias=site.v.bias.name if site.v.bias is not None else None,
        o_bias=site.o_bias,
        transposed=site.q.transposed,
        module=source_module(site.softmax),
    )


def _fused_block(node: ir.Node) -> AttentionHeads | None:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    tensor = constant_tensor(weight)
    heads = int_attr(node, "num_heads", 0)
    if tensor is None or heads <= 0 or len(tensor.shape) != 2:
        return None
    sizes = ints_attr(node, "qkv_hidden_sizes") or [int(tensor.shape[1]) // 3] * 3
    q, k, v = sizes
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None else None
    o_weight, o_bias = _output_projection(node.outputs[0])
    name = weight.name or ""
    bias_name = bias.name if bias is not None else None
    return AttentionHeads(
        block=node.name or "Attention", num_heads=heads, head_size=q // heads, hidden_size=q,
        q_weight=name, k_weight=name, v_weight=name, o_weight=o_weight,
        q_columns=(0, q), k_columns=(q, q + k), v_columns=(q + k, q + k + v),
        q_bias=bias_name, k_bias=bias_name, v_bias=bias_name, o_bias=o_bias,
        fused=True, module=source_module(node),
    )


def _output_projection(value: ir.Value) -> tuple[str | None, str | None]:
    """The weight (and bias) of the MatMul that projects the attention output, if any."""
    reader = only_consumer(value)
    if reader is None or reader.op_type not in ("MatMul", "Gemm") or reader.inputs[0] is not value:
        return None, None
    weight = reader.inputs[1]
    if constant_tensor(weight) is None:
        return None, None
    if reader.op_type == "Gemm":
        bias = reader.inputs[2] if len(reader.inputs) > 2 and reader.inputs[2] is not None else None
        return weight.name, bias.name if bias is not None and constant_tensor(bias) is not None else None
    bias_add = only_consumer(reader.outputs[0])
    bias = None
    if bias_add is not None and bias_add.op_type == "Add":
        other = bias_add.inputs[1] if bias_add.inputs[0] is reader.outputs[0] else bias_add.inputs[0]
        if constant_tensor(other) is not None:
            bias = other.name
    return weight.name, bias


def find_projection(value: ir.Value) -> Projection | str:
    """The projection producing ``value`` (possibly one split of a packed projection).

    Forms: ``X @ W (+ b)`` on the rank-3 input, and the rank-2 detour of Conv1D-style
    layers, ``Reshape(Gemm(Reshape(X, [-1, in]), W, b), [B, S, out])``.
    """
    nodes: list[ir.Node] = []
    columns: tuple[int, int] | None = None
    current = value
    split = producer(current, "Split", "Slice")
    if split is not None:
        found = _split_columns(split, current)
        if isinstance(found, str):
            return found
        columns = found
        nodes.append(split)
        current = split.inputs[0]
    unflatten = producer(current, "Reshape")
    if unflatten is not None:
        detour = _flattened_projection(unflatten)
        if isinstance(detour, str):
            return detour
        x, weight, bias, transposed, detour_nodes = detour
        nodes[:0] = detour_nodes
    else:
        found_core = _matmul_projection(current, value)
        if isinstance(found_core, str):
            return found_core
        x, weight, bias, core_nodes = found_core
        transposed = False
        nodes[:0] = core_nodes
    tensor = constant_tensor(weight)
    if tensor is None or len(tensor.shape) != 2:
        return f"the projection weight '{weight.name}' is not a constant matrix"
    width = int(tensor.shape[0 if transposed else 1])
    if bias is not None:
        bias_tensor = constant_tensor(bias)
        if int(np.prod(bias_tensor.shape)) != width or any(s != 1 for s in list(bias_tensor.shape)[:-1]):
            return f"the projection bias '{bias.name}' is not one value per output column"
    if columns is None:
        columns = (0, width)
    start, end = columns
    if start < 0:
        start, end = start + width, end + width if end <= 0 else end
    end = min(end, width)
    if not 0 <= start < end:
        return f"the split of projection '{weight.name}' selects no columns"
    return Projection(x, weight, bias, (start, end), nodes, value, transposed)


def _matmul_projection(current: ir.Value, value: ir.Value):  # noqa: ANN202 - a tuple or a reason
    """``(x, W, b, nodes)`` for ``X @ W + b`` / ``X @ W`` producing ``current``."""
    nodes: list[ir.Node] = []
    bias = None
    add = producer(current, "Add")
    if add is not None:
        for i in (0, 1):
            tensor = constant_tensor(add.inputs[1 - i])
            if tensor is not None and producer(add.inputs[i], "MatMul") is not None:
                bias = add.inputs[1 - i]
                current = add.inputs[i]
                nodes.append(add)
                break
        else:
            return f"'{value.name}' comes from an Add that is not a MatMul plus a constant bias"
    matmul = producer(current, "MatMul")
    if matmul is None:
        origin = current.producer()
        what = label(origin) if origin is not None else f"input '{current.name}'"
        return f"'{value.name}' is not a projection X @ W (+ b): it comes from {what}"
    nodes.insert(0, matmul)
    return matmul.inputs[0], matmul.inputs[1], bias, nodes


def _flattened_projection(unflatten: ir.Node):  # noqa: ANN202 - a tuple or a reason
    """``(x, W, b, transposed, nodes)`` for ``Reshape(Gemm(Reshape(X, [-1, in]), W, b),
    [B, S, out])`` (or MatMul+Add in place of the Gemm) with ``X`` of shape [B, S, in]."""
    flat = unflatten.inputs[0]
    transposed = False
    gemm = producer(flat, "Gemm")
    if gemm is not None:
        if any(float_attr(gemm, name, 1.0) != 1.0 for name in ("alpha", "beta")) or int_attr(gemm, "transA", 0):
            return f"{label(gemm)} scales or transposes its operands"
        a, weight = gemm.inputs[0], gemm.inputs[1]
        bias = gemm.inputs[2] if len(gemm.inputs) > 2 else None
        if bias is not None and constant_tensor(bias) is None:
            return f"the bias of {label(gemm)} is not a constant"
        transposed = bool(int_attr(gemm, "transB", 0))
        core = [gemm]
    else:
        found = _matmul_projection(flat, unflatten.outputs[0])
        if isinstance(found, str):
            return found
        a, weight, bias, core = found
    flatten = producer(a, "Reshape")
    if flatten is None:
        return f"{label(unflatten)} does not restore a flattened [B·S, in] projection"
    x = flatten.inputs[0]
    shapes = [x.shape, a.shape, unflatten.outputs[0].shape]
    if any(shape is None for shape in shapes):
        return f"the shapes around {label(unflatten)} are unknown"
    x_shape, a_shape, out_shape = (list(shape) for shape in shapes)
    if len(x_shape) != 3 or len(a_shape) != 2 or len(out_shape) != 3:
        return f"{label(unflatten)} is not [B·S, out] -> [B, S, out] of a rank-3 input"
    if a_shape[1] != x_shape[2] or out_shape[:2] != x_shape[:2]:
        return f"{label(flatten)} and {label(unflatten)} do not flatten and restore [B, S]"
    return x, weight, bias, transposed, [flatten, *core, unflatten]


def _split_columns(node: ir.Node, value: ir.Value) -> tuple[int, int] | str:
    """The output columns one Split/Slice output takes along the last axis."""
    source = node.inputs[0]
    rank = len(source.shape) if source.shape is not None else None
    if node.op_type == "Split":
        axis = int_attr(node, "axis", 0)
        if rank is None or axis not in (-1, rank - 1):
            return f"{label(node)} does not split the last axis"
        sizes = None
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            array = constant_array(node.inputs[1], max_elements=16)
            sizes = None if array is None else [int(s) for s in np.asarray(array).reshape(-1)]
        elif "split" in node.attributes:
            sizes = ints_attr(node, "split")
        else:
            width = source.shape[-1] if source.shape is not None else None
            if isinstance(width, int) and width % len(node.outputs) == 0:
                sizes = [width // len(node.outputs)] * len(node.outputs)
        if sizes is None:
            return f"the split sizes of {label(node)} are not known"
        index = list(node.outputs).index(value)
        start = sum(sizes[:index])
        return start, start + sizes[index]
    params = [constant_array(v, max_elements=8) if v is not None else None for v in node.inputs[1:5]]
    params += [None] * (4 - len(params))
    starts, ends, axes, steps = params
    if starts is None or ends is None or starts.size != 1:
        return f"{label(node)} is not a constant slice of one axis"
    axis = int(np.asarray(axes).reshape(-1)[0]) if axes is not None else 0
    if rank is None or axis not in (-1, rank - 1):
        return f"{label(node)} does not slice the last axis"
    if steps is not None and int(np.asarray(steps).reshape(-1)[0]) != 1:
        return f"{label(node)} has a step"
    end = int(np.asarray(ends).reshape(-1)[0])
    return int(np.asarray(starts).reshape(-1)[0]), min(end, 1 << 40)


class AttentionMatcher:
    """Matches one attention block at a Softmax; ``match`` returns a site or a reason.

    The reason is ``""`` when the Softmax is clearly not attention (its output feeds no
    MatMul), so that classifier heads are not reported as near misses.
    """

    def match(self, softmax: ir.Node) -> AttentionSite | str:
        probs = softmax.outputs[0]
        rank = len(probs.shape) if probs.shape is not None else None
        axis = int_attr(softmax, "axis", -1)
        guard_nodes, probs_used = self._nan_guard(probs)
        context_mm = single_reader(probs_used)
        if context_mm is None or context_mm.op_type != "MatMul" or context_mm.inputs[0] is not probs_used:
            if any(user.op_type == "MatMul" for user, _ in probs_used.uses()):
                return "the attention probabilities are read by more than the context MatMul"
            return ""
        if axis != -1 and (rank is None or axis != rank - 1):
            return f"Softmax normalizes axis {axis}, not the last (key) axis"
        scores = self._scores(softmax.inputs[0])
        if isinstance(scores, str):
            return scores
        qk_mm, score_nodes, score_scale, mask, mask_kind, fill = scores
        paths = {}
        for role, value in (("query", qk_mm.inputs[0]), ("key", qk_mm.inputs[1]), ("value", context_mm.inputs[1])):
            root, chain = trace_back(value)
            projection = find_projection(root)
            if isinstance(projection, str):
                return f"the {role} path: {projection}"
            paths[role] = (projection, chain)
        q, k, v = (paths[r][0] for r in ("query", "key", "value"))
        if not (q.x is k.x is v.x):
            return "queries, keys and values are projected from different tensors (cross-attention is not fused)"
        x = q.x
        if x.shape is None or len(x.shape) != 3:
            return f"the attention input '{x.name}' is not rank 3 [batch, seq, hidden]"
        layouts = {}
        heads = {}
        scale = score_scale
        expected_tail = {"query": (("s",), ("d",)), "key": (("d",), ("s",)), "value": (("s",), ("d",))}
        for role in ("query", "key", "value"):
            projection, chain = paths[role]
            factors = Factors({"b": _dim(x, 0), "s": _dim(x, 1), "c": projection.columns[1] - projection.columns[0]})
            start: Layout = tuple(factors.present((a,)) for a in ("b", "s", "c"))
            traced = replay(start, factors, chain, projection.output)
            if traced is None:
                return f"the {role} path's reshapes and transposes are not a head split [b, h, s, d]"
            layout = _normalize_unsplit(traced.layout, factors)
            tail = tuple(factors.present(a) for a in expected_tail[role])
            lead = layout[: len(layout) - 2]
            lead_atoms = tuple(a for ax in lead for a in ax)
            if layout[len(layout) - 2 :] != tail or lead_atoms != factors.present(("b", "h")):
                return f"the {role} path arranges its heads as {_show(layout)}, not {_show(lead + tail)}"
            layouts[role] = lead
            heads[role] = (factors.sizes["h"], factors.sizes["d"], factors)
            scale *= traced.scale
        if len({heads[r][:2] for r in heads}) != 1:
            shown = ", ".join(f"{r}: {h[0]}x{h[1]}" for r, h in heads.items())
            return f"queries, keys and values split into different heads ({shown})"
        if not (layouts["query"] == layouts["key"] == layouts["value"]):
            return "queries, keys and values keep batch and heads on different axes"
        num_heads, head_size, factors = heads["value"]
        if not isinstance(num_heads, int) or not isinstance(head_size, int):
            return "the number of heads or the head size is not static"
        context = self._merge_heads(context_mm.outputs[0], layouts["value"], factors)
        if isinstance(context, str):
            return context
        output, merge_nodes = context
        nodes = [
            *q.nodes, *k.nodes, *v.nodes, *paths["query"][1], *paths["key"][1], *paths["value"][1],
            qk_mm, *score_nodes, softmax, *guard_nodes, context_mm, *merge_nodes,
        ]
        nodes = list(dict.fromkeys(nodes))
        block = set(nodes)
        intermediates = [out for node in nodes for out in node.outputs if out is not output]
        shape_nodes: list[ir.Node] = []
        for inner in intermediates:
            for user, _ in inner.uses():
                if user in block or user.op_type != "Shape":
                    continue
                cone = _shape_cone(user, block)
                if cone is None:
                    return f"the shape of '{inner.name}' is used outside the block"
                shape_nodes.extend(cone)
        block.update(shape_nodes)
        for inner in intermediates:
            if not inner.uses() and not inner.is_graph_output():
                continue  # an unused optional output (a Split's), nothing to keep
            why = other_readers(inner, block)
            if why:
                return f"an intermediate of the block is needed elsewhere: {why}"
        nodes.extend(n for n in dict.fromkeys(shape_nodes) if n not in nodes)
        o_weight, o_bias = _output_projection(output)
        return AttentionSite(
            softmax, x, q, k, v, num_heads, head_size, scale, mask, mask_kind, fill, output,
            nodes, [i for i in intermediates if i.uses() or i.is_graph_output()], o_weight, o_bias,
        )

    @staticmethod
    def _nan_guard(probs: ir.Value) -> tuple[list[ir.Node], ir.Value]:
        """Where(IsNaN(p), 0, p) after the Softmax (SDPA exports); ``([], p)`` if absent."""
        users = [u for u, _ in probs.uses()]
        isnan = next((u for u in users if u.op_type == "IsNaN"), None)
        where = next((u for u in users if u.op_type == "Where"), None)
        if isnan is None or where is None or len(users) != 2:
            return [], probs
        if where.inputs[0] is not isnan.outputs[0] or where.inputs[2] is not probs:
            return [], probs
        if scalar_constant(where.inputs[1]) != 0.0 or only_consumer(isnan.outputs[0]) is not where:
            return [], probs
        return [isnan, where], where.outputs[0]

    @staticmethod
    def _scores(value: ir.Value):  # noqa: ANN205 - a tuple or a reason
        """Walk from the Softmax input back to the QKᵀ MatMul through scaling and one mask."""
        nodes: list[ir.Node] = []
        scale = 1.0
        mask: ir.Value | None = None
        mask_kind = "none"
        fill: float | None = None
        current = value
        for _ in range(8):
            node = producer(current, "MatMul", "Add", "Where", *SCALING_OPS)
            if node is None:
                origin = current.producer()
                what = label(origin) if origin is not None else f"input '{current.name}'"
                return f"the scores come from {what}, not from a Q·Kᵀ MatMul"
            if node.op_type == "MatMul":
                nodes.reverse()
                return node, nodes, scale, mask, mask_kind, fill
            nodes.append(node)
            if node.op_type in SCALING_OPS:
                factor = scalar_constant(node.inputs[1])
                if factor is not None and scalar_constant(node.inputs[0]) is None:
                    scale *= factor if node.op_type == "Mul" else 1.0 / factor
                    current = node.inputs[0]
                    continue
                factor = scalar_constant(node.inputs[0])
                if node.op_type == "Mul" and factor is not None:
                    scale *= factor
                    current = node.inputs[1]
                    continue
                return f"{label(node)} on the scores is not a scaling by one constant"
            if mask is not None:
                return "more than one mask is applied to the scores"
            if scale != 1.0:
                # Walking backwards: a scaling seen before the mask comes after it.
                return "the scores are scaled after the mask is applied"
            if node.op_type == "Add":
                index = next((i for i in (0, 1) if _leads_to_matmul(node.inputs[i])), None)
                if index is None:
                    return f"neither operand of {label(node)} comes from the Q·Kᵀ MatMul"
                mask, mask_kind = node.inputs[1 - index], "add"
                current = node.inputs[index]
                continue
            cond, when_true, when_false = node.inputs
            true_fill, false_fill = scalar_constant(when_true), scalar_constant(when_false)
            if false_fill is not None and true_fill is None:
                mask, mask_kind, fill, current = cond, "keep-where-true", false_fill, when_true
            elif true_fill is not None and false_fill is None:
                mask, mask_kind, fill, current = cond, "mask-where-true", true_fill, when_false
            else:
                return f"{label(node)} on the scores is not a fill with one constant"
        return "the path from the scores to the Softmax is too long"

    @staticmethod
    def _merge_heads(value: ir.Value, lead: Layout, factors: Factors) -> tuple[ir.Value, list[ir.Node]] | str:
        """Follow the context forward until its heads are merged back to [b, s, h·d]."""
        layout: Layout = (*lead, factors.present(("s",)), factors.present(("d",)))
        # [b, s, h·d], or flattened to [b·s, h·d] for a rank-2 output projection (GPT-2's Conv1D).
        targets = (
            (factors.present(("b",)), ("s",), factors.present(("h", "d"))),
            (factors.present(("b", "s")), factors.present(("h", "d"))),
        )
        known = {value: layout}
        nodes: list[ir.Node] = []
        current = value
        for _ in range(8):
            if layout in targets:
                return current, nodes
            node = data_consumer(current)
            if node is None or node.op_type not in MOVEMENT_OPS or node.domain not in ("", "ai.onnx") or node.inputs[0] is not current:
                break
            result = apply(node, layout, factors, known)
            if result is None:
                return f"{label(node)} after the context is not a head merge"
            layout = result
            nodes.append(node)
            current = node.outputs[0]
            known[current] = layout
        if layout in targets:
            return current, nodes
        return f"the context is left as {_show(layout)}, never merged to [b, s, h·d]"


def data_consumer(value: ir.Value) -> ir.Node | None:
    """The single node reading ``value``'s data (Shape readers aside), when it is not a
    graph output."""
    if value.is_graph_output():
        return None
    readers = [user for user, _ in value.uses() if user.op_type != "Shape"]
    return readers[0] if len(readers) == 1 else None


# A shape computation feeding a block's Reshape targets is at most this many nodes.
MAX_SHAPE_CONE = 64


def _shape_cone(shape: ir.Node, block: set[ir.Node]) -> list[ir.Node] | None:
    """``shape`` and the nodes computing from it, when all of them feed only ``block``
    (shape arithmetic for the block's own Reshapes, dead once the block is fused)."""
    cone: list[ir.Node] = []
    seen: set[ir.Node] = set()
    stack = [shape]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        cone.append(node)
        if len(cone) > MAX_SHAPE_CONE:
            return None
        for out in node.outputs:
            if out.is_graph_output():
                return None
            stack.extend(user for user, _ in out.uses() if user not in block)
    return cone


def _leads_to_matmul(value: ir.Value) -> bool:
    """Whether ``value`` comes from a MatMul through at most a few scalings."""
    current = value
    for _ in range(4):
        node = producer(current, "MatMul", *SCALING_OPS)
        if node is None:
            return False
        if node.op_type == "MatMul":
            return True
        current = node.inputs[0] if scalar_constant(node.inputs[1]) is not None else node.inputs[1]
    return False


def _normalize_unsplit(layout: Layout, factors: Factors) -> Layout:
    """A chain that never split ``c`` is single-headed: ``c`` is the head size."""
    if "c" not in factors.sizes:
        return layout
    factors.sizes["d"] = factors.sizes.pop("c")
    factors.sizes["h"] = 1
    return tuple(tuple("d" if a == "c" else a for a in axis) for axis in layout)


def _dim(value: ir.Value, axis: int) -> int | str | None:
    dim = value.shape[axis] if value.shape is not None else None
    if dim is None or isinstance(dim, int):
        return dim
    return dim.value


def _show(layout: Layout | tuple[Axis, ...]) -> str:
    return "[" + ", ".join("·".join(axis) if axis else "1" for axis in layout) + "]"
