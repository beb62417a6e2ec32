"""Structural removal of attention heads, in unfused graphs and fused ``Attention`` nodes.

Per block, with ``keep`` the heads that stay (``d`` = head size):

    Q/K/V weights [in, H·d]            -> [in, K·d]   (columns of dropped heads removed;
                                                       rows when stored [out, in])
    Q/K/V biases [H·d]                 -> [K·d]
    O weight [H·d, hidden]             -> [K·d, hidden]
    Reshape targets naming H or H·d    -> K or K·d    (found by the head layout of each
                                                       split/merge chain, constant or
                                                       Concat-of-constant targets)
    Attention{num_heads=H}(x, W[in, 3·H·d], b)  -> Attention{num_heads=K}(x, W', b')
    block with no head left            -> its output projection's result becomes the O bias
                                          (zeros without one): the layer is residual + O-bias

Edited weights and shape constants are new initializers, so constants the exporter shares
between blocks (identical zero biases, one shape tensor for Q/K/V) are never changed in
place. The nodes left without a use go in the dead-code sweep that follows.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from greencc.passes.lib.attention_heads import AttentionMatcher, AttentionSite
from greencc.passes.lib.graph_edits import NameScope, constant_array, new_initializer, redirect
from greencc.passes.lib.head_layout import Factors, Layout, replay, shape_expression, trace_back
from greencc.passes.lib.matching import label, only_consumer, single_reader

from .head_blocks import HeadBlock, head_columns


def prune_block(graph: ir.Graph, block: HeadBlock, keep: np.ndarray, names: NameScope) -> str:
    """Remove from ``block`` every head ``h`` with ``keep[h]`` false; "" or why it cannot.

    Nothing is changed when a reason is returned.
    """
    kept = [h for h in range(block.num_heads) if keep[h]]
    if len(kept) == block.num_heads:
        return ""
    if not kept:
        return _remove_block(graph, block, names)
    if block.attention is not None:
        return _prune_fused(graph, block, kept, names)
    assert block.site is not None
    return _prune_unfused(graph, block, block.site, kept, names)


# --------------------------------------------------------------------------- weights

def _sliced(value: ir.Value, columns: np.ndarray, axis: int) -> np.ndarray | None:
    array = constant_array(value)
    if array is None:
        return None
    axis = axis if axis >= 0 else array.ndim + axis
    return np.take(array, columns, axis=axis)


def _swap_input(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, names: NameScope,
                base: str) -> None:
    """Make input ``index`` of ``node`` a new initializer holding ``array``."""
    value = new_initializer(graph, names.fresh(base), np.ascontiguousarray(array))
    node.replace_input_with(index, value)


def _output_rows(block: HeadBlock, kept: list[int]) -> np.ndarray:
    return np.concatenate([head_columns(h, block.head_size) for h in kept])


def _prune_output_projection(graph: ir.Graph, block: HeadBlock, kept: list[int], names: NameScope) -> str:
    if block.flatten is not None:
        target = np.asarray(constant_array(block.flatten.inputs[1])).copy()
        if target[-1] != -1:
            target[-1] = len(kept) * block.head_size
            _swap_input(graph, block.flatten, 1, target, names, f"{block.flatten.inputs[1].name or 'shape'}.pruned")
    rows = _output_rows(block, kept)
    weight = _sliced(block.o_node.inputs[1], rows, 1 if block.o_transposed else 0)
    if weight is None:
        return f"the output projection weight of {label(block.o_node)} is not a constant"
    _swap_input(graph, block.o_node, 1, weight, names, f"{block.o_node.inputs[1].name}.pruned")
    return ""


# --------------------------------------------------------------------------- fused

def _prune_fused(graph: ir.Graph, block: HeadBlock, kept: list[int], names: NameScope) -> str:
    node = block.attention
    assert node is not None
    info = block.heads
    columns = np.concatenate([
        np.concatenate([head_columns(h, block.head_size, start) for h in kept])
        for start in (info.q_columns[0], info.k_columns[0], info.v_columns[0])
    ])
    weight = _sliced(node.inputs[1], columns, -1)
    if weight is None:
        return f"the packed weight of {label(node)} is not a constant"
    bias = _sliced(node.inputs[2], columns, -1) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if len(node.inputs) > 2 and node.inputs[2] is not None and bias is None:
        return f"the packed bias of {label(node)} is not a constant"
    why = _check_o_weight(block)
    if why:
        return why
    _swap_input(graph, node, 1, weight, names, f"{node.inputs[1].name}.pruned")
    if bias is not None:
        _swap_input(graph, node, 2, bias, names, f"{node.inputs[2].name}.pruned")
    node.attributes["num_heads"] = ir.AttrInt64("num_heads", len(kept))
    if "qkv_hidden_sizes" in node.attributes:
        width = len(kept) * block.head_size
        node.attributes["qkv_hidden_sizes"] = ir.AttrInt64s("qkv_hidden_sizes", [width] * 3)
    return _prune_output_projection(graph, block, kept, names)


def _check_o_weight(block: HeadBlock) -> str:
    if constant_array(block.o_node.inputs[1]) is None:
        return f"the output projection weight of {label(block.o_node)} is not a constant"
    return ""


# --------------------------------------------------------------------------- unfused

def _prune_unfused(graph: ir.Graph, block: HeadBlock, site: AttentionSite, kept: list[int],
                   names: NameScope) -> str:
    projections = (site.q, site.k, site.v)
    shared = len({id(p.weight) for p in projections})
    if shared == 2:
        return "two of Q/K/V share a packed weight and one does not"
    shape_edits = _shape_edits(site, block.num_heads, len(kept), block.head_size)
    if isinstance(shape_edits, str):
        return shape_edits
    why = _check_o_weight(block)
    if why:
        return why
    if shared == 1:
        packed = _packed_plan(graph, site, block, kept, names)
        if isinstance(packed, str):
            return packed
        packed()
        for node, edits, known in shape_edits:
            why = _apply_shape_edit(graph, node, edits, known, names)
            assert not why, why
        return _prune_output_projection(graph, block, kept, names)
    plans = []
    for projection in projections:
        start = projection.columns[0]
        columns = np.concatenate([head_columns(h, block.head_size, start) for h in kept])
        reader = next((n for n in projection.nodes if projection.weight in n.inputs), None)
        if reader is None:
            return f"the projection weight '{projection.weight.name}' has no reader in the block"
        weight = _sliced(projection.weight, columns, 0 if projection.transposed else 1)
        if weight is None:
            return f"the projection weight '{projection.weight.name}' is not a constant"
        bias_plan = None
        if projection.bias is not None:
            bias_reader = next(n for n in projection.nodes if projection.bias in n.inputs)
            bias = _sliced(projection.bias, columns, -1)
            if bias is None:
                return f"the projection bias '{projection.bias.name}' is not a constant"
            bias_plan = (bias_reader, list(bias_reader.inputs).index(projection.bias), bias)
        unflatten = _unflatten_edit(projection, len(columns))
        if isinstance(unflatten, str):
            return unflatten
        plans.append((reader, list(reader.inputs).index(projection.weight), weight, bias_plan, unflatten))
    for reader, index, weight, bias_plan, unflatten in plans:
        _swap_input(graph, reader, index, weight, names, f"{reader.inputs[index].name}.pruned")
        if bias_plan is not None:
            bias_reader, bias_index, bias = bias_plan
            _swap_input(graph, bias_reader, bias_index, bias, names, f"{bias_reader.inputs[bias_index].name}.pruned")
        if unflatten is not None:
            node, target = unflatten
            _swap_input(graph, node, 1, target, names, f"{node.inputs[1].name}.pruned")
    for node, edits, known in shape_edits:
        why = _apply_shape_edit(graph, node, edits, known, names)
        assert not why, why  # _shape_edits checked every edit can be applied
    return _prune_output_projection(graph, block, kept, names)


def _packed_plan(graph: ir.Graph, site: AttentionSite, block: HeadBlock, kept: list[int], names: NameScope):  # noqa: ANN202
    """The edits of one packed Q/K/V projection ``X @ W[in, 3·H·d] (+ b) -> Split``: kept
    columns of all three ranges, the Split sizes, the restoring Reshape of a rank-2 detour.
    Returns a function applying them, or why they cannot be made."""
    q = site.q
    ranges = sorted(p.columns for p in (site.q, site.k, site.v))
    columns = np.concatenate([np.concatenate([head_columns(h, block.head_size, start) for h in kept])
                              for start, _ in ranges])
    reader = next((n for n in q.nodes if q.weight in n.inputs), None)
    split = next((n for n in q.nodes if n.op_type in ("Split", "Slice")), None)
    if reader is None or split is None or split.op_type != "Split":
        return "the packed Q/K/V projection is split by Slice, not Split"
    width = len(kept) * block.head_size
    weight = _sliced(q.weight, columns, 0 if q.transposed else 1)
    bias = _sliced(q.bias, columns, -1) if q.bias is not None else None
    if weight is None or (q.bias is not None and bias is None):
        return f"the packed weight or bias of '{q.weight.name}' is not a constant"
    sizes_input = split.inputs[1] if len(split.inputs) > 1 and split.inputs[1] is not None else None
    if sizes_input is not None and constant_array(sizes_input) is None:
        return f"the sizes of {label(split)} are computed"
    full = ranges[-1][1] - ranges[0][0]
    unflatten = _unflatten_edit(q, len(columns), old=full)
    if isinstance(unflatten, str):
        return unflatten

    def apply() -> None:
        index = list(reader.inputs).index(q.weight)
        _swap_input(graph, reader, index, weight, names, f"{q.weight.name}.pruned")
        if bias is not None and q.bias is not None:
            bias_reader = next(n for n in q.nodes if q.bias in n.inputs)
            bias_index = list(bias_reader.inputs).index(q.bias)
            _swap_input(graph, bias_reader, bias_index, bias, names, f"{q.bias.name}.pruned")
        if sizes_input is not None:
            _swap_input(graph, split, 1, np.full(3, width, dtype=np.int64), names, f"{sizes_input.name or 'split'}.pruned")
        elif "split" in split.attributes:
            split.attributes["split"] = ir.AttrInt64s("split", [width] * 3)
        if unflatten is not None:
            node, target = unflatten
            _swap_input(graph, node, 1, target, names, f"{node.inputs[1].name}.pruned")

    return apply


def _unflatten_edit(projection, width: int, old: int | None = None):  # noqa: ANN202 - (node, target) | None | reason
    """The rank-2 projection detour restores ``[B, S, out]``: its constant ``out`` shrinks."""
    reshapes = [n for n in projection.nodes if n.op_type == "Reshape"]
    if len(reshapes) < 2:
        return None
    node = reshapes[-1]
    target = constant_array(node.inputs[1])
    old = projection.columns[1] - projection.columns[0] if old is None else old
    if target is None:
        return f"{label(node)} restores the projection with a computed shape"
    target = np.asarray(target).copy()
    if target.size and target[-1] == old:
        target[-1] = width
        return node, target
    return None


ShapeEdit = tuple[ir.Node, dict[int, int], Mapping[ir.Value, Layout]]


def _shape_edits(site: AttentionSite, heads: int, kept: int, head_size: int) -> list[ShapeEdit] | str:
    """Every Reshape target entry of the block's head chains that names the head count.

    A chain's layout says which axes hold the heads factor ``h`` (or the unsplit ``c`` =
    h·d); a constant target entry for such an axis must become the pruned size.
    """
    if heads == 1:
        return []
    chains = _chain_layouts(site)
    if isinstance(chains, str):
        return chains
    edits: list[ShapeEdit] = []
    for node, layout, factors, known in chains:
        if node.op_type != "Reshape":
            continue
        entries = shape_expression(node.inputs[1], known)
        if entries is None or len(entries) != len(layout):
            if any("h" in axis or "c" in axis for axis in layout):
                return f"the target shape of {label(node)} is not understood"
            continue
        changes: dict[int, int] = {}
        for i, axis in enumerate(layout):
            if "h" not in axis and "c" not in axis:
                continue
            entry = entries[i]
            if not isinstance(entry, int) or entry == -1:
                continue  # computed from shapes (follows the pruned tensors) or inferred
            if entry == 0:
                return f"{label(node)} copies the head axis from its input (a 0 in its target)"
            size = 1
            for factor in axis:
                if factor == "h":
                    new = kept
                elif factor == "c":
                    new = kept * head_size
                else:
                    new = factors.sizes.get(factor)
                if not isinstance(new, int):
                    return f"the head axis of {label(node)} has a size that is not static"
                size *= new
            if size != entry:
                changes[i] = size
        if changes:
            why = _check_shape_edit(node, changes, known)
            if why:
                return why
            edits.append((node, changes, known))
    return edits


def _chain_layouts(site: AttentionSite):  # noqa: ANN202 - list of (node, layout, factors, known) | reason
    """The layout after each node of the block's Q, K, V split chains and context merge."""
    _, probs = AttentionMatcher._nan_guard(site.softmax.outputs[0])
    context_mm = single_reader(probs)
    scores = AttentionMatcher._scores(site.softmax.inputs[0])
    if context_mm is None or isinstance(scores, str):
        return "the block's score or context MatMul was not found again"
    qk_mm = scores[0]
    x = site.x
    rows = []
    known: dict[ir.Value, Layout] = {}
    value_factors: Factors | None = None
    value_layout: Layout | None = None
    for value, projection in ((qk_mm.inputs[0], site.q), (qk_mm.inputs[1], site.k), (context_mm.inputs[1], site.v)):
        _, chain = trace_back(value)
        factors = Factors({"b": _dim(x, 0), "s": _dim(x, 1), "c": projection.columns[1] - projection.columns[0]})
        start: Layout = tuple(factors.present((a,)) for a in ("b", "s", "c"))
        traced = replay(start, factors, chain, projection.output)
        if traced is None:
            return "a head chain of the block could not be traced again"
        known.update(traced.values)
        rows.extend((node, traced.values[node.outputs[0]], factors, known) for node in chain)
        value_factors, value_layout = factors, traced.layout
    assert value_factors is not None and value_layout is not None
    lead = value_layout[: len(value_layout) - 2]
    merged = AttentionMatcher._merge_heads(context_mm.outputs[0], lead, value_factors)
    if isinstance(merged, str):
        return merged
    _, merge_nodes = merged
    start = (*lead, value_factors.present(("s",)), value_factors.present(("d",)))
    traced = replay(start, value_factors, merge_nodes, context_mm.outputs[0])
    if traced is None:
        return "the context merge of the block could not be traced again"
    known.update(traced.values)
    rows.extend((node, traced.values[node.outputs[0]], value_factors, known) for node in merge_nodes)
    return rows


