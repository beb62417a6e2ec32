"""fuse-layernorm: the primitive mean/variance form (and its variants) becomes the opset-17
LayerNormalization, exactly; declines say which condition failed."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import model_from_text, random_feeds, run_ort
from tests.passes.strategies import canonical, fingerprint
from tests.passes.test_fuse_support import (
    FUSION_PROPERTY_SETTINGS,
    assert_close,
    check_fusion,
    reasons,
    run_fusion,
)

FLOAT = onnx.TensorProto.FLOAT

BEFORE = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 3, 4] x) => (float[N, 3, 4] y)
<float two = {2.0}, float eps = {1e-5}, float[4] gamma = {1.0, 2.0, 0.5, -1.0}, float[4] beta = {0.1, 0.2, 0.3, 0.4}>
{
  mean = ReduceMean<axes = [-1]>(x)
  d = Sub(x, mean)
  sq = Pow(d, two)
  var = ReduceMean<axes = [-1]>(sq)
  ve = Add(var, eps)
  std = Sqrt(ve)
  n = Div(d, std)
  scaled = Mul(n, gamma)
  y = Add(scaled, beta)
}
"""

EXPECTED = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 3, 4] x) => (float[N, 3, 4] y)
<float two = {2.0}, float eps = {1e-5}, float[4] gamma = {1.0, 2.0, 0.5, -1.0}, float[4] beta = {0.1, 0.2, 0.3, 0.4}>
{
  y = LayerNormalization<axis = -1, epsilon = 1e-5>(x, gamma, beta)
}
"""


def test_golden_primitive_layernorm_becomes_the_op():
    model = model_from_text(BEFORE)
    result, _ = run_fusion(model, "fuse-layernorm", dims={"N": 2})
    # Written once, read once: mean, var, var+ε, std (2·3·1 floats), d², n, n·γ (2·3·4);
    # d is read twice (Pow and Div).
    small, big = 2 * 3 * 1 * 4, 2 * 3 * 4 * 4
    assert result.stats == {"fused": 1, "activation_bytes_removed": 4 * small * 2 + 3 * big * 2 + big * 3}
    assert canonical(model) == canonical(model_from_text(EXPECTED))


def test_matches_ort_and_is_idempotent():
    model = model_from_text(BEFORE)
    feeds = random_feeds(model, seed=3, dims={"N": 5})
    expected = run_ort(model, feeds)
    run_fusion(model, "fuse-layernorm")
    assert_close(expected, run_ort(model, feeds))
    before = fingerprint(model)
    again, _ = run_fusion(model, "fuse-layernorm")
    assert again.modified is False and fingerprint(model) == before


def test_declines_with_reasons():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 3, 4] x) => (float[N, 3, 4] y1, float[N, 3, 4] y2, float[N, 3, 4] d2)
        <float two = {2.0}, float eps = {1e-5}>
        {
          m1 = ReduceMean<axes = [-1]>(x)
          d1 = Sub(x, m1)
          s1 = Pow(d1, two)
          v1 = ReduceMean<axes = [-2]>(s1)
          e1 = Add(v1, eps)
          r1 = Sqrt(e1)
          y1 = Div(d1, r1)
          m2 = ReduceMean<axes = [-1]>(x)
          d2 = Sub(x, m2)
          s2 = Mul(d2, d2)
          v2 = ReduceMean<axes = [-1]>(s2)
          e2 = Add(eps, v2)
          r2 = Sqrt(e2)
          y2 = Div(d2, r2)
        }
        """
    )
    before = fingerprint(model)
    result, ctx = run_fusion(model, "fuse-layernorm")
    assert result.modified is False and fingerprint(model) == before
    assert reasons(ctx, "fuse-layernorm") == [
        "the means reduce axes [-1] and [-2], not the same trailing axes (rank 3)",
        "an intermediate cannot be removed: 'd2' is a graph output",
    ]


def test_declines_below_opset_17():
    model = model_from_text(BEFORE.replace('"" : 17', '"" : 13'))
    result, ctx = run_fusion(model, "fuse-layernorm")
    assert result.modified is False
    assert reasons(ctx, "fuse-layernorm") == [
        "LayerNormalization needs opset 17; the model imports opset 13"
    ]


@st.composite
def layernorm_graphs(draw: st.DrawFn) -> onnx.ModelProto:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    opset = draw(st.sampled_from([17, 18]))
    axes_count = draw(st.sampled_from([1, 1, 2]))
    shape = ["N", 3, 4]
    axes = list(range(-axes_count, 0))
    inits = [onnx.numpy_helper.from_array(np.array(draw(st.sampled_from([1e-5, 1e-12, 0.1])), np.float32), "eps")]
    nodes = []

    def reduce(src: str, out: str) -> None:
        if opset >= 18:
            nodes.append(oh.make_node("ReduceMean", [src, "axes"], [out]))
        else:
            nodes.append(oh.make_node("ReduceMean", [src], [out], axes=axes))

    if opset >= 18:
        inits.append(onnx.numpy_helper.from_array(np.array(axes, np.int64), "axes"))
    reduce("x", "mean")
    nodes.append(oh.make_node("Sub", ["x", "mean"], ["d"]))
    if draw(st.booleans()):
        inits.append(onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two"))
        nodes.append(oh.make_node("Pow", ["d", "two"], ["sq"]))
    else:
        nodes.append(oh.make_node("Mul", ["d", "d"], ["sq"]))
    reduce("sq", "var")
    nodes.append(oh.make_node("Add", ["var", "eps"] if draw(st.booleans()) else ["eps", "var"], ["ve"]))
    if draw(st.booleans()):
        nodes.append(oh.make_node("Sqrt", ["ve"], ["std"]))
    else:
        inits.append(onnx.numpy_helper.from_array(np.array(0.5, np.float32), "half"))
        nodes.append(oh.make_node("Pow", ["ve", "half"], ["std"]))
    if draw(st.booleans()):
        nodes.append(oh.make_node("Div", ["d", "std"], ["n"]))
    else:
        nodes.append(oh.make_node("Reciprocal", ["std"], ["inv"]))
        nodes.append(oh.make_node("Mul", ["inv", "d"] if draw(st.booleans()) else ["d", "inv"], ["n"]))
    current = "n"
    normalized = shape[len(shape) - axes_count :]
    for op, name in (("Mul", "gamma"), ("Add", "beta")):
        if not draw(st.booleans()):
            continue
        param_shape = draw(st.sampled_from([tuple(normalized), (1,) * 1 + tuple(normalized), (1,)]))
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal(param_shape).astype(np.float32), name))
        nodes.append(oh.make_node(op, [current, name] if draw(st.booleans()) else [name, current], [f"{name}_out"]))
        current = f"{name}_out"
    nodes.append(oh.make_node("Identity", [current], ["y"]))
    graph = oh.make_graph(
        nodes, "g", [oh.make_tensor_value_info("x", FLOAT, shape)],
        [oh.make_tensor_value_info("y", FLOAT, shape)], initializer=inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=10)


@FUSION_PROPERTY_SETTINGS
@given(proto=layernorm_graphs())
def test_property_random_layernorm_variants(proto):
    result = check_fusion(proto, "fuse-layernorm", dims={"N": 3})
    assert result.stats["fused"] == 1
