"""The attention blocks head pruning can act on: the ``attention-heads`` analysis plus the
nodes a pruning or masking edit touches (the fused ``Attention`` node or the unfused site,
the merged context ``[.., h·d]`` and the output projection that reads it).

A block is usable when its output projection is a constant ``[h·d, hidden]`` MatMul (or
Gemm) weight read only there: a head is then exactly columns ``[h·d, (h+1)·d)`` of the
context and rows of that weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from greencc.model import Model
from greencc.passes.lib.attention_heads import (
    AttentionHeads,
    AttentionSite,
    analyze_attention,
)
from greencc.passes.lib.graph_edits import constant_array, constant_tensor
from greencc.passes.lib.matching import CONTRIB_DOMAIN, int_attr, label


@dataclass
class HeadBlock:
    """One prunable attention block of a model.

    ``context`` is the merged attention output ``[.., num_heads·head_size]`` that
    ``o_node`` (MatMul, or Gemm with ``o_transposed`` when it stores ``[out, in]``)
    projects (after ``flatten`` to ``[b·s, h·d]`` when present); ``attention`` is the fused
    node or ``None``; ``site`` the unfused match.
    """

    index: int
    heads: AttentionHeads
    context: ir.Value
    o_node: ir.Node
    o_transposed: bool
    attention: ir.Node | None = None
    site: AttentionSite | None = None
    flatten: ir.Node | None = None  # Reshape [b, s, h·d] -> [b·s, h·d] before a rank-2 projection

    @property
    def num_heads(self) -> int:
        """Heads in the block now."""
        return self.heads.num_heads

    @property
    def head_size(self) -> int:
        """Width of one head (columns of Q/K/V per head)."""
        return self.heads.head_size

    @property
    def name(self) -> str:
        """The block's name (its Softmax or Attention node), for reports."""
        return self.heads.block


@dataclass
class HeadBlocks:
    """The prunable blocks of one model and, per declined block, why it is not prunable."""

    blocks: list[HeadBlock]
    declined: dict[str, str]

    @property
    def total_heads(self) -> int:
        """Heads over all prunable blocks."""
        return sum(b.num_heads for b in self.blocks)


def find_head_blocks(model: Model | ir.Model) -> HeadBlocks:
    """The prunable attention blocks of ``model``, in graph order (inferring shapes)."""
    ir_model = model.ir if isinstance(model, Model) else model
    analysis = analyze_attention(ir_model)
    by_softmax = {site.softmax.name or "Softmax": site for site in analysis.sites.values()}
    fused = {
        node.name or "Attention": node
        for node in ir_model.graph
        if node.domain == CONTRIB_DOMAIN and node.op_type == "Attention"
    }
    blocks: list[HeadBlock] = []
    declined: dict[str, str] = {label(n): why for n, why in analysis.declined.items()}
    for heads in analysis.blocks:
        site = None if heads.fused else by_softmax.get(heads.block)
        attention = fused.get(heads.block) if heads.fused else None
        context = attention.outputs[0] if attention is not None else (site.output if site else None)
        if context is None:
            declined[heads.block] = "the block's nodes were not found again"
            continue
        found = _output_projection(context, heads)
        if isinstance(found, str):
            declined[heads.block] = found
            continue
        o_node, transposed, flatten = found
        if attention is not None:
            why = _fused_unsupported(attention, heads)
            if why:
                declined[heads.block] = why
                continue
        if flatten is not None:
            context = flatten.outputs[0]
        blocks.append(HeadBlock(len(blocks), heads, context, o_node, transposed, attention, site, flatten))
    return HeadBlocks(blocks, declined)


def _output_projection(context: ir.Value, heads: AttentionHeads) -> tuple[ir.Node, bool, ir.Node | None] | str:
    """The node projecting ``context`` with a constant weight of ``hidden_size`` rows, and
    the Reshape flattening ``[b, s, h·d]`` to ``[b·s, h·d]`` before it (GPT-2's Conv1D)."""
    width = heads.num_heads * heads.head_size
    users = [user for user, _ in context.uses()]
    if len(users) != 1 or context.is_graph_output():
        return "the attention output is read by more than the output projection"
    node = users[0]
    flatten = None
    if node.op_type == "Reshape" and node.inputs[0] is context and not node.outputs[0].is_graph_output():
        target = constant_array(node.inputs[1])
        readers = [user for user, _ in node.outputs[0].uses()]
        if target is None or target.size != 2 or int(target[-1]) not in (width, -1) or len(readers) != 1:
            return f"{label(node)} reshapes the attention output other than to [b·s, h·d]"
        flatten, node = node, readers[0]
    if node.op_type not in ("MatMul", "Gemm") or node.inputs[0] is not (flatten.outputs[0] if flatten else context):
        return f"the attention output is read by {label(node)}, not an output projection"
    weight = node.inputs[1]
    tensor = constant_tensor(weight)
    transposed = node.op_type == "Gemm" and bool(int_attr(node, "transB", 0))
    if node.op_type == "Gemm" and int_attr(node, "transA", 0):
        return f"the output projection {label(node)} transposes its input"
    if tensor is None or len(tensor.shape) != 2:
        return f"the output projection weight of {label(node)} is not a constant matrix"
    rows = int(tensor.shape[1 if transposed else 0])
    if rows != width:
        return f"the output projection has {rows} input rows, not heads × head size"
    if len(weight.uses()) != 1:
        return f"the output projection weight '{weight.name}' is shared with other nodes"
    return node, transposed, flatten


def _fused_unsupported(node: ir.Node, heads: AttentionHeads) -> str:
    """Why a fused Attention node cannot be pruned head by head ("" when it can)."""
    inputs = list(node.inputs) + [None] * 7
    if inputs[4] is not None:
        return f"{label(node)} reads past keys and values (a KV cache holds every head)"
    if inputs[5] is not None and _per_head(inputs[5]):
        return f"{label(node)} adds a per-head attention bias"
    sizes = [heads.q_columns[1] - heads.q_columns[0], heads.k_columns[1] - heads.k_columns[0],
             heads.v_columns[1] - heads.v_columns[0]]
    if len(set(sizes)) != 1:
        return f"{label(node)} has different Q/K/V widths {sizes}"
    return ""


def _per_head(value: ir.Value) -> bool:
    shape = value.shape
    return shape is None or len(shape) != 4 or shape[1] != 1


def head_columns(head: int, head_size: int, start: int = 0) -> np.ndarray:
    """Column indices of ``head`` within a projection starting at column ``start``."""
    return np.arange(start + head * head_size, start + (head + 1) * head_size)
