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
from greencc.pipeline.base import register_pass

from greencc.passes.lib.matching import (
    MAX_CHECKED_ELEMENTS,
    FusionPass,
    FusionRun,
    float_attr,
    int_attr,
    ints_attr,
    label,
    other_readers,
    producer,
)


@dataclass
class ConvParameters:
    """A Conv node's constant weight and bias (zeros when it has none)."""

    conv: ir.Node
    weight: np.ndarray
    bias: np.ndarray


def conv_parameters(conv: ir.Node, run: FusionRun, at: ir.Node) -> ConvParameters | None:
    """The constant weight and bias of ``conv``; declines at ``at`` when not constant."""
    weight = constant_array(conv.inputs[1] if len(conv.inputs) > 1 else None)
    if weight is None:
        run.decline(at, f"the weight of {label(conv)} is not a constant")
        return None
    if weight.dtype.kind != "f":
        run.decline(at, f"the weight of {label(conv)} is {weight.dtype}, not a float type")
        return None
    bias_value = conv.inputs[2] if len(conv.inputs) > 2 else None
    if bias_value is None:
        bias = np.zeros(weight.shape[0], dtype=weight.dtype)
    else:
        bias = constant_array(bias_value)
        if bias is None:
            run.decline(at, f"the bias of {label(conv)} is not a constant")
            return None
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


def _conv_input(node: ir.Node, value: ir.Value | None, run: FusionRun) -> ir.Node | None:
    """The Conv producing ``value`` when only ``node`` reads it; declines otherwise."""
    conv = producer(value, "Conv")
    if conv is None:
        return None
    why = other_readers(conv.outputs[0], [node])
    if why:
        run.decline(node, f"cannot fold into {label(conv)}: {why}")
        return None
    return conv


@dataclass
class BatchNormSite:
    params: ConvParameters
    batchnorm: ir.Node
    scale: np.ndarray
    shift: np.ndarray


@register_pass("fold-batchnorm")
class FoldBatchNorm(FusionPass):
    """BatchNormalization(Conv(x, W, b)) -> Conv(x, W·s, (b-μ)·s+β) with s = γ/√(σ²+ε).

    Inference-mode BatchNormalization only; the Conv's weight and bias and the
    normalization's statistics must be constants, and nothing else may read the Conv.
    """

    def match(self, node: ir.Node, run: FusionRun) -> BatchNormSite | None:
        if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
            return None
        source = node.inputs[0]
        conv = producer(source, "Conv")
        if conv is None:
            origin = source.producer() if source is not None else None
            what = label(origin) if origin else "a graph input"
            run.decline(node, f"its input comes from {what}, not from a Conv")
            return None
        if int_attr(node, "training_mode", 0):
            run.decline(node, "it runs in training mode (batch statistics)")
            return None
        if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
            run.decline(node, "its running-statistics outputs are used")
            return None
        conv = _conv_input(node, source, run)
        if conv is None:
            return None
        params = conv_parameters(conv, run, node)
        if params is None:
            return None
        stats = [constant_array(v) for v in node.inputs[1:5]]
        if len(stats) != 4 or any(s is None for s in stats):
            run.decline(node, "its scale, bias, mean or variance is not a constant")
            return None
        gamma, beta, mean, var = (np.asarray(s, np.float64).reshape(-1) for s in stats)
        channels = params.weight.shape[0]
        if any(a.size != channels for a in (gamma, beta, mean, var)):
            run.decline(node, f"its statistics do not have one value per Conv channel ({channels})")
            return None
        scale = gamma / np.sqrt(var + float_attr(node, "epsilon", 1e-5))
        shift = beta - mean * scale
        return BatchNormSite(params, node, scale, shift)

    def rewrite(self, site: BatchNormSite, run: FusionRun) -> None:
        params = site.params
        weight = params.weight.astype(np.float64) * _per_channel(site.scale, params.weight.ndim)
        bias = params.bias.astype(np.float64) * site.scale + site.shift
        set_conv_parameters(params, weight, bias, run)
        fold_into_conv(params.conv, site.batchnorm, run)


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


