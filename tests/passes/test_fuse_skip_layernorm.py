"""fuse-skip-layernorm: LayerNormalization of a residual sum (with the bias of the layer
before it) becomes com.microsoft::SkipLayerNormalization."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import model_from_text, random_feeds, run_ort
from tests.passes.strategies import fingerprint
from tests.passes.test_fuse_support import (
    FUSION_PROPERTY_SETTINGS,
    assert_close,
    check_fusion,
    ops,
    reasons,
    run_fusion,
)

FLOAT = onnx.TensorProto.FLOAT
VEC = "{0.1, -0.2, 0.3, -0.4, 0.5, 0.6, -0.7, 0.8}"
MAT = "{" + ", ".join(str(v) for v in np.linspace(-1, 1, 64).round(4)) + "}"

BEFORE = f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4, 8] x, float[N, 4, 8] r) => (float[N, 4, 8] y, float[N, 4, 8] z)
<float[8, 8] w = {MAT}, float[8] b = {VEC}, float[8] gamma = {VEC}, float[8] beta = {VEC}>
{{
  mm = MatMul(x, w)
  h = Add(b, mm)
  s = Add(r, h)
  y = LayerNormalization<axis = -1, epsilon = 1e-5>(s, gamma, beta)
  z = Relu(s)
}}
"""


def test_golden_residual_and_bias_join_the_normalization():
    model = model_from_text(BEFORE)
    result, _ = run_fusion(model, "fuse-skip-layernorm", dims={"N": 1})
    # h (the biased value) is no longer written and read; the sum s still is (z reads it).
    assert result.stats == {"fused": 1, "activation_bytes_removed": 2 * 4 * 8 * 4}
    assert ops(model) == ["MatMul", "ms::SkipLayerNormalization", "Relu"]
    fused = model.graph.node(1)
    assert [v.name if v is not None else "" for v in fused.inputs] == ["mm", "r", "gamma", "beta", "b"]
    assert fused.attributes["epsilon"].as_float() == np.float32(1e-5)
    assert fused.outputs[0].name == "y"
    assert model.graph.node(2).inputs[0] is fused.outputs[3]  # input_skip_bias_sum


def test_matches_ort_and_is_idempotent():
    model = model_from_text(BEFORE)
    feeds = random_feeds(model, seed=2, dims={"N": 3})
    expected = run_ort(model, feeds)
    run_fusion(model, "fuse-skip-layernorm")
    assert_close(expected, run_ort(model, feeds))
    before = fingerprint(model)
    again, _ = run_fusion(model, "fuse-skip-layernorm")
    assert again.modified is False and fingerprint(model) == before


def test_declines_with_reasons():
    model = model_from_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 4, 8] x, float[N, 4, 8] r, float[1, 4, 8] p, float[4, 8] x2, float[4, 8] r2)
          => (float[N, 4, 8] y1, float[N, 4, 8] y2, float[4, 8] y3, float[N, 4, 8] y4, float[N, 4, 1] mean4)
        <float[8] gamma = {VEC}, float[4, 8] g2 = {MAT}>
        {{
          s1 = Add(x, p)
          y1 = LayerNormalization(s1, gamma)
          s2 = Add(x, r)
          y2 = LayerNormalization<axis = 1>(s2, g2)
          s3 = Add(x2, r2)
          y3 = LayerNormalization(s3, gamma)
          s4 = Add(r, x)
          y4, mean4 = LayerNormalization(s4, gamma)
        }}
        """
    )
    before = fingerprint(model)
    result, ctx = run_fusion(model, "fuse-skip-layernorm")
    assert result.modified is False and fingerprint(model) == before
    assert reasons(ctx, "fuse-skip-layernorm") == [
        "the residual operands have shapes [N,4,8] and [1,4,8], not one known shape",
        "it normalizes from axis 1, not over the last axis only",
        "the input has rank 2; SkipLayerNormalization takes rank 3",
        "its Mean / InvStdDev outputs are used",
    ]


@st.composite
def skip_graphs(draw: st.DrawFn) -> onnx.ModelProto:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    hidden = draw(st.sampled_from([4, 8]))
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "gamma"),
    ]
    nodes = [oh.make_node("MatMul", ["x", "w"], ["mm"])]
    left = "mm"
    if draw(st.booleans()):
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b"))
        nodes.append(oh.make_node("Add", ["mm", "b"] if draw(st.booleans()) else ["b", "mm"], ["h"]))
        left = "h"
    nodes.append(oh.make_node("Add", [left, "r"] if draw(st.booleans()) else ["r", left], ["s"]))
    ln_inputs = ["s", "gamma"]
    if draw(st.booleans()):
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "beta"))
        ln_inputs.append("beta")
    axis = draw(st.sampled_from([-1, 2]))
    eps = draw(st.sampled_from([1e-5, 1e-12]))
    nodes.append(oh.make_node("LayerNormalization", ln_inputs, ["y"], axis=axis, epsilon=eps))
    shape = ["N", 3, hidden]
    outputs = [oh.make_tensor_value_info("y", FLOAT, shape)]
    if draw(st.booleans()):  # a pre-norm residual stream reads the sum again
        nodes.append(oh.make_node("Tanh", ["s"], ["z"]))
        outputs.append(oh.make_tensor_value_info("z", FLOAT, shape))
    graph = oh.make_graph(
        nodes, "g",
        [oh.make_tensor_value_info("x", FLOAT, shape), oh.make_tensor_value_info("r", FLOAT, shape)],
        outputs, initializer=inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=10)


@FUSION_PROPERTY_SETTINGS
@given(proto=skip_graphs())
def test_property_random_residuals(proto):
    result = check_fusion(proto, "fuse-skip-layernorm", dims={"N": 2})
    assert result.stats["fused"] == 1
