"""fuse-rmsnorm and fuse-skip-rmsnorm: x·(1/√(mean(x²)+ε))·γ in the forms exporters and
ONNX's RMSNormalization expansion write becomes SimplifiedLayerNormalization (RMSNormalization
at opset 23), and with the residual Add before it SkipSimplifiedLayerNormalization."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import greencc as gc
from tests.helpers import model_from_text, random_feeds, run_ort
from tests.passes.strategies import fingerprint
from tests.passes.test_fuse_support import assert_close, ops, reasons, run_fusion

VEC = "{0.5, -1.5, 2.0, 0.25, 1.0, -0.75, 1.25, 0.9}"
HEAD = '<ir_version: 10, opset_import: ["" : 18]>'

LLAMA = f"""{HEAD}
g (float[N, 4, 8] x) => (float[N, 4, 8] y)
<float[8] gamma = {VEC}, float two = {{2.0}}, int64[1] last = {{-1}}, float eps = {{1e-6}}>
{{
  sq = Pow(x, two)
  mean = ReduceMean<keepdims = 1>(sq, last)
  var = Add(mean, eps)
  root = Sqrt(var)
  inv = Reciprocal(root)
  normed = Mul(x, inv)
  y = Mul(gamma, normed)
}}
"""

# ONNX's own RMSNormalization body writes the square as Mul(x, x) and the inverse as Div(1, ·);
# Gemma's (1 + w) arrives folded into γ; no γ at all means a unit scale.
VARIANTS = {
    "mul-square-div": f"""{HEAD}
g (float[N, 4, 8] x) => (float[N, 4, 8] y)
<float[8] gamma = {VEC}, int64[1] last = {{-1}}, float eps = {{1e-5}}, float one = {{1.0}}>
{{
  sq = Mul(x, x)
  mean = ReduceMean<keepdims = 1>(sq, last)
  var = Add(eps, mean)
  root = Sqrt(var)
  inv = Div(one, root)
  normed = Mul(inv, x)
  y = Mul(normed, gamma)
}}
""",
    "pow-minus-half-no-gamma": f"""{HEAD}