def _dim(value: ir.Value, axis: int) -> int | str | None:
    dim = value.shape[axis] if value.shape is not None else None
    if dim is None or isinstance(dim, int):
        return dim
    return dim.value


def _shape_parts(value: ir.Value, known: Mapping[ir.Value, Layout]) -> list[tuple[ir.Value, int]] | None:
    """``(part, length)`` of a Concat'ed shape target, or the constant itself as one part."""
    if constant_array(value, max_elements=64) is not None:
        return [(value, int(np.asarray(constant_array(value)).size))]
    node = value.producer()
    if node is None or node.op_type != "Concat":
        return None
    parts = []
    for part in node.inputs:
        entries = shape_expression(part, known)
        if entries is None:
            return None
        parts.append((part, len(entries)))
    return parts


def _check_shape_edit(node: ir.Node, changes: dict[int, int], known: Mapping[ir.Value, Layout]) -> str:
    parts = _shape_parts(node.inputs[1], known)
    if parts is None:
        return f"the target shape of {label(node)} is not a constant or a Concat of parts"
    offset = 0
    for part, length in parts:
        if any(offset <= i < offset + length for i in changes) and constant_array(part, max_elements=64) is None:
            return f"the head count in the target shape of {label(node)} is computed, not a constant"
        offset += length
    return ""


