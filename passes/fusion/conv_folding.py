"""Folding into Conv: what follows (or precedes) a convolution as a per-channel affine map
or a zero pad becomes part of the convolution's weights, bias or pads. All exact up to
float rounding (the folded constants are computed in float64 and rounded once).

    fold-batchnorm   BatchNormalization(Conv(x, W, b))   -> Conv(x, W·s, (b-μ)·s+β), s = γ/√(σ²+ε)
    fold-conv-bias   Add(Conv(x, W, b), C) / Sub(..., C) -> Conv(x, W, b ± C)      (C per channel)
    fold-conv-scale  Mul(Conv(x, W, b), C) / Div(..., C) -> Conv(x, W·C, b·C)      (C per channel)
    fold-pad         Conv(Pad(x, p, 0))                  -> Conv(x) with pads + p  (spatial, constant 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from greencc.ir import inherit_provenance
from greencc.passes.lib.graph_edits import constant_array, redirect, remove_node
from greencc.passes.lib.matching import (
    MAX_CHECKED_ELEMENTS,
    FusionRun,
    float_attr,
    int_attr,
    ints_attr,
    label,
    other_readers,
    producer,
)
from greencc.passes.lib.rules import Match, Op, Rule, Var
from greencc.pipeline.base import register_pass


@dataclass
class ConvParameters:
    """A Conv node's constant weight and bias (zeros when it has none)."""

    conv: ir.Node
    weight: np.ndarray
    bias: np.ndarray


def conv_parameters(conv: ir.Node) -> ConvParameters | str:
    """The constant weight and bias of ``conv``, or why they are not constants."""
    weight = constant_array(conv.inputs[1] if len(conv.inputs) > 1 else None)
    if weight is None:
        return f"the weight of {label(conv)} is not a constant"
    if weight.dtype.kind != "f":
        return f"the weight of {label(conv)} is {weight.dtype}, not a float type"
    bias_value = conv.inputs[2] if len(conv.inputs) > 2 else None
    if bias_value is None:
        bias = np.zeros(weight.shape[0], dtype=weight.dtype)
    else:
        bias = constant_array(bias_value)
        if bias is None:
            return f"the bias of {label(conv)} is not a constant"
    return ConvParameters(conv, weight, bias)


def set_conv_parameters(
    params: ConvParameters, weight: np.ndarray, bias: np.ndarray, run: FusionRun
) -> None:
    """Give the Conv new weight and bias initializers (old ones are left for dce)."""
    conv = params.conv
    graph = conv.graph
    assert graph is not None
    old_weight = conv.inputs[1]
    w = run.initializer(graph, f"{old_weight.name or 'W'}_folded", weight.astype(params.weight.dtype))
    b = run.initializer(graph, f"{conv.name or 'conv'}_bias_folded", bias.astype(params.weight.dtype))
    conv.replace_input_with(1, w)
    if len(conv.inputs) < 3:
        conv.resize_inputs(3)
    conv.replace_input_with(2, b)


def fold_into_conv(conv: ir.Node, follower: ir.Node, run: FusionRun) -> None:
    """Make ``conv`` stand for ``follower`` (whose effect its new parameters include)."""
    graph = follower.graph
    assert graph is not None
    run.fused_away([conv.outputs[0]])
    inherit_provenance(conv, [conv, follower])
    redirect(graph, follower.outputs[0], conv.outputs[0], before=follower, replaced=[follower])
    remove_node(follower)


def _conv_reason(node: ir.Node, conv: ir.Node) -> str:
    """Why ``conv`` cannot be folded into by ``node`` (another reader), or ``""``."""
    why = other_readers(conv.outputs[0], [node])
    return f"cannot fold into {label(conv)}: {why}" if why else ""


@register_pass("fold-batchnorm")
class FoldBatchNorm(Rule):
    """BatchNormalization(Conv(x, W, b)) -> Conv(x, W·s, (b-μ)·s+β) with s = γ/√(σ²+ε).

    Inference-mode BatchNormalization only; the Conv's weight and bias and the
    normalization's statistics must be constants, and nothing else may read the Conv.
    """

    pattern = Op("BatchNormalization", Var("x"), more_inputs=True)

    def check(self, m: Match, run: FusionRun) -> str:
        node = m.root
        conv = producer(m["x"], "Conv")
        if conv is None:
            origin = m["x"].producer()
            return f"its input comes from {label(origin) if origin else 'a graph input'}, not from a Conv"
        if int_attr(node, "training_mode", 0):
            return "it runs in training mode (batch statistics)"
        if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
            return "its running-statistics outputs are used"
        why = _conv_reason(node, conv)
        if why:
            return why
        params = m["params"] = conv_parameters(conv)
        if isinstance(params, str):
            return params
        stats = [constant_array(v) for v in node.inputs[1:5]]
        if len(stats) != 4 or any(s is None for s in stats):
            return "its scale, bias, mean or variance is not a constant"
        gamma, beta, mean, var = (np.asarray(s, np.float64).reshape(-1) for s in stats)
        channels = params.weight.shape[0]
        if any(a.size != channels for a in (gamma, beta, mean, var)):
            return f"its statistics do not have one value per Conv channel ({channels})"
        m["scale"] = gamma / np.sqrt(var + float_attr(node, "epsilon", 1e-5))
        m["shift"] = beta - mean * m["scale"]
        return ""

    def rewrite(self, m: Match, run: FusionRun) -> None:
        params, scale = m["params"], m["scale"]
        weight = params.weight.astype(np.float64) * _per_channel(scale, params.weight.ndim)
        bias = params.bias.astype(np.float64) * scale + m["shift"]
        set_conv_parameters(params, weight, bias, run)
        fold_into_conv(params.conv, m.root, run)