@dataclass
class AffineSite:
    params: ConvParameters
    follower: ir.Node
    vector: np.ndarray


class _FoldPerChannel(FusionPass):
    """Shared match of ``Op(Conv(...), C)`` with a per-channel constant ``C``."""

    op_types: ClassVar[tuple[str, ...]] = ()
    # Ops where only Op(Conv, C) folds (not Op(C, Conv)).
    ordered: ClassVar[tuple[str, ...]] = ()

    def match(self, node: ir.Node, run: FusionRun) -> AffineSite | None:
        if node.op_type not in self.op_types or node.domain not in ("", "ai.onnx"):
            return None
        if len(node.inputs) != 2:
            return None
        sides = [(i, producer(v, "Conv")) for i, v in enumerate(node.inputs)]
        sides = [(i, conv) for i, conv in sides if conv is not None]
        if not sides:
            return None
        index, _ = sides[0]
        if node.op_type in self.ordered and index != 0:
            run.decline(node, f"{node.op_type}(C, Conv) is not an affine map of the Conv output")
            return None
        conv = _conv_input(node, node.inputs[index], run)
        if conv is None:
            return None
        other = node.inputs[1 - index]
        constant = constant_array(other, max_elements=MAX_CHECKED_ELEMENTS)
        if constant is None:
            run.decline(node, f"its other input '{other.name}' is not a (small) constant")
            return None
        params = conv_parameters(conv, run, node)
        if params is None:
            return None
        vector, why = per_channel_vector(constant, params.weight.ndim, params.weight.shape[0])
        if vector is None:
            run.decline(node, why)
            return None
        if constant.dtype != params.weight.dtype:
            run.decline(node, f"the constant is {constant.dtype}, the Conv {params.weight.dtype}")
            return None
        return AffineSite(params, node, vector)


@register_pass("fold-conv-bias")
class FoldConvBias(_FoldPerChannel):
    """Add(Conv(x, W, b), C) -> Conv(x, W, b + C); Sub(Conv(x, W, b), C) -> Conv(x, W, b - C).

    ``C`` is a constant with one value per output channel (shape [M], [M,1,1], [1,M,1,1]
    or a scalar), so adding it never broadcasts the Conv output to a new shape.
    """

    op_types = ("Add", "Sub")
    ordered = ("Sub",)

    def rewrite(self, site: AffineSite, run: FusionRun) -> None:
        params = site.params
        sign = -1.0 if site.follower.op_type == "Sub" else 1.0
        bias = params.bias.astype(np.float64) + sign * site.vector
        set_conv_parameters(params, params.weight.astype(np.float64), bias, run)
        fold_into_conv(params.conv, site.follower, run)


@register_pass("fold-conv-scale")
class FoldConvScale(_FoldPerChannel):
    """Mul(Conv(x, W, b), C) -> Conv(x, W·C, b·C); Div(Conv(x, W, b), C) -> Conv(x, W/C, b/C).

    ``C`` is a per-output-channel constant (as for fold-conv-bias); a Div by a constant
    holding a zero is left alone.
    """

    op_types = ("Mul", "Div")
    ordered = ("Div",)

    def match(self, node: ir.Node, run: FusionRun) -> AffineSite | None:
        site = super().match(node, run)
        if site is not None and node.op_type == "Div":
            if np.any(site.vector == 0):
                run.decline(node, "the divisor holds a zero")
                return None
            site.vector = 1.0 / site.vector
        return site

    def rewrite(self, site: AffineSite, run: FusionRun) -> None:
        params = site.params
        weight = params.weight.astype(np.float64) * _per_channel(site.vector, params.weight.ndim)
        bias = params.bias.astype(np.float64) * site.vector
        set_conv_parameters(params, weight, bias, run)
        fold_into_conv(params.conv, site.follower, run)