def _apply_shape_edit(graph: ir.Graph, node: ir.Node, changes: dict[int, int],
                      known: Mapping[ir.Value, Layout], names: NameScope) -> str:
    target = node.inputs[1]
    parts = _shape_parts(target, known)
    if parts is None:
        return "shape target changed"
    if len(parts) == 1 and parts[0][0] is target:
        array = np.asarray(constant_array(target)).copy()
        for i, size in changes.items():
            array[i] = size
        _swap_input(graph, node, 1, array, names, f"{target.name or 'shape'}.pruned")
        return ""
    concat = target.producer()
    assert concat is not None
    inputs = []
    offset = 0
    for part, length in parts:
        local = {i - offset: s for i, s in changes.items() if offset <= i < offset + length}
        if local:
            array = np.asarray(constant_array(part)).copy().reshape(-1)
            for i, size in local.items():
                array[i] = size
            array = array.reshape(np.asarray(constant_array(part)).shape)
            inputs.append(new_initializer(graph, names.fresh(f"{part.name or 'shape'}.pruned"), array))
        else:
            inputs.append(part)
        offset += length
    clone = ir.node("Concat", inputs, attributes={"axis": 0}, name=names.fresh(f"{concat.name or 'Concat'}.pruned"))
    clone.outputs[0].name = names.fresh(f"{target.name or 'shape'}.pruned")
    clone.outputs[0].type = target.type
    clone.outputs[0].shape = target.shape
    graph.insert_before(node, clone)
    node.replace_input_with(1, clone.outputs[0])
    return ""


