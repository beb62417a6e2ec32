"""Conv / Gemm followed by an activation -> one contrib op that applies it on the way out
(exact: the same arithmetic, without writing and re-reading the pre-activation tensor).

    fuse-activation  Act(Conv(x, W, b)) -> com.microsoft::FusedConv(x, W, b, activation=Act)
                     Act(Gemm(a, b, c)) -> com.microsoft::FusedGemm(a, b, c, activation=Act)

Fires only where the target runs the fused op; each fused op takes the activations its
ONNX Runtime kernel implements (``FUSED_CONV_ACTIVATIONS`` / ``FUSED_GEMM_ACTIVATIONS``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from greencc.passes.lib.graph_edits import constant_array
from greencc.passes.lib.matching import CONTRIB_DOMAIN, FusionRun, float_attr, label, other_readers
from greencc.passes.lib.rules import Match, Op, Rule
from greencc.pipeline.base import register_pass

# ONNX Runtime's contrib kernels (onnxruntime/contrib_ops/cpu/fused_activation.cc and
# fused_gemm.cc, checked against onnxruntime 1.32): the activations each accepts.
FUSED_CONV_ACTIVATIONS = frozenset(
    {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish"}
)
FUSED_GEMM_ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid"})
ACTIVATIONS = FUSED_CONV_ACTIVATIONS | FUSED_GEMM_ACTIVATIONS
# The Conv/Gemm attributes the fused ops take over unchanged.
CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
GEMM_ATTRIBUTES = ("alpha", "beta", "transA", "transB")


def _activation_params(node: ir.Node, run: FusionRun) -> list[float] | None:
    """The activation's parameters in FusedConv's ``activation_params`` order."""
    op = node.op_type
    if op == "LeakyRelu":
        return [float_attr(node, "alpha", 0.01)]
    if op == "HardSigmoid":
        return [float_attr(node, "alpha", 0.2), float_attr(node, "beta", 0.5)]
    if op == "Clip":
        if run.onnx_opset() < 11:
            return [float_attr(node, "min", float(np.finfo(np.float32).min)),
                    float_attr(node, "max", float(np.finfo(np.float32).max))]
        bounds = []
        for index, default in ((1, float(np.finfo(np.float32).min)), (2, float(np.finfo(np.float32).max))):
            value = node.inputs[index] if len(node.inputs) > index else None
            if value is None:
                bounds.append(default)
                continue
            array = constant_array(value, max_elements=1)
            if array is None:
                return None
            bounds.append(float(np.asarray(array).reshape(-1)[0]))
        return bounds
    return []


@register_pass("fuse-activation")
class FuseActivation(Rule):
    """Act(Conv(...)) -> com.microsoft::FusedConv; Act(Gemm(...)) -> com.microsoft::FusedGemm.

    Act is Relu, Clip (constant bounds), LeakyRelu, Sigmoid, Tanh, HardSigmoid or
    HardSwish, on float32 data; FusedGemm takes no Clip or HardSwish. Declines where the
    target lacks the fused op, or the pre-activation tensor is read elsewhere.
    """

    pattern = Op(ACTIVATIONS, Op(("Conv", "Gemm"), name="source", more_inputs=True), more_inputs=True)

    def check(self, m: Match, run: FusionRun) -> str:
        node, source = m.root, m.node("source")
        fused_op = "FusedConv" if source.op_type == "Conv" else "FusedGemm"
        supported = FUSED_CONV_ACTIVATIONS if fused_op == "FusedConv" else FUSED_GEMM_ACTIVATIONS
        if node.op_type not in supported:
            return f"{CONTRIB_DOMAIN}::{fused_op} has no {node.op_type} activation"
        why = other_readers(m["source"], [node])
        if why:
            return f"cannot fuse into {label(source)}: {why}"
        dtype = run.dtype(m["source"]) or run.dtype(source.inputs[0])
        if dtype != ir.DataType.FLOAT:
            return f"{fused_op} runs float32 only; the data is {dtype}"
        m["params"] = _activation_params(node, run)
        if m["params"] is None:
            return "the Clip bounds are not constants"
        return run.unsupported_reason(f"{CONTRIB_DOMAIN}::{fused_op}")

    def rewrite(self, m: Match, run: FusionRun) -> None:
        source, activation = m.node("source"), m.root
        run.fused_away([source.outputs[0]])
        attributes: dict[str, Any] = {"activation": activation.op_type}
        if source.op_type == "Conv":
            fused_op = "FusedConv"
            for name in CONV_ATTRIBUTES:
                if name in source.attributes:
                    attributes[name] = source.attributes[name].value
            if m["params"]:
                attributes["activation_params"] = m["params"]
        else:
            fused_op = "FusedGemm"
            for name in GEMM_ATTRIBUTES:
                if name in source.attributes:
                    attributes[name] = source.attributes[name].value
            for key, value in zip(("activation_alpha", "activation_beta"), m["params"], strict=False):
                attributes[key] = value
        fused = run.new_node(
            fused_op, list(source.inputs), attributes, anchor=source, domain=CONTRIB_DOMAIN
        )
        run.replace(activation.outputs[0], fused, fused.outputs[0], [source, activation], before=activation)
