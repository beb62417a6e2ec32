"""fuse-gelu and fuse-bias-gelu: the erf and tanh GELU forms become one op (the opset-20
Gelu, or the target's contrib op), and a bias Add before it joins the fused kernel."""

from __future__ import annotations

import math

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

ERF_GELU = """
<ir_version: 10, opset_import: ["" : %d]>
g (float[N, 8] x) => (float[N, 8] y)
<float[8] bias = {0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8}, float sqrt2 = {1.4142135381698608},
 float one = {1.0}, float half = {0.5}>
{
  h = Add(x, bias)
  s = Div(h, sqrt2)
  e = Erf(s)
  a = Add(e, one)
  m = Mul(h, a)
  y = Mul(m, half)
}
"""

TANH_GELU = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 8] x) => (float[N, 8] y)
<float three = {3.0}, float c = {0.044715}, float k = {0.7978845834732056}, float one = {1.0},
 float half = {0.5}>
{
  cube = Pow(x, three)
  t1 = Mul(c, cube)
  inner = Add(x, t1)
  scaled = Mul(inner, k)
  t = Tanh(scaled)
  a = Add(one, t)
  hx = Mul(half, x)
  y = Mul(hx, a)
}
"""


def test_golden_erf_form_becomes_onnx_gelu_at_opset_20_then_bias_gelu():
    model = model_from_text(ERF_GELU % 20)
    result, _ = run_fusion(model, "fuse-gelu", dims={"N": 1})
    assert result.stats == {"fused": 1, "activation_bytes_removed": 4 * 2 * 8 * 4}
    assert ops(model) == ["Add", "Gelu"]
    assert model.graph.node(1).attributes["approximate"].as_string() == "none"
    biased, _ = run_fusion(model, "fuse-bias-gelu", dims={"N": 1})
    assert biased.stats == {"fused": 1, "activation_bytes_removed": 2 * 8 * 4}
    assert ops(model) == ["ms::BiasGelu"]
    assert [v.name for v in model.graph.node(0).inputs] == ["x", "bias"]
    assert model.graph.outputs[0].name == "y"


def test_below_opset_20_the_target_contrib_ops_are_used():
    model = model_from_text(TANH_GELU)
    result, _ = run_fusion(model, "fuse-gelu")
    assert result.stats["fused"] == 1
    assert ops(model) == ["ms::FastGelu"]
    erf = model_from_text(ERF_GELU % 17)
    run_fusion(erf, "fuse-gelu")
    assert ops(erf) == ["Add", "ms::Gelu"]
    run_fusion(erf, "fuse-bias-gelu")
    assert ops(erf) == ["ms::BiasGelu"]


def test_both_forms_match_ort_and_are_idempotent():
    for text in (ERF_GELU % 20, ERF_GELU % 17, TANH_GELU):
        model = model_from_text(text)
        feeds = random_feeds(model, seed=9, dims={"N": 6})
        feeds["x"] *= 3
        expected = run_ort(model, feeds)
        for name in ("fuse-gelu", "fuse-bias-gelu"):
            run_fusion(model, name)
        assert_close(expected, run_ort(model, feeds))
        before = fingerprint(model)
        for name in ("fuse-gelu", "fuse-bias-gelu"):
            again, _ = run_fusion(model, name)
            assert again.modified is False
        assert fingerprint(model) == before


def test_declines_with_reasons():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 8] x) => (float[N, 8] y1, float[N, 8] y2, float[N, 8] a2)
        <float sqrt2 = {1.4142135381698608}, float one = {1.0}, float half = {0.5}, float third = {0.33}>
        {
          s1 = Div(x, sqrt2)
          e1 = Erf(s1)
          a1 = Add(e1, one)
          m1 = Mul(x, a1)
          y1 = Mul(m1, third)
          s2 = Div(x, sqrt2)
          e2 = Erf(s2)
          a2 = Add(e2, one)
          m2 = Mul(x, a2)
          y2 = Mul(m2, half)
        }
        """
    )
    before = fingerprint(model)
    result, ctx = run_fusion(model, "fuse-gelu")
    assert result.modified is False and fingerprint(model) == before
    assert reasons(ctx, "fuse-gelu") == [
        "1+erf(·) is not multiplied by exactly x and 0.5",
        "an intermediate of the GELU is read elsewhere: 'a2' is a graph output",
    ]


def test_declines_without_opset_20_or_a_target():
    model = model_from_text(TANH_GELU)
    result, ctx = run_fusion(model, "fuse-gelu", target=None)
    assert result.modified is False
    assert reasons(ctx, "fuse-gelu") == [
        "the model's opset 17 has no Gelu (20) and com.microsoft::FastGelu: no target is set, "
        "so com.microsoft::FastGelu is not known to run anywhere (give -t TARGET)"
    ]