# --------------------------------------------------------------------------- whole block

def _remove_block(graph: ir.Graph, block: HeadBlock, names: NameScope) -> str:
    """Every head gone: the projection's result (O bias included) becomes its bias alone."""
    result, bias = _projection_result(block)
    width_axis = 0 if block.o_transposed else 1
    o_weight = constant_array(block.o_node.inputs[1])
    if o_weight is None:
        return f"the output projection weight of {label(block.o_node)} is not a constant"
    width = int(o_weight.shape[width_axis])
    dtype = o_weight.dtype
    values = np.zeros(width, dtype=dtype) if bias is None else np.asarray(bias, dtype=dtype).reshape(-1)
    if values.size != width:
        values = np.broadcast_to(values, (width,)).copy()
    x = _block_input(block)
    shape_source = x if (x is not None and x.shape is not None and result.shape is not None
                         and len(x.shape) == len(result.shape)) else None
    constant = new_initializer(graph, names.fresh(f"{block.name}.residual_bias"), values)
    if _broadcast_safe(result) and not result.is_graph_output():
        result.replace_all_uses_with(constant)
        return ""
    if shape_source is None:
        return "the block's output is read where a broadcast bias cannot replace it"
    shape = ir.node("Shape", [shape_source], name=names.fresh(f"{block.name}.shape"))
    shape.outputs[0].name = names.fresh(f"{block.name}.shape")
    expand = ir.node("Expand", [constant, shape.outputs[0]], name=names.fresh(f"{block.name}.bias"))
    expand.outputs[0].name = names.fresh(f"{block.name}.bias")
    expand.outputs[0].type = result.type
    expand.outputs[0].shape = result.shape
    producer = result.producer()
    assert producer is not None
    graph.insert_after(producer, [shape, expand])
    redirect(graph, result, expand.outputs[0], before=expand)
    return ""


