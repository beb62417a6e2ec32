"""The cost estimate: hand-computed MACs and bytes, roofline term choice, energy formula,
memory levels, profiles, and the MiniLM analytic MAC count."""

import json
import math

import pytest

import greencc as gc
from greencc.cost import HardwareProfile, estimate_cost
from greencc.errors import UsageError
from tests.helpers import model_from_text


def _one_node(text_body, inputs, outputs, inits=""):
    return model_from_text(f"""<ir_version: 10, opset_import: ["" : 17]>
g ({inputs}) => ({outputs}) {inits} {{ {text_body} }}""")


@pytest.fixture(scope="module")
def x86():
    return HardwareProfile.named("x86-avx512")


def test_batched_matmul_broadcast_macs_and_bytes(x86):
    m = _one_node("y = MatMul(a, b)", "float[3, 1, 4, 8] a, float[5, 8, 6] b", "float[3, 5, 4, 6] y")
    cost = estimate_cost(m, x86)
    assert cost.macs_by_dtype == {"float32": 3 * 5 * 4 * 8 * 6}
    assert cost.bytes_read == 4 * (3 * 4 * 8 + 5 * 8 * 6)
    assert cost.bytes_written == 4 * (3 * 5 * 4 * 6)


def test_gemm_trans_b_and_conv_grouped_strided(x86):
    gemm = _one_node("y = Gemm<transB: int = 1>(a, w)", "float[2, 16] a, float[10, 16] w", "float[2, 10] y")
    assert estimate_cost(gemm, x86).total_macs == 2 * 16 * 10
    conv = _one_node("y = Conv<group: int = 2, strides: ints = [2, 2], pads: ints = [1, 1, 1, 1]>(x, w)",
                     "float[1, 4, 9, 9] x, float[6, 2, 3, 3] w", "float[1, 6, 5, 5] y")
    # N * Cout * Hout * Wout * (Cin/groups) * kh * kw
    assert estimate_cost(conv, x86).total_macs == 1 * 6 * 5 * 5 * 2 * 3 * 3
    depthwise = _one_node("y = Conv<group: int = 4>(x, w)", "float[1, 4, 8, 8] x, float[4, 1, 3, 3] w",
                          "float[1, 4, 6, 6] y")
    assert estimate_cost(depthwise, x86).total_macs == 4 * 6 * 6 * 9


def test_symbolic_dims_bound_and_default_to_one(x86):
    m = _one_node("y = MatMul(a, b)", "float[batch, 4, 8] a, float[8, 2] b", "float[batch, 4, 2] y")
    assert estimate_cost(m, x86).total_macs == 4 * 8 * 2
    assert estimate_cost(m, x86, dims={"batch": 3}).total_macs == 3 * 4 * 8 * 2
    assert estimate_cost(m, x86).dims == {"batch": 1}


def _profile(**overrides):
    base = HardwareProfile.named("x86-avx512").to_dict()
    base.pop("units")
    base.update(overrides)
    return HardwareProfile.from_dict(base)


def test_roofline_picks_compute_or_memory_and_energy_formula():
    level = {"name": "DRAM", "capacity_bytes": 1 << 40, "bandwidth_bytes_per_s": 1e9, "energy_pj_per_byte": 10.0}
    p = _profile(peak_macs_per_s={"float32": 1e9}, energy_pj_per_mac={"float32": 2.0},
                 memory_levels=[level], static_power_w=1.0, op_overhead_s=0.0)
    # compute-bound: 64x64x64 matmul = 262144 MACs -> 0.262 ms; bytes 3*16 KiB -> 0.049 ms
    mm = _one_node("y = MatMul(a, b)", "float[64, 64] a, float[64, 64] b", "float[64, 64] y")
    c = estimate_cost(mm, p)
    assert c.latency_ms == pytest.approx(64**3 / 1e9 * 1e3)
    dynamic_pj = 64**3 * 2.0 + 3 * 64 * 64 * 4 * 10.0
    assert c.dynamic_energy_mj == pytest.approx(dynamic_pj * 1e-9)
    assert c.static_energy_mj == pytest.approx(1.0 * c.latency_ms)
    assert c.energy_mj == pytest.approx(c.dynamic_energy_mj + c.static_energy_mj)
    # memory-bound: Relu on 1M floats: 8 MB moved -> 8 ms; 1M flops -> 1 ms
    relu = _one_node("y = Relu(x)", "float[1024, 1024] x", "float[1024, 1024] y")
    r = estimate_cost(relu, p)
    assert r.latency_ms == pytest.approx(2 * 4 * 1024 * 1024 / 1e9 * 1e3)


