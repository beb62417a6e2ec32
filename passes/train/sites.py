"""The IR values ``recover`` treats specially, found on the graphs alone: the hidden states
a student and its teacher share (``loss=hidden``) and the weights an int8 pass will
quantize, with their output-channel axis (fake-quantized during ``qat``).
"""

from __future__ import annotations

import onnx_ir as ir

from greencc.model import Model
from greencc.passes.lib.matching import int_attr
from greencc.pipeline.context import PassContext
from greencc.pipeline.text import Pipeline

# Ops whose first output is a block's normalized hidden state (the residual stream after
# each sub-layer): plain and fused LayerNorm and RMSNorm, in ONNX and com.microsoft.
NORMALIZATIONS = frozenset({
    "LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization",
    "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization",
})

# The Hugging Face name of the [batch, seq] input whose zeros mark padded positions.
PADDING_MASK = "attention_mask"


def shared_hidden_states(student: Model, teacher: Model) -> list[str]:
    """The hidden states distilled by ``loss=hidden``, in the teacher's graph order: first
    outputs of normalization nodes (:data:`NORMALIZATIONS`) of the teacher that the student
    produces under the same name with the same dtype and shape, graph outputs excluded.

    Pruning heads or FFN neurons keeps the residual stream's names and widths, so after
    ``prune-heads`` / ``prune-ffn`` every block's LayerNorm outputs match; a value a fusion
    renamed, or whose width a pass changed, is left out."""
    produced = {value.name: value for node in student.graph for value in node.outputs if value.name}
    outputs = {value.name for value in teacher.graph.outputs} | {value.name for value in student.graph.outputs}
    names = []
    for node in teacher.graph:
        if node.op_type not in NORMALIZATIONS or not node.outputs:
            continue
        value = node.outputs[0]
        other = produced.get(value.name or "")
        if other is None or value.name in outputs or other.dtype != value.dtype:
            continue
        if value.shape is None or other.shape is None or list(value.shape) != list(other.shape):
            continue
        names.append(value.name)
    return names


def int8_weight_axes(model: Model, per_channel: bool) -> dict[str, int | None]:
    """Initializer name -> the axis of its output channels (``None`` per tensor) for the
    weights ``quantize-int8`` would quantize: the constant weight of MatMul (rank 2, axis
    1), Gemm (axis 0 with ``transB``, else 1) and Conv (axis 0)."""
    axes: dict[str, int | None] = {}
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if weight is None or not weight.is_initializer() or weight.const_value is None:
            continue
        rank = len(weight.const_value.shape)
        if node.op_type == "MatMul" and rank != 2:
            continue
        axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and int_attr(node, "transB", 0)) else 1
        axes[weight.name or ""] = axis if per_channel else None
    axes.pop("", None)
    return axes


def following_int8(ctx: PassContext) -> Pipeline | None:
    """The ``quantize-int8`` items after the first ``recover`` in the run's pipeline (the
    one its :class:`~greencc.config.CompileConfig` records), or ``None`` when the run
    names no pipeline or none follows."""
    if ctx.config is None:
        return None
    items = Pipeline.parse(ctx.config.pipeline).items
    names = [item.name for item in items]
    if "recover" not in names:
        return None
    after = [item for item in items[names.index("recover") + 1 :] if item.name == "quantize-int8"]
    return Pipeline(tuple(after)) if after else None


def is_float(value: ir.Value) -> bool:
    """Whether ``value`` holds float16/32/64 or bfloat16 data."""
    return value.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)