def _projection_result(block: HeadBlock) -> tuple[ir.Value, np.ndarray | None]:
    """The value holding ``context @ W_o + b_o`` and the bias ``b_o`` (``None`` if absent)."""
    node = block.o_node
    out = node.outputs[0]
    if node.op_type == "Gemm":
        bias = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        unflatten = only_consumer(out)
        if unflatten is not None and unflatten.op_type == "Reshape" and _rank(unflatten.outputs[0]) == _rank(_block_input(block)):
            return unflatten.outputs[0], bias  # a rank-2 projection restored to [b, s, out]
        return out, bias
    add = only_consumer(out)
    if add is not None and add.op_type == "Add":
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        bias = constant_array(other)
        if bias is not None and bias.ndim >= 1 and all(s == 1 for s in bias.shape[:-1]):
            return add.outputs[0], bias
    return out, None


def _block_input(block: HeadBlock) -> ir.Value | None:
    """The tensor the block attends over (its residual stream)."""
    if block.attention is not None:
        return block.attention.inputs[0]
    return block.site.x if block.site is not None else None


def _rank(value: ir.Value | None) -> int | None:
    return len(value.shape) if value is not None and value.shape is not None else None


def _broadcast_safe(result: ir.Value) -> bool:
    """Whether every reader adds ``result`` to a tensor of ``result``'s own shape."""
    if result.shape is None:
        return False
    for user, index in result.uses():
        if user.op_type not in ("Add", "Sub") or user.domain not in ("", "ai.onnx"):
            return False
        other = user.inputs[1 - index]
        if other is None or other.shape is None or list(other.shape) != list(result.shape):
            return False
    return True