def test_bias_gelu_declines_with_reasons():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 20]>
        g (float[N, 8] x) => (float[N, 8] y1, float[N, 8] y2, float[N, 8] h2)
        <float[N2] wrong = {1.0, 2.0}, float[8] bias = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0}>
        {
          h1 = Add(x, wrong)
          y1 = Gelu(h1)
          h2 = Add(x, bias)
          y2 = Gelu<approximate = "tanh">(h2)
        }
        """.replace("float[N2] wrong = {1.0, 2.0}", "float[2, 1] wrong = {1.0, 2.0}").replace(
            "float[N, 8] y1", "float[2, 8] y1"
        ).replace("float[N, 8] x", "float[2, 8] x")
    )
    before = fingerprint(model)
    result, ctx = run_fusion(model, "fuse-bias-gelu")
    assert result.modified is False and fingerprint(model) == before
    assert reasons(ctx, "fuse-bias-gelu") == [
        "the bias 'wrong' is not a vector along the last axis of 'x'",
        "the biased value cannot be removed: 'h2' is a graph output",
    ]


@st.composite
def gelu_graphs(draw: st.DrawFn) -> onnx.ModelProto:
    form = draw(st.sampled_from(["erf", "tanh"]))
    opset = draw(st.sampled_from([17, 20]))
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: float) -> str:
        inits.append(onnx.numpy_helper.from_array(np.array(value, np.float32), name))
        return name

    source = "x"
    if draw(st.booleans()):
        inits.append(onnx.numpy_helper.from_array(np.linspace(-1, 1, 8).astype(np.float32), "bias"))
        nodes.append(oh.make_node("Add", ["x", "bias"] if draw(st.booleans()) else ["bias", "x"], ["h"]))
        source = "h"
    if form == "erf":
        if draw(st.booleans()):
            nodes.append(oh.make_node("Div", [source, const("sqrt2", math.sqrt(2))], ["s"]))
        else:
            nodes.append(oh.make_node("Mul", [const("rsqrt2", 1 / math.sqrt(2)), source], ["s"]))
        nodes.append(oh.make_node("Erf", ["s"], ["f"]))
    else:
        if draw(st.booleans()):
            nodes.append(oh.make_node("Pow", [source, const("three", 3.0)], ["cube"]))
        else:
            nodes.append(oh.make_node("Mul", [source, source], ["sq"]))
            nodes.append(oh.make_node("Mul", [source, "sq"] if draw(st.booleans()) else ["sq", source], ["cube"]))
        nodes.append(oh.make_node("Mul", ["cube", const("c", 0.044715)], ["t1"]))
        nodes.append(oh.make_node("Add", [source, "t1"], ["inner"]))
        nodes.append(oh.make_node("Mul", [const("k", math.sqrt(2 / math.pi)), "inner"], ["arg"]))
        nodes.append(oh.make_node("Tanh", ["arg"], ["f"]))
    nodes.append(oh.make_node("Add", ["f", const("one", 1.0)], ["a"]))
    association = draw(st.sampled_from(["(x*a)*half", "(half*x)*a", "x*(a*half)", "(a*half)*x"]))
    if association == "(x*a)*half":
        nodes += [oh.make_node("Mul", [source, "a"], ["m"]), oh.make_node("Mul", ["m", const("half", 0.5)], ["y"])]
    elif association == "(half*x)*a":
        nodes += [oh.make_node("Mul", [const("half", 0.5), source], ["m"]), oh.make_node("Mul", ["m", "a"], ["y"])]
    elif association == "x*(a*half)":
        nodes += [oh.make_node("Mul", ["a", const("half", 0.5)], ["m"]), oh.make_node("Mul", [source, "m"], ["y"])]
    else:
        nodes += [oh.make_node("Mul", ["a", const("half", 0.5)], ["m"]), oh.make_node("Mul", ["m", source], ["y"])]
    graph = oh.make_graph(
        nodes, "g", [oh.make_tensor_value_info("x", FLOAT, ["N", 8])],
        [oh.make_tensor_value_info("y", FLOAT, ["N", 8])], initializer=inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=10)


@FUSION_PROPERTY_SETTINGS
@given(proto=gelu_graphs())
def test_property_random_gelu_forms(proto):
    result = check_fusion(proto, "fuse-gelu", dims={"N": 3})
    assert result.stats["fused"] == 1


@FUSION_PROPERTY_SETTINGS
@given(proto=gelu_graphs())
def test_property_bias_gelu_after_gelu(proto):
    import greencc as gc

    model = gc.load(proto)
    run_fusion(model, "fuse-gelu")
    fused = gc.ir.to_proto(model.ir)
    result = check_fusion(fused, "fuse-bias-gelu", dims={"N": 3})
    has_bias = any(t.name == "bias" for t in proto.graph.initializer)
    assert result.stats["fused"] == int(has_bias)