def _per_channel(vector: np.ndarray, rank: int) -> np.ndarray:
    """``vector`` shaped to scale a weight of ``rank`` along its output-channel axis."""
    return vector.reshape((-1,) + (1,) * (rank - 1))


def per_channel_vector(
    constant: np.ndarray, rank: int, channels: int
) -> tuple[np.ndarray | None, str]:
    """``constant`` as one value per channel of an NC... tensor of ``rank``, or why not."""
    if constant.ndim > rank:
        return None, f"the constant of shape {tuple(constant.shape)} raises the rank above {rank}"
    shape = (1,) * (rank - constant.ndim) + tuple(constant.shape)
    for axis, size in enumerate(shape):
        if axis != 1 and size != 1:
            return None, (
                f"the constant of shape {tuple(constant.shape)} varies along axis {axis}, "
                f"not only along the channel axis 1"
            )
    if shape[1] not in (1, channels):
        return None, f"the constant has {shape[1]} channels, the Conv {channels}"
    vector = np.broadcast_to(constant.reshape(-1).astype(np.float64), (channels,))
    return vector, ""


class _FoldPerChannel(Rule):
    """Shared check of ``Op(Conv(...), C)`` with a per-channel constant ``C``; stores the
    per-channel vector as ``m["vector"]``."""

    # Ops where only Op(Conv, C) folds (not Op(C, Conv)).
    ordered: ClassVar[tuple[str, ...]] = ()

    def check(self, m: Match, run: FusionRun) -> str:
        node, conv = m.root, m.node("conv")
        if node.op_type in self.ordered and node.inputs[0] is not m["conv"]:
            return f"{node.op_type}(C, Conv) is not an affine map of the Conv output"
        why = _conv_reason(node, conv)
        if why:
            return why
        other = m["c"]
        constant = constant_array(other, max_elements=MAX_CHECKED_ELEMENTS)
        if constant is None:
            return f"its other input '{other.name}' is not a (small) constant"
        params = m["params"] = conv_parameters(conv)
        if isinstance(params, str):
            return params
        m["vector"], why = per_channel_vector(constant, params.weight.ndim, params.weight.shape[0])
        if m["vector"] is None:
            return why
        if constant.dtype != params.weight.dtype:
            return f"the constant is {constant.dtype}, the Conv {params.weight.dtype}"
        return ""


@register_pass("fold-conv-bias")
class FoldConvBias(_FoldPerChannel):
    """Add(Conv(x, W, b), C) -> Conv(x, W, b + C); Sub(Conv(x, W, b), C) -> Conv(x, W, b - C).

    ``C`` is a constant with one value per output channel (shape [M], [M,1,1], [1,M,1,1]
    or a scalar), so adding it never broadcasts the Conv output to a new shape.
    """

    pattern = Op(("Add", "Sub"), Op("Conv", name="conv", more_inputs=True), Var("c"), commute=True)
    ordered = ("Sub",)

    def rewrite(self, m: Match, run: FusionRun) -> None:
        params = m["params"]
        sign = -1.0 if m.root.op_type == "Sub" else 1.0
        bias = params.bias.astype(np.float64) + sign * m["vector"]
        set_conv_parameters(params, params.weight.astype(np.float64), bias, run)
        fold_into_conv(params.conv, m.root, run)