g (float[N, 4, 8] x) => (float[N, 4, 8] y)
<float two = {{2.0}}, int64[1] last = {{2}}, float eps = {{1e-5}}, float half = {{-0.5}}>
{{
  sq = Pow(x, two)
  mean = ReduceMean<keepdims = 1>(sq, last)
  var = Add(mean, eps)
  inv = Pow(var, half)
  y = Mul(x, inv)
}}
""",
}


def test_golden_llama_form_becomes_one_simplified_layernorm():
    model = model_from_text(LLAMA)
    result, ctx = run_fusion(model, "fuse-rmsnorm", dims={"N": 1})
    assert result.stats["fused"] == 1 and result.stats["activation_bytes_removed"] > 0
    assert ops(model) == ["SimplifiedLayerNormalization"]
    (fused,) = list(model.graph)
    assert fused.inputs[0].name == "x" and fused.outputs[0].name == "y"
    np.testing.assert_array_equal(fused.inputs[1].const_value.numpy(),
                                  np.array([0.5, -1.5, 2.0, 0.25, 1.0, -0.75, 1.25, 0.9], np.float32))
    assert fused.attributes["epsilon"].as_float() == pytest.approx(1e-6)
    assert fused.attributes["axis"].as_int() == -1
    assert ctx.near_misses == []


@pytest.mark.parametrize("form", sorted(VARIANTS))
def test_variants_fuse_and_match_ort(form):
    model = model_from_text(VARIANTS[form])
    feeds = random_feeds(model, seed=4, dims={"N": 2})
    expected = run_ort(model, feeds)
    result, _ = run_fusion(model, "fuse-rmsnorm")
    assert result.stats["fused"] == 1
    assert ops(model) == ["SimplifiedLayerNormalization"]
    assert_close(expected, run_ort(model, feeds))


def test_opset_23_gets_the_standard_rmsnormalization():
    model = model_from_text(LLAMA.replace('"" : 18', '"" : 23'))
    feeds = random_feeds(model, seed=5, dims={"N": 2})
    expected = run_ort(model, feeds)
    run_fusion(model, "fuse-rmsnorm", target=None)  # a standard op needs no target support
    assert ops(model) == ["RMSNormalization"]
    assert_close(expected, run_ort(model, feeds))


def test_matches_ort_and_is_idempotent():
    model = model_from_text(LLAMA)
    feeds = random_feeds(model, seed=2, dims={"N": 3})
    expected = run_ort(model, feeds)
    run_fusion(model, "fuse-rmsnorm")
    assert_close(expected, run_ort(model, feeds))
    before = fingerprint(model)
    again, _ = run_fusion(model, "fuse-rmsnorm")
    assert again.modified is False and fingerprint(model) == before


def test_declines_with_reasons():
    wrong_axis = LLAMA.replace("int64[1] last = {-1}", "int64[1] last = {1}")
    cube = LLAMA.replace("float two = {2.0}", "float two = {3.0}")
    shared = LLAMA.replace("=> (float[N, 4, 8] y)", "=> (float[N, 4, 8] y, float[N, 4, 1] mean)")
    cases = {
        wrong_axis: "does not average over the last axis only (keeping it)",
        cube: "raises to 3.0, not 2",
        shared: "'mean' is a graph output",
    }
    for text, reason in cases.items():
        model = model_from_text(text)
        before = fingerprint(model)
        result, ctx = run_fusion(model, "fuse-rmsnorm")
        assert result.modified is False and fingerprint(model) == before
        (found,) = reasons(ctx, "fuse-rmsnorm")
        assert reason in found


def test_declines_without_a_target_that_runs_it():
    model = model_from_text(LLAMA)
    result, ctx = run_fusion(model, "fuse-rmsnorm", target=None)
    assert result.modified is False
    assert reasons(ctx, "fuse-rmsnorm") == [
        "no target is set, so ai.onnx::SimplifiedLayerNormalization is not known to run anywhere (give -t TARGET)"
    ]


RESIDUAL = f"""{HEAD}
g (float[N, 4, 8] x, float[N, 4, 8] r) => (float[N, 4, 8] y, float[N, 4, 8] z)
<float[8] gamma = {VEC}>
{{
  s = Add(x, r)
  y = SimplifiedLayerNormalization<axis = -1, epsilon = 1e-6>(s, gamma)
  z = Relu(s)
}}
"""


def test_skip_golden_keeps_the_residual_sum_for_its_other_reader():
    model = model_from_text(RESIDUAL)
    feeds = random_feeds(model, seed=3, dims={"N": 2})
    expected = run_ort(model, feeds)
    result, ctx = run_fusion(model, "fuse-skip-rmsnorm", dims={"N": 1})
    assert result.stats == {"fused": 1, "activation_bytes_removed": 0}  # s is still written (Relu reads it)
    assert ops(model) == ["ms::SkipSimplifiedLayerNormalization", "Relu"]
    fused, relu = list(model.graph)
    assert [v.name for v in fused.inputs] == ["x", "r", "gamma"]
    assert fused.attributes["epsilon"].as_float() == pytest.approx(1e-6)
    assert relu.inputs[0] is fused.outputs[3]
    # The mean and inverse-deviation outputs stay unnamed, so onnxruntime does not compute
    # them (named, they made its kernel ~25% slower on a 30-layer decoder's decode step).
    assert [v.name for v in fused.outputs[1:3]] == ["", ""]
    assert [o for o in gc.ir.to_proto(model.ir).graph.node[0].output] == [fused.outputs[0].name, "", "", fused.outputs[3].name]
    assert_close(expected, run_ort(model, feeds))
    before = fingerprint(model)
    again, _ = run_fusion(model, "fuse-skip-rmsnorm")
    assert again.modified is False and fingerprint(model) == before


def test_skip_declines_when_the_residual_sum_is_a_graph_output():
    model = model_from_text(RESIDUAL.replace("z = Relu(s)", "z = Identity(s)").replace(
        "=> (float[N, 4, 8] y, float[N, 4, 8] z)", "=> (float[N, 4, 8] y, float[N, 4, 8] s)").replace(
        "  z = Identity(s)\n", ""))
    result, ctx = run_fusion(model, "fuse-skip-rmsnorm")
    assert result.modified is False
    assert reasons(ctx, "fuse-skip-rmsnorm") == ["the residual sum 's' is a graph output"]


def test_the_checker_accepts_onnxruntimes_onnx_domain_op():
    model = model_from_text(LLAMA)
    run_fusion(model, "fuse-rmsnorm")
    gc.ir.check_model(model.ir)  # SimplifiedLayerNormalization is onnxruntime's, not ONNX's
    assert onnx.defs.has("SimplifiedLayerNormalization") is False