def test_memory_level_by_size_and_weights_by_working_set(x86):
    levels = x86.memory_levels
    assert x86.memory_level_for(1024).name == levels[0].name
    assert x86.memory_level_for(levels[0].capacity_bytes + 1).name == levels[1].name
    assert x86.memory_level_for(1 << 50).name == levels[-1].name


def test_shape_ops_are_free_and_unknown_ops_listed(x86):
    m = model_from_text("""<ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
g (float[2, 3] x) => (int64[2] s, float[2, 3] y) { s = Shape(x)
 y = com.example.Frobnicate(x) }""")
    cost = estimate_cost(m, x86)
    assert cost.total_macs == 0
    assert cost.unknown_ops == ["com.example::Frobnicate"]
    shape, unknown = cost.nodes
    assert shape.latency_ms == 0 and shape.energy_mj == 0
    # An unknown op still runs: its known input bytes and its dispatch are charged.
    assert unknown.macs == 0 and unknown.bytes_read == 2 * 3 * 4
    assert unknown.latency_ms > x86.op_overhead_s * 1e3


def test_estimate_does_not_modify_model(x86):
    m = _one_node("y = MatMul(a, b)", "float[batch, 4, 8] a, float[8, 2] b", "float[batch, 4, 2] y")
    before = str(m.graph)
    estimate_cost(m, x86, dims={"batch": 5})
    assert str(m.graph) == before


def test_profiles_load_round_trip_and_are_labelled_uncalibrated():
    names = HardwareProfile.available_profiles()
    assert {"x86-avx512", "arm-cortex-a76", "nvidia-h100", "asic-int8-systolic"} <= set(names)
    for name in names:
        p = HardwareProfile.named(name)
        d = p.to_dict()
        d.pop("units")
        assert HardwareProfile.from_dict(d) == p
        assert p.calibrated is False and "never checked" in p.calibration_note
        assert p.sources, name
    assert HardwareProfile.named("nvidia-h100").supports["sparsity_2_4"] is True
    assert HardwareProfile.named("asic-int8-systolic").supports["zero_skipping"] is True


@pytest.mark.parametrize("change,fragment", [
    ({"peak_macs_per_s": {"float32": -1.0}}, "positive"),
    ({"peak_macs_per_s": {"fp32": 1.0}}, "unknown dtype class"),
    ({"bogus": 1}, "unknown field"),
    ({"static_power_w": "hot"}, "static_power_w"),
])
def test_bad_profiles_are_usage_errors(tmp_path, change, fragment):
    data = HardwareProfile.named("x86-avx512").to_dict()
    data.update(change)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError) as info:
        HardwareProfile.from_json(path)
    assert fragment in str(info.value)
    with pytest.raises(UsageError, match="unknown hardware profile"):
        HardwareProfile.named("no-such-profile")


def test_int8_costs_less_energy_than_float_for_same_work(x86):
    fp = _one_node("y = MatMul(a, b)", "float[64, 64] a, float[64, 64] b", "float[64, 64] y")
    i8 = _one_node("y = MatMulInteger(a, b)", "uint8[64, 64] a, int8[64, 64] b", "int32[64, 64] y")
    assert estimate_cost(i8, x86).macs_by_dtype == {"int8": 64**3}
    assert estimate_cost(i8, x86).energy_mj < estimate_cost(fp, x86).energy_mj


@pytest.mark.slow
def test_minilm_macs_match_analytic_count():
    from tests.models import minilm_model

    model = minilm_model("dynamo")
    info = gc.inspect(model, "x86-avx512")
    linear = 6 * (4 * 384**2 + 2 * 384 * 1536) * 128
    attention = 6 * 2 * 128**2 * 384
    expected = linear + attention
    assert expected == pytest.approx(1.434e9, rel=1e-3)
    assert info["cost"]["total_macs"] == pytest.approx(expected, rel=0.02)
    assert info["cost"]["energy_mj"] > 0 and not math.isnan(info["cost"]["latency_ms"])
