"""The asic-int8 accelerator as data and its functional simulator: profile parsing and its
errors, the tiled GEMM and im2col conv bit-exact against plain integer arithmetic (odd
shapes, zero points, several tiles and accumulator chunks), ONNX quantization semantics,
and the counted cycles, MACs, bytes and energy. numpy only: no TVM needed."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from greencc.cost.profile import HardwareProfile
from greencc.errors import UsageError
from greencc.quant import quantize as onnx_quantize
from greencc.targets.asic.reference import integer_product
from greencc.targets.asic.sim import Epilogue, SystolicSimulator
from greencc.targets.asic.spec import SystolicArraySpec, derive_profile

BASE = HardwareProfile.named("asic-int8-systolic")


def small_spec(**changes) -> SystolicArraySpec:
    """A 16x8 array with tiny SRAMs, so that shapes of a few dozen need several tiles."""
    spec = SystolicArraySpec.from_profile(BASE)
    values = dict(rows=16, cols=8, weight_sram_bytes=4096, activation_sram_bytes=4096,
                  accumulator_sram_bytes=4 * 8 * 24, vector_lanes=8)
    values.update(changes)
    import dataclasses

    return dataclasses.replace(spec, **values)


def test_builtin_profile_describes_the_array_the_cost_model_prices():
    spec = SystolicArraySpec.from_profile(BASE)
    assert (spec.rows, spec.cols, spec.clock_hz) == (128, 128, 1e9)
    assert spec.peak_macs_per_s == BASE.peak_macs_per_s["int8"]
    assert spec.energy_pj_per_mac == BASE.energy_pj_per_mac["int8"]
    assert spec.static_power_w == BASE.static_power_w


def test_profile_errors_name_the_field():
    data = BASE.to_dict()
    del data["supports"]["systolic_array"]["clock_hz"]
    with pytest.raises(UsageError, match=r"systolic_array lacks \['clock_hz'\]"):
        SystolicArraySpec.from_profile(HardwareProfile.from_dict(data))
    data = BASE.to_dict()
    data["supports"]["systolic_array"]["rows"] = 64  # the roofline still says 128x128
    with pytest.raises(UsageError, match=r"peak_macs_per_s\['int8'\].*rows × cols × clock_hz"):
        SystolicArraySpec.from_profile(HardwareProfile.from_dict(data))
    data = BASE.to_dict()
    data["supports"]["systolic_array"]["energy_pj_per_byte"].pop("dram")
    with pytest.raises(UsageError, match="energy_pj_per_byte must give exactly the levels"):
        SystolicArraySpec.from_profile(HardwareProfile.from_dict(data))
    with pytest.raises(UsageError, match="describes no systolic array"):
        SystolicArraySpec.from_profile(HardwareProfile.named("x86-avx512"))


def test_derived_profile_agrees_with_its_array():
    variant = derive_profile(BASE, "tiny-npu", "a 32x32 variant", rows=32, cols=32, clock_hz=5e8,
                             energy_pj_per_mac=0.3)
    spec = SystolicArraySpec.from_profile(variant)  # would raise if the roofline disagreed
    assert variant.peak_macs_per_s["int8"] == 32 * 32 * 5e8
    assert variant.energy_pj_per_mac["int8"] == 0.3
    assert spec.rows == 32 and not variant.calibrated
    with pytest.raises(UsageError, match="derive_profile"):
        derive_profile(BASE, "bad", "", rowz=3)


@pytest.mark.parametrize("a_dtype,w_dtype", [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8)])
def test_tiled_gemm_is_bit_exact(a_dtype, w_dtype):
    rng = np.random.default_rng(0)
    m, k, n = 61, 37, 19  # 3 K tiles, 3 N tiles, 3 accumulator chunks: all ragged
    info_a, info_w = np.iinfo(a_dtype), np.iinfo(w_dtype)
    a = rng.integers(info_a.min, info_a.max + 1, (m, k)).astype(a_dtype)
    w = rng.integers(info_w.min, info_w.max + 1, (k, n)).astype(w_dtype)
    a_zp = np.asarray(rng.integers(info_a.min, info_a.max + 1), a_dtype)
    w_zp = rng.integers(info_w.min, info_w.max + 1, n).astype(w_dtype)  # per column
    sim = SystolicSimulator(small_spec())
    acc = sim.gemm(a, a_zp, w, w_zp, Epilogue(), node="g")
    expected = (a.astype(np.int64) - int(a_zp)) @ (w.astype(np.int64) - w_zp.astype(np.int64))
    assert acc.dtype == np.int32 and np.array_equal(acc, expected)


def test_float_and_requantized_epilogues_follow_the_qdq_definition():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (9, 20)).astype(np.uint8)
    w = rng.integers(-127, 128, (20, 5)).astype(np.int8)
    a_scale, w_scale = np.float32(0.02), rng.uniform(0.001, 0.01, 5).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    multiplier = (a_scale * w_scale).astype(np.float32)
    sim = SystolicSimulator(small_spec())
    y = sim.gemm(a, np.uint8(3), w, np.int8(0), Epilogue("float", multiplier, bias), node="f")
    expected = integer_product(a, np.asarray(a_scale), np.asarray(3, np.uint8), w, w_scale, None, bias)
    assert y.dtype == np.float32 and y.tobytes() == expected.tobytes()
    out_scale, out_zp = np.float32(0.05), np.asarray(7, np.uint8)
    q = sim.gemm(a, np.uint8(3), w, np.int8(0),
                 Epilogue("quant", multiplier, bias, relu=True, out_scale=out_scale, out_zero_point=out_zp), node="q")
    assert np.array_equal(q, onnx_quantize(np.maximum(expected, 0), out_scale, out_zp))


def test_im2col_conv_matches_a_direct_convolution():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (2, 3, 11, 9)).astype(np.uint8)
    w = rng.integers(-127, 128, (5, 3, 3, 2)).astype(np.int8)
    pads, strides, dilations = (1, 0, 2, 1), (2, 1), (2, 3)
    sim = SystolicSimulator(small_spec())
    acc = sim.conv2d(x, np.uint8(128), w, np.int8(0), Epilogue(), node="c", pads=pads, strides=strides,
                     dilations=dilations)
    ones = np.ones((), np.float32)
    expected = integer_product(x, ones, np.asarray(128, np.uint8), w, ones, None, None, conv=1,
                               pads=list(pads), strides=list(strides), dilations=list(dilations))
    assert acc.shape == expected.shape and np.array_equal(acc.astype(np.float32), expected)
    assert sim.calls[-1].kind == "conv" and sim.calls[-1].bytes["dram"] >= x.nbytes


def test_quantize_rounds_half_to_even_and_saturates_like_onnx():
    sim = SystolicSimulator(small_spec())
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -300.0, 3.4999], np.float32)
    q = sim.quantize(x, np.float32(1.0), np.asarray(0, np.int8), 1, node="q")
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128, 3]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    scale, zp = rng.uniform(0.01, 0.1, 6).astype(np.float32), rng.integers(0, 256, 6).astype(np.uint8)
    assert np.array_equal(sim.quantize(x, scale, zp, 1, node="q"), onnx_quantize(x, scale, zp, axis=1))


def test_dynamic_quantize_matches_onnx_reference():
    x = np.random.default_rng(4).normal(size=(3, 50)).astype(np.float32) * 3
    node = onnx.helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", 1, None)],
                                   [onnx.helper.make_value_info(n, onnx.TypeProto()) for n in "ysz"])
    expected = ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])).run(None, {"x": x})
    got = SystolicSimulator(small_spec()).dynamic_quantize(x, node="d")
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and g.tobytes() == np.asarray(e).tobytes()


def test_counters_follow_the_stated_timing_model():
    spec = small_spec()
    sim = SystolicSimulator(spec)
    m, k, n = 10, 16, 8  # one tile, one chunk
    sim.gemm(np.zeros((m, k), np.uint8), np.uint8(0), np.zeros((k, n), np.int8), np.int8(0), Epilogue(), node="one")
    call = sim.calls[0]
    assert call.macs == m * k * n
    array = k + max(m, k) + k + n - 1  # first weight load + stream (or next load) + fill/drain
    assert call.cycles == max(array + math.ceil(m * n / spec.vector_lanes),
                              math.ceil(call.bytes["dram"] / spec.dram_bandwidth_bytes_per_s * spec.clock_hz))
    assert call.bytes["dram"] == k * n + m * k + m * n * 4 + 8 * n
    summary = sim.summary()
    expected_pj = call.macs * spec.energy_pj_per_mac + sum(
        call.bytes[level] * spec.energy_pj_per_byte[level] for level in call.bytes)
    assert summary.dynamic_mj == pytest.approx(expected_pj * 1e-9)
    assert summary.static_mj == pytest.approx(spec.static_power_w * summary.cycles / spec.clock_hz * 1e3)
    assert summary.simulated_ms == pytest.approx(summary.cycles / spec.clock_hz * 1e3)


def test_data_larger_than_sram_is_fetched_again():
    big = (np.zeros((64, 80), np.uint8), np.zeros((80, 40), np.int8))  # 5 KiB of activations
    roomy = SystolicSimulator(small_spec(activation_sram_bytes=1 << 20, weight_sram_bytes=1 << 20))
    tight = SystolicSimulator(small_spec(activation_sram_bytes=1024, weight_sram_bytes=1024))
    for sim in (roomy, tight):
        sim.gemm(big[0], np.uint8(0), big[1], np.int8(0), Epilogue(), node="g")
    assert tight.calls[0].bytes["dram"] > roomy.calls[0].bytes["dram"]
    assert tight.summary().energy_mj > roomy.summary().energy_mj