@register_pass("fold-conv-scale")
class FoldConvScale(_FoldPerChannel):
    """Mul(Conv(x, W, b), C) -> Conv(x, W·C, b·C); Div(Conv(x, W, b), C) -> Conv(x, W/C, b/C).

    ``C`` is a per-output-channel constant (as for fold-conv-bias); a Div by a constant
    holding a zero is left alone.
    """

    pattern = Op(("Mul", "Div"), Op("Conv", name="conv", more_inputs=True), Var("c"), commute=True)
    ordered = ("Div",)

    def check(self, m: Match, run: FusionRun) -> str:
        why = super().check(m, run)
        if why or m.root.op_type != "Div":
            return why
        if np.any(m["vector"] == 0):
            return "the divisor holds a zero"
        m["vector"] = 1.0 / m["vector"]
        return ""

    def rewrite(self, m: Match, run: FusionRun) -> None:
        params, vector = m["params"], m["vector"]
        weight = params.weight.astype(np.float64) * _per_channel(vector, params.weight.ndim)
        bias = params.bias.astype(np.float64) * vector
        set_conv_parameters(params, weight, bias, run)
        fold_into_conv(params.conv, m.root, run)


@register_pass("fold-pad")
class FoldPad(Rule):
    """Conv(Pad(x, p, value=0, mode=constant)) -> Conv(x) with pads + p.

    Only zero padding of the spatial axes folds (the batch and channel axes must stay
    unpadded), with non-negative pads, and a Conv whose auto_pad is NOTSET or VALID.
    """

    pattern = Op("Conv", Op("Pad", Var("x"), name="pad", more_inputs=True), more_inputs=True)

    def check(self, m: Match, run: FusionRun) -> str:
        node, pad = m.root, m.node("pad")
        why = other_readers(m["pad"], [node])
        if why:
            return f"cannot fold {label(pad)}: {why}"
        mode = pad.attributes.get("mode")
        if mode is not None and mode.as_string() != "constant":
            return f"{label(pad)} uses mode '{mode.as_string()}', not constant"
        pads = self._pads(pad, run)
        if pads is None:
            return f"the pads of {label(pad)} are not a constant"
        value = pad.inputs[2] if len(pad.inputs) > 2 else None
        if value is None:
            fill = 0.0 if run.onnx_opset() >= 11 else float_attr(pad, "value", 0.0)
        else:
            fill_array = constant_array(value, max_elements=1)
            fill = None if fill_array is None else float(np.asarray(fill_array).reshape(-1)[0])
        if fill != 0.0:
            return f"{label(pad)} pads with {'not a constant' if fill is None else fill}, not zero"
        rank = len(pads) // 2
        axes = self._axes(pad, rank, run)
        if axes is None:
            return f"the axes of {label(pad)} are not a constant"
        weight_rank = run.rank(node.inputs[1])
        if weight_rank is None:
            return "the rank of the Conv weight is unknown"
        full = [0] * (2 * weight_rank)
        for i, axis in enumerate(axes):
            axis = axis + weight_rank if axis < 0 else axis
            if not 0 <= axis < weight_rank:
                return f"{label(pad)} pads axis {axis} of a rank-{weight_rank} input"
            full[axis] = pads[i]
            full[axis + weight_rank] = pads[i + rank]
        if any(p < 0 for p in full):
            return f"{label(pad)} crops (negative pads {full})"
        if any(full[a] or full[a + weight_rank] for a in (0, 1)):
            return f"{label(pad)} pads the batch or channel axis ({full})"
        auto_pad = node.attributes.get("auto_pad")
        if auto_pad is not None and auto_pad.as_string() not in ("NOTSET", "VALID"):
            return f"the Conv uses auto_pad={auto_pad.as_string()}"
        spatial = weight_rank - 2
        conv_pads = ints_attr(node, "pads") or [0] * (2 * spatial)
        if auto_pad is not None and auto_pad.as_string() == "VALID":
            conv_pads = [0] * (2 * spatial)
        m["pads"] = [
            conv_pads[i] + (full[2 + i] if i < spatial else full[weight_rank + 2 + i - spatial])
            for i in range(2 * spatial)
        ]
        return ""

    @staticmethod
    def _pads(pad: ir.Node, run: FusionRun) -> list[int] | None:
        if len(pad.inputs) > 1 and pad.inputs[1] is not None:
            array = constant_array(pad.inputs[1], max_elements=64)
            return None if array is None else [int(v) for v in np.asarray(array).reshape(-1)]
        return ints_attr(pad, "pads")

    @staticmethod
    def _axes(pad: ir.Node, rank: int, run: FusionRun) -> list[int] | None:
        if len(pad.inputs) > 3 and pad.inputs[3] is not None:
            array = constant_array(pad.inputs[3], max_elements=64)
            return None if array is None else [int(v) for v in np.asarray(array).reshape(-1)]
        return list(range(rank))

    def rewrite(self, m: Match, run: FusionRun) -> None:
        conv, pad = m.root, m.node("pad")
        run.fused_away([m["pad"]])
        conv.replace_input_with(0, m["x"])
        conv.attributes["pads"] = ir.AttrInt64s("pads", m["pads"])
        conv.attributes.pop("auto_pad", None)
        inherit_provenance(conv, [conv, pad])
        remove_node(pad)
