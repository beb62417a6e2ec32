"""ONNX's own expansions of LayerNormalization, Gelu and RMSNormalization (the function
bodies its backend suite runs as ``test_*_expanded``) fuse back into the one op at -O2,
giving the test's expected outputs within its tolerances; below the op's opset or where
the semantics differ, the fusions decline and say why."""

from __future__ import annotations

import onnx
import pytest

import greencc as gc
from tests.conformance.runner import feeds_of, mismatch
from tests.conformance.suite import find_case
from tests.helpers import model_from_text, random_feeds, run_ort
from tests.passes.strategies import fingerprint
from tests.passes.test_fuse_support import assert_close, ops, reasons, run_fusion

CASES = {
    "test_gelu_default_2_expanded": "Gelu",
    "test_gelu_tanh_2_expanded": "Gelu",
    "test_layer_normalization_2d_axis0_expanded": "LayerNormalization",
    "test_layer_normalization_2d_axis1_expanded": "LayerNormalization",
    "test_layer_normalization_3d_axis1_epsilon_expanded": "LayerNormalization",
    "test_layer_normalization_4d_axis_negative_3_expanded": "LayerNormalization",
    "test_layer_normalization_default_axis_expanded": "LayerNormalization",
    "test_rms_normalization_2d_axis0_expanded": "RMSNormalization",
    "test_rms_normalization_3d_axis1_epsilon_expanded": "RMSNormalization",
    "test_rms_normalization_4d_axis_negative_2_expanded": "RMSNormalization",
    "test_rms_normalization_default_axis_expanded": "RMSNormalization",
}


def _with_opset(proto: onnx.ModelProto, version: int) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for opset in copy.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = version
    return copy


def _check_outputs(case_name: str, model: gc.Model) -> None:
    """The fused model gives the test's expected outputs within the test's tolerances,
    and ONNX Runtime's outputs for the expanded model up to float32 rounding."""
    case = find_case(case_name)
    for data_set in case.data_sets:
        feeds = feeds_of(case.model, data_set)
        got = run_ort(model, feeds)
        assert mismatch(data_set.outputs, got, case.rtol, case.atol) is None
        assert_close(run_ort(case.model, feeds), got)


@pytest.mark.parametrize("name", sorted(CASES))
def test_expanded_case_fuses_to_the_op(name):
    case = find_case(name)
    model, _ = gc.optimize(case.model, "-O2", verify=False)
    assert ops(model) == [CASES[name]]
    fused = next(iter(model.graph))
    if CASES[name] == "Gelu":
        expected = "tanh" if "tanh" in name else "none"
        assert fused.attributes["approximate"].as_string() == expected
    else:
        assert [v.name for v in fused.inputs] == ["X", "W", "B"][: len(fused.inputs)]
        assert [v.name for v in fused.outputs if v.name in {o.name for o in case.model.graph.output}] == [
            o.name for o in case.model.graph.output
        ]
    _check_outputs(name, model)


def test_layernorm_axis_and_epsilon_come_from_the_expansion():
    model, _ = gc.optimize(find_case("test_layer_normalization_3d_axis1_epsilon_expanded").model, "-O2", verify=False)
    fused = next(iter(model.graph))
    assert fused.attributes["axis"].as_int() == -2  # axis 1 of a rank-3 input
    assert fused.attributes["epsilon"].as_float() == pytest.approx(0.1)
    assert len(fused.outputs) == 3  # Y, Mean, InvStdDev


def test_rmsnorm_below_opset_23_becomes_simplified_layernorm():
    name = "test_rms_normalization_3d_axis1_epsilon_expanded"
    model, _ = gc.optimize(_with_opset(find_case(name).model, 22), "-O2", verify=False)
    assert ops(model) == ["SimplifiedLayerNormalization"]
    fused = next(iter(model.graph))
    assert fused.attributes["axis"].as_int() == -2
    assert [v.name for v in fused.inputs] == ["X", "W"]
    _check_outputs(name, model)


def test_gelu_below_opset_20_becomes_the_target_contrib_op():
    name = "test_gelu_tanh_2_expanded"
    proto = _with_opset(find_case(name).model, 19)
    model, _ = gc.optimize(proto, "-O2", verify=False)
    assert ops(model) == ["ms::FastGelu"]
    _check_outputs(name, model)
    cleaned, _ = gc.optimize(proto, "cleanup", verify=False)
    result, ctx = run_fusion(cleaned, "fuse-gelu", target=None)
    assert result.modified is False
    assert reasons(ctx, "fuse-gelu") == [
        "the model's opset 19 has no Gelu (20) and com.microsoft::FastGelu: no target is set, "
        "so com.microsoft::FastGelu is not known to run anywhere (give -t TARGET)"
    ]


def test_layernorm_expansion_declines_below_opset_17():
    proto = _with_opset(find_case("test_layer_normalization_4d_axis1_expanded").model, 16)
    cleaned, _ = gc.optimize(proto, "cleanup", verify=False)
    result, ctx = run_fusion(cleaned, "fuse-layernorm")
    assert result.modified is False
    assert reasons(ctx, "fuse-layernorm") == ["LayerNormalization needs opset 17; the model imports opset 16"]


