"""fuse-activation: Conv/Gemm + activation become FusedConv/FusedGemm where the target runs
them and the fused op implements the activation."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
from hypothesis import given
from hypothesis import strategies as st

import greencc as gc
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
WEIGHTS = ", ".join(str(v) for v in np.linspace(-1, 1, 36).round(3))

BEFORE = f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 2, 4, 4] x, float[N, 6] a) => (float[N, 2, 4, 4] y, float[N, 3] z)
<float[2, 2, 3, 3] w = {{{WEIGHTS}}}, float[6, 3] gw = {{{", ".join(str(v) for v in np.linspace(-1, 1, 18).round(3))}}},
 float lo = {{-0.5}}, float hi = {{0.5}}>
{{
  c = Conv<pads = [1, 1, 1, 1], strides = [1, 1]>(x, w)
  y = Clip(c, lo, hi)
  g = Gemm<transB = 0, alpha = 2.0>(a, gw)
  z = LeakyRelu<alpha = 0.2>(g)
}}
"""


def test_golden_conv_clip_and_gemm_leaky_relu():
    model = model_from_text(BEFORE)
    result, _ = run_fusion(model, "fuse-activation", dims={"N": 1})
    assert result.stats == {"fused": 2, "activation_bytes_removed": 2 * (2 * 4 * 4 + 3) * 4}
    assert ops(model) == ["ms::FusedConv", "ms::FusedGemm"]
    conv, gemm = list(model.graph)
    assert conv.attributes["activation"].as_string() == "Clip"
    assert list(conv.attributes["activation_params"].as_floats()) == [-0.5, 0.5]
    assert list(conv.attributes["pads"].as_ints()) == [1, 1, 1, 1]
    assert gemm.attributes["activation"].as_string() == "LeakyRelu"
    assert gemm.attributes["activation_alpha"].as_float() == np.float32(0.2)
    assert gemm.attributes["alpha"].as_float() == 2.0
    assert [v.name for v in model.graph.outputs] == ["y", "z"]


def test_matches_ort_and_is_idempotent():
    model = model_from_text(BEFORE)
    feeds = random_feeds(model, seed=5, dims={"N": 2})
    expected = run_ort(model, feeds)
    run_fusion(model, "fuse-activation")
    assert_close(expected, run_ort(model, feeds))
    before = fingerprint(model)
    again, _ = run_fusion(model, "fuse-activation")
    assert again.modified is False and fingerprint(model) == before


def test_declines_with_reasons():
    model = model_from_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 2, 4, 4] x, float[N, 6] a, float hi) => (float[N, 2, 2, 2] y1, float[N, 2, 2, 2] y2,
                                                            float[N, 3] z1, float[N, 2, 2, 2] c3)
        <float[2, 2, 3, 3] w = {{{WEIGHTS}}}, float[6, 3] gw = {{{", ".join(["0.5"] * 18)}}}, float lo = {{0.0}}>
        {{
          c1 = Conv(x, w)
          y1 = Clip(c1, lo, hi)
          g1 = Gemm(a, gw)
          z1 = HardSwish(g1)
          c3 = Conv(x, w)
          y2 = Relu(c3)
        }}
        """
    )
    before = fingerprint(model)
    result, ctx = run_fusion(model, "fuse-activation")
    assert result.modified is False and fingerprint(model) == before
    assert reasons(ctx, "fuse-activation") == [
        "the Clip bounds are not constants",
        "com.microsoft::FusedGemm has no HardSwish activation",
        "cannot fuse into <unnamed Conv -> c3>: 'c3' is a graph output",
    ]


def test_a_resnet_style_cnn_folds_every_batchnorm_and_fuses_every_relu():
    """Acceptance: every BN after a Conv folded, every Relu after a Conv fused, exact."""
    import torch

    from tests.models import small_cnn_input, small_cnn_model

    model = small_cnn_model()
    feeds = {"x": small_cnn_input(batch=3).numpy()}
    expected = run_ort(model, feeds)
    fused, report = gc.optimize(model, "cleanup,fuse,dce", dims={"batch": 3})
    counts = fused.op_counts()
    assert counts["com.microsoft::FusedConv"] == 2
    assert "BatchNormalization" not in counts and "Relu" not in counts and "Conv" not in counts
    got = run_ort(fused, feeds)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5 * np.abs(expected[0]).max())
    del torch


ACTIVATIONS = {
    "Relu": {}, "Sigmoid": {}, "Tanh": {}, "HardSwish": {}, "LeakyRelu": {"alpha": 0.3},
    "HardSigmoid": {"alpha": 0.3, "beta": 0.4}, "Clip": {},
}


@st.composite
def activation_graphs(draw: st.DrawFn) -> onnx.ModelProto:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["Conv", "Gemm"]))
    act = draw(st.sampled_from(sorted(ACTIVATIONS)))
    inits, act_inputs = [], ["pre"]
    if kind == "Conv":
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w"))
        x = oh.make_tensor_value_info("x", FLOAT, ["N", 2, 5, 5])
        stride = draw(st.sampled_from([1, 2]))
        producer = oh.make_node("Conv", ["x", "w"], ["pre"], pads=[1, 1, 1, 1], strides=[stride] * 2)
        out_shape = ["N", 3, 5 // stride + (stride == 2), 5 // stride + (stride == 2)]
    else:
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"))
        x = oh.make_tensor_value_info("x", FLOAT, ["N", 4])
        producer = oh.make_node("Gemm", ["x", "w"], ["pre"], alpha=draw(st.sampled_from([1.0, 0.5])))
        out_shape = ["N", 3]
    if act == "Clip":
        low, high = sorted(rng.uniform(-1, 1, 2).astype(np.float32))
        inits += [onnx.numpy_helper.from_array(np.array(low, np.float32), "lo"),
                  onnx.numpy_helper.from_array(np.array(high, np.float32), "hi")]
        act_inputs += ["lo", "hi"][: draw(st.integers(1, 2))]
    nodes = [producer, oh.make_node(act, act_inputs, ["y"], **ACTIVATIONS[act])]
    outputs = [oh.make_tensor_value_info("y", FLOAT, out_shape)]
    if draw(st.integers(0, 3)) == 0:
        outputs.append(oh.make_tensor_value_info("pre", FLOAT, out_shape))
    graph = oh.make_graph(nodes, "g", [x], outputs, initializer=inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=10)


@FUSION_PROPERTY_SETTINGS
@given(proto=activation_graphs())
def test_property_random_activations(proto):
    result = check_fusion(proto, "fuse-activation", dims={"N": 2})
    producer, activation = proto.graph.node
    supported = activation.op_type not in ("Clip", "HardSwish") or producer.op_type == "Conv"
    assert result.stats["fused"] == int(supported and len(proto.graph.output) == 1)