@dataclass
class PadSite:
    conv: ir.Node
    pad: ir.Node
    pads: list[int]


@register_pass("fold-pad")
class FoldPad(FusionPass):
    """Conv(Pad(x, p, value=0, mode=constant)) -> Conv(x) with pads + p.

    Only zero padding of the spatial axes folds (the batch and channel axes must stay
    unpadded), with non-negative pads, and a Conv whose auto_pad is NOTSET or VALID.
    """

    def match(self, node: ir.Node, run: FusionRun) -> PadSite | None:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            return None
        pad = producer(node.inputs[0], "Pad")
        if pad is None:
            return None
        why = other_readers(pad.outputs[0], [node])
        if why:
            run.decline(node, f"cannot fold {label(pad)}: {why}")
            return None
        mode = pad.attributes.get("mode")
        if mode is not None and mode.as_string() != "constant":
            run.decline(node, f"{label(pad)} uses mode '{mode.as_string()}', not constant")
            return None
        pads = self._pads(pad, run)
        if pads is None:
            run.decline(node, f"the pads of {label(pad)} are not a constant")
            return None
        value = pad.inputs[2] if len(pad.inputs) > 2 else None
        if value is None:
            fill = 0.0 if run.onnx_opset() >= 11 else float_attr(pad, "value", 0.0)
        else:
            fill_array = constant_array(value, max_elements=1)
            fill = None if fill_array is None else float(np.asarray(fill_array).reshape(-1)[0])
        if fill != 0.0:
            shown = "not a constant" if fill is None else str(fill)
            run.decline(node, f"{label(pad)} pads with {shown}, not zero")
            return None
        rank = len(pads) // 2
        axes = self._axes(pad, rank, run)
        if axes is None:
            run.decline(node, f"the axes of {label(pad)} are not a constant")
            return None
        weight_rank = run.rank(node.inputs[1])
        if weight_rank is None:
            run.decline(node, "the rank of the Conv weight is unknown")
            return None
        full = [0] * (2 * weight_rank)
        for i, axis in enumerate(axes):
            axis = axis + weight_rank if axis < 0 else axis
            if not 0 <= axis < weight_rank:
                run.decline(node, f"{label(pad)} pads axis {axis} of a rank-{weight_rank} input")
                return None
            full[axis] = pads[i]
            full[axis + weight_rank] = pads[i + rank]
        if any(p < 0 for p in full):
            run.decline(node, f"{label(pad)} crops (negative pads {full})")
            return None
        if any(full[a] or full[a + weight_rank] for a in (0, 1)):
            run.decline(node, f"{label(pad)} pads the batch or channel axis ({full})")
            return None
        auto_pad = node.attributes.get("auto_pad")
        if auto_pad is not None and auto_pad.as_string() not in ("NOTSET", "VALID"):
            run.decline(node, f"the Conv uses auto_pad={auto_pad.as_string()}")
            return None
        spatial = weight_rank - 2
        conv_pads = ints_attr(node, "pads") or [0] * (2 * spatial)
        if auto_pad is not None and auto_pad.as_string() == "VALID":
            conv_pads = [0] * (2 * spatial)
        new = [
            conv_pads[i] + (full[2 + i] if i < spatial else full[weight_rank + 2 + i - spatial])
            for i in range(2 * spatial)
        ]
        return PadSite(node, pad, new)

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

    def rewrite(self, site: PadSite, run: FusionRun) -> None:
        conv, pad = site.conv, site.pad
        run.fused_away([pad.outputs[0]])
        conv.replace_input_with(0, pad.inputs[0])
        conv.attributes["pads"] = ir.AttrInt64s("pads", site.pads)
        conv.attributes.pop("auto_pad", None)
        inherit_provenance(conv, [conv, pad])
        remove_node(pad)