# ONNX's expansion with the mean read by something other than the Reshape to the op's
# Mean shape: the op's Mean output cannot stand in for it.
FLATTENED_MEAN_READ = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 3, 5] x, float[3, 5] w) => (float[2, 3, 5] y, float[2, 1] twice)
<float eps = {1e-5}, int64[3] shape = {2, 3, 5}, float two = {2.0}>
{
  x2 = Flatten<axis = 1>(x)
  mean = ReduceMean<axes = [1]>(x2)
  sq = Mul(x2, x2)
  msq = ReduceMean<axes = [1]>(sq)
  mm = Mul(mean, mean)
  var = Sub(msq, mm)
  ve = Add(var, eps)
  std = Sqrt(ve)
  d = Sub(x2, mean)
  n = Div(d, std)
  w2 = Flatten<axis = 0>(w)
  scaled = Mul(n, w2)
  y = Reshape(scaled, shape)
  twice = Mul(mean, two)
}
"""


def test_flattened_layernorm_declines_when_the_mean_is_read_otherwise():
    model = model_from_text(FLATTENED_MEAN_READ)
    before = fingerprint(model)
    result, ctx = run_fusion(model, "fuse-layernorm")
    assert result.modified is False and fingerprint(model) == before
    (reason,) = reasons(ctx, "fuse-layernorm")
    assert reason.startswith("'mean' is read by") and reason.endswith("not reshaped to the op's reduced shape")


def test_flattened_layernorm_with_a_reshaped_mean_fuses_and_matches_ort():
    text = FLATTENED_MEAN_READ.replace("float[2, 1] twice", "float[2, 1, 1] m").replace(
        "twice = Mul(mean, two)", "m = Reshape(mean, reduced)"
    ).replace("float two = {2.0}", "int64[3] reduced = {2, 1, 1}")
    model = model_from_text(text)
    feeds = random_feeds(model, seed=5)
    expected = run_ort(model, feeds)
    result, _ = run_fusion(model, "fuse-layernorm")
    assert result.stats["fused"] == 1
    assert ops(model) == ["LayerNormalization"]
    fused = next(iter(model.graph))
    assert [v.name for v in fused.inputs] == ["x", "w"] and fused.attributes["axis"].as_int() == -2
    assert_close(expected, run_ort(model, feeds))
    again, _ = run_fusion(model, "fuse-layernorm")
    assert again.modified is False


def test_plain_layernorm_mean_read_elsewhere_comes_from_the_mean_output():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 3, 4] x) => (float[N, 3, 4] y, float[N, 3, 1] centre, float[N, 3, 1] inv)
        <float two = {2.0}, float eps = {1e-5}, float[4] gamma = {1.0, 2.0, 0.5, -1.0}>
        {
          mean = ReduceMean<axes = [-1]>(x)
          d = Sub(x, mean)
          sq = Pow(d, two)
          var = ReduceMean<axes = [-1]>(sq)
          ve = Add(var, eps)
          std = Sqrt(ve)
          n = Div(d, std)
          y = Mul(n, gamma)
          centre = Neg(mean)
          inv = Reciprocal(std)
        }
        """
    )
    feeds = random_feeds(model, seed=2, dims={"N": 3})
    expected = run_ort(model, feeds)
    result, _ = run_fusion(model, "fuse-layernorm")
    assert result.stats["fused"] == 1
    assert ops(model) == ["LayerNormalization", "Neg"]
    assert_close(expected, run_ort(model, feeds))


def test_rmsnorm_declines_a_product_with_the_root():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 23]>
        g (float[2, 3, 5] x, float[3, 5] w) => (float[2, 3, 5] y)
        <float eps = {0.1}, int64[2] axes = {1, 2}>
        {
          sq = Mul(x, x)
          ms = ReduceMean(sq, axes)
          mse = Add(ms, eps)
          rms = Sqrt(mse)
          n = Mul(x, rms)
          y = Mul(n, w)
        }
        """
    )
    before = fingerprint(model)
    result, ctx = run_fusion(model, "fuse-rmsnorm")
    assert result.modified is False and fingerprint(model) == before
    (reason,) = reasons(ctx, "fuse-rmsnorm")
    assert reason.endswith("multiplies x by the root mean square instead of dividing by it")


def test_gelu_declines_a_sum_of_three():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 20]>
        g (float[3, 4] x) => (float[3, 4] y)
        <float half = {0.5}, float one = {1.0}, float two = {2.0}>
        {
          root = Sqrt(two)
          s = Div(x, root)
          e = Erf(s)
          phi = Sum(one, e, one)
          hx = Mul(half, x)
          y = Mul(hx, phi)
        }
        """
    )
    before = fingerprint(model)
    result, _ = run_fusion(model, "fuse-gelu")
    assert result.modified is False and fingerprint(model) == before
