"""Range observers against hand-computed and numpy-computed ranges; quantization parameters
against hand-computed scales and zero points and against ONNX Runtime's QuantizeLinear."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest

from greencc.errors import UsageError
from greencc.quant import (
    EntropyObserver,
    MinMaxObserver,
    MseObserver,
    PercentileObserver,
    TensorRange,
    dequantize,
    fake_quantize,
    make_observer,
    quant_params,
    quantize,
    weight_range,
)
from greencc.quant.observers import _HalfHistogram, _kl_candidate, kl_threshold

FLOAT32_LOWEST = np.finfo(np.float32).min


def _stream(observer, x, pieces=7):
    for part in np.array_split(x, pieces):
        observer.update(part)
    return observer.range()


def _one_shot(observer, x):
    observer.update(x)
    return observer.range()


def _quant_mse(x, r, dtype="int8", symmetric=False):
    scale, zero = quant_params(r, dtype, symmetric)
    return float(np.mean((fake_quantize(x, scale, zero) - x) ** 2))


# -- MinMax ------------------------------------------------------------------------------

def test_minmax_is_exact_and_streams_exactly():
    x = np.array([[0.5, -2.25, 3.0], [1.0, 7.5, -0.125]], np.float32)
    r = _one_shot(MinMaxObserver(), x)
    assert float(r.lo) == -2.25 and float(r.hi) == 7.5 and r.axis is None and r.method == "minmax"
    assert r.note == "" and r.lo.shape == ()
    observer = MinMaxObserver()
    observer.update(x[:1])
    observer.update(x[1:])
    assert (float(observer.range().lo), float(observer.range().hi)) == (-2.25, 7.5)


def test_minmax_per_channel_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    r = _stream(MinMaxObserver(axis=-1), x, pieces=3)
    assert r.axis == 2 and r.per_channel
    np.testing.assert_array_equal(r.lo, x.min(axis=(0, 1)))
    np.testing.assert_array_equal(r.hi, x.max(axis=(0, 1)))
    np.testing.assert_array_equal(r.abs_max, np.abs(x).max(axis=(0, 1)))
    with pytest.raises(UsageError, match="channels"):
        observer = MinMaxObserver(axis=-1)
        observer.update(x)
        observer.update(x[..., :3])


def test_minmax_of_integers():
    r = _one_shot(MinMaxObserver(), np.array([3, -4, 9], np.int64))
    assert (float(r.lo), float(r.hi)) == (-4.0, 9.0)


# -- outliers: inf, NaN, mask fillers ------------------------------------------------------

def test_mask_fillers_and_inf_are_excluded_and_reported():
    x = np.array([1.0, -0.5, FLOAT32_LOWEST, -np.inf, 2.0, np.inf, np.nan, -1e31], np.float32)
    original = x.copy()
    for method in ("minmax", "percentile", "entropy", "mse"):
        r = _one_shot(make_observer(method), x)
        assert -0.5 <= float(r.lo) <= 0 and 0 < float(r.hi) <= 2.0, method
        assert "excluded 3 values <= -1e+30 (mask fillers)" in r.note, method
        assert "excluded 1 values >= 1e+30" in r.note and "excluded 1 NaN values" in r.note
    np.testing.assert_array_equal(x, original)  # never modified
    r = _one_shot(MinMaxObserver(), x)
    assert (float(r.lo), float(r.hi)) == (-0.5, 2.0)


def test_clamp_counts_outliers_at_the_ends():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, 10_000).astype(np.float32)
    masked = x.copy()
    masked[:2000] = FLOAT32_LOWEST  # 20% mask fillers
    excluded = _one_shot(PercentileObserver(percentile=99.0), masked)
    clamped = _one_shot(PercentileObserver(percentile=99.0, outliers="clamp"), masked)
    assert "clamped 2000 values <= -1e+30 (mask fillers) to the range's lower end" in clamped.note
    # Clamped fillers sit at the lower end: the 1st percentile is the minimum itself.
    assert float(clamped.lo) == pytest.approx(float(masked[2000:].min()), abs=2 / 2048)
    assert float(excluded.lo) == pytest.approx(np.percentile(x[2000:], 1.0), abs=2 / 2048)
    # MinMax is the same either way: clamped values sit at the range's ends.
    a = _one_shot(MinMaxObserver(outliers="clamp"), masked)
    assert float(a.lo) == float(masked[2000:].min()) and "clamped" in a.note
    with pytest.raises(UsageError, match="policy"):
        MinMaxObserver(outliers="drop")


def test_all_values_excluded_gives_zero_range_with_a_note():
    for method in ("minmax", "percentile", "entropy", "mse"):
        r = _one_shot(make_observer(method), np.full(16, -np.inf, np.float32))
        assert (float(r.lo), float(r.hi)) == (0.0, 0.0)
        assert "no regular values" in r.note and "excluded 16" in r.note
        empty = _one_shot(make_observer(method), np.zeros((0, 4), np.float32))  # e.g. sequence length 0
        assert (float(empty.lo), float(empty.hi)) == (0.0, 0.0)
    r = _one_shot(MinMaxObserver(axis=1), np.array([[1.0, -np.inf], [2.0, -np.inf]], np.float32))
    np.testing.assert_array_equal(r.lo, [1.0, 0.0])
    assert "1 channels had no regular values" in r.note


def test_range_before_update_and_bad_methods():
    for method in ("minmax", "percentile", "entropy", "mse"):
        with pytest.raises(UsageError, match="seen no data"):
            make_observer(method).range()
    with pytest.raises(UsageError, match="unknown calibration method 'kl'") as info:
        make_observer("kl")
    assert "entropy" in info.value.hint
    with pytest.raises(UsageError, match="bad options"):
        make_observer("minmax", percentile=99)
    with pytest.raises(UsageError, match="percentile"):
        PercentileObserver(percentile=20)


# -- histograms ---------------------------------------------------------------------------

def test_half_histogram_rebinning_is_exact():
    rng = np.random.default_rng(3)
    parts = [np.abs(rng.standard_normal(5000)) * s for s in (0.1, 1.0, 0.5, 7.0, 3.0)]
    hist = _HalfHistogram(256)
    for part in parts:
        hist.add(part)
    everything = np.concatenate(parts)
    assert hist.top >= everything.max() and hist.counts.sum() == everything.size
    # Doubling merges bins exactly: the streamed counts are the histogram with the final edges.
    expected = np.histogram(everything, 256, range=(0.0, hist.top))[0]
    assert np.abs(hist.counts - expected).sum() <= 4  # values landing exactly on an edge
    assert hist.used_bins() > 128  # never coarser than half the bins over the data


@pytest.mark.parametrize("symmetric", [False, True])
def test_percentile_matches_numpy_within_a_bin(symmetric):
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.standard_normal(200_000), rng.exponential(3.0, 50_000)]).astype(np.float32)
    rng.shuffle(x)
    observer = PercentileObserver(percentile=99.9, symmetric=symmetric)
    r = _stream(observer, x)
    if symmetric:
        expected_hi = np.percentile(np.abs(x), 99.9)
        expected_lo = max(-expected_hi, float(x.min()))
    else:
        expected_lo, expected_hi = np.percentile(x, [0.1, 99.9])
    width = observer.bin_width
    assert float(r.hi) == pytest.approx(expected_hi, abs=width)
    assert float(r.lo) == pytest.approx(expected_lo, abs=width)
    one_shot = _one_shot(PercentileObserver(percentile=99.9, symmetric=symmetric), x)
    assert float(one_shot.hi) == pytest.approx(float(r.hi), abs=width)
    assert float(one_shot.lo) == pytest.approx(float(r.lo), abs=width)


def test_kl_candidate_by_hand():
    # Two levels over four bins: groups {0, 1} and {2, 3}.
    hist = np.array([3.0, 1.0, 1.0, 1.0])
    p = np.array([3, 1, 1, 3]) / 8  # two outliers folded into the last bin
    q = np.array([2, 2, 1, 1]) / 6  # each group's mass spread over its non-empty bins
    assert _kl_candidate(hist, 2.0, 2) == pytest.approx(float(np.sum(p * np.log(p / q))))
    # A group's empty bin stays empty in Q; P == Q here, so KL is 0.
    assert _kl_candidate(np.array([2.0, 0.0, 1.0, 1.0]), 0.0, 2) == pytest.approx(0.0)
    # Outliers folded into an empty last bin cannot be represented: infinite divergence.
    assert math.isinf(_kl_candidate(np.array([2.0, 1.0, 1.0, 0.0]), 5.0, 2))


def _reference_kl_threshold(hist, edges, levels):
    """A literal transcription of the TensorRT calibration loop (Migacz, GTC 2017)."""
    best = (math.inf, None)
    for i in range(levels, len(hist) + 1):
        reference = list(hist[:i])
        reference[i - 1] += sum(hist[i:])
        candidate = [0.0] * i
        for level in range(levels):
            members = [j for j in range(i) if int(j * levels // i) == level]
            nonempty = [j for j in members if hist[j] > 0]
            for j in nonempty:
                candidate[j] = sum(hist[k] for k in members) / len(nonempty)
        p = np.array(reference) / sum(reference)
        q = np.array(candidate) / sum(candidate)
        if any(pk > 0 and qk == 0 for pk, qk in zip(p, q, strict=True)):
            continue
        kl = sum(pk * math.log(pk / qk) for pk, qk in zip(p, q, strict=True) if pk > 0)
        if kl <= best[0]:
            best = (kl, edges[i])
    return best


def test_kl_threshold_matches_a_literal_transcription():
    rng = np.random.default_rng(11)
    values = np.abs(np.concatenate([rng.standard_normal(20_000), rng.uniform(5, 9, 30)]))
    hist, edges = np.histogram(values, 160, range=(0, values.max()))
    hist = hist.astype(np.float64)
    threshold, kl = kl_threshold(edges, hist, levels=16)
    expected_kl, expected_threshold = _reference_kl_threshold(hist, edges, 16)
    assert threshold == pytest.approx(expected_threshold) and kl == pytest.approx(expected_kl)
    assert threshold < 0.8 * values.max()


def test_entropy_clips_outliers_well_inside_the_max():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(1_000_000).astype(np.float32)
    x[rng.choice(x.size, 20, replace=False)] = rng.uniform(30, 60, 20)
    observer = EntropyObserver()
    r = _stream(observer, x, pieces=10)
    threshold = float(r.hi)
    assert 2.5 < threshold < 8.0 < float(x.max())  # a few sigma, far inside max 30-60
    assert float(r.lo) == -threshold
    assert "KL threshold" in r.note
    # KL's minimum is flat around ~4.4 sigma: streamed and one-shot bins agree to a few bins.
    one_shot = _one_shot(EntropyObserver(), x)
    assert float(one_shot.hi) == pytest.approx(threshold, abs=4 * observer.bin_width)


def test_entropy_of_non_negative_data_starts_at_zero_and_keeps_a_bounded_range():
    rng = np.random.default_rng(6)
    uniform = rng.uniform(0, 4, 500_000).astype(np.float32)
    r = _one_shot(EntropyObserver(), uniform)
    assert float(r.lo) >= 0.0  # clipped to the values seen: no wasted negative half
    assert float(r.hi) > 0.9 * float(uniform.max())  # nothing to clip in a uniform distribution


def test_entropy_of_a_relu_output_is_not_dominated_by_its_zeros():
    # Half exact zeros, half |N(0, 1)|: the zero spike is exact at level 0 and must not pull
    # the threshold in (it did: to ~0.5 sigma); the tail still gets clipped a little.
    rng = np.random.default_rng(9)
    x = np.maximum(rng.standard_normal(1_000_000), 0.0).astype(np.float32)
    r = _one_shot(EntropyObserver(), x)
    assert float(r.lo) == 0.0
    assert 2.5 < float(r.hi) <= float(x.max())


def test_mse_beats_minmax_on_heavy_tailed_data():
    rng = np.random.default_rng(7)
    x = rng.standard_t(2.0, 300_000).astype(np.float32)  # heavy tails: max ~ hundreds of sigma
    for symmetric in (False, True):
        mse_range = _stream(MseObserver(symmetric=symmetric), x)
        minmax_range = _one_shot(MinMaxObserver(), x)
        assert float(mse_range.hi) < 0.9 * float(x.max())
        assert _quant_mse(x, mse_range, symmetric=symmetric) < 0.9 * _quant_mse(x, minmax_range, symmetric=symmetric)
    # On data without tails, MSE clips little: a uniform distribution keeps most of its range.
    uniform = rng.uniform(-1, 1, 100_000).astype(np.float32)
    assert float(_one_shot(MseObserver(), uniform).hi) > 0.9


def test_weight_range_per_channel():
    rng = np.random.default_rng(8)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    r = weight_range(w, axis=1)
    assert r.axis == 1 and r.lo.shape == (4,)
    np.testing.assert_array_equal(r.lo, w.min(axis=0))
    np.testing.assert_array_equal(r.hi, w.max(axis=0))
    whole = weight_range(w, axis=None)
    assert (float(whole.lo), float(whole.hi)) == (float(w.min()), float(w.max()))
    big = rng.standard_normal((3, 4000)).astype(np.float32)
    per = weight_range(big, axis=0, method="percentile", percentile=99.0, symmetric=True)
    expected = np.percentile(np.abs(big), 99.0, axis=1)
    np.testing.assert_allclose(per.hi, expected, atol=np.abs(big).max() / 1024)
    assert per.method == "percentile" and per.axis == 0


# -- quantization parameters --------------------------------------------------------------

def _range(lo, hi, axis=None):
    return TensorRange(np.asarray(lo, np.float64), np.asarray(hi, np.float64), "minmax", axis)


def test_quant_params_by_hand():
    scale, zero = quant_params(_range(-1.0, 3.0), "int8", symmetric=False)
    assert scale.dtype == np.float32 and zero.dtype == np.int8 and scale.shape == ()
    assert float(scale) == pytest.approx(4 / 255) and int(zero) == -64  # rint(-128 + 1 / (4/255))
    scale, zero = quant_params(_range(-1.0, 3.0), "uint8", symmetric=False)
    assert float(scale) == pytest.approx(4 / 255) and int(zero) == 64 and zero.dtype == np.uint8
    scale, zero = quant_params(_range(-2.0, 1.0), "int8", symmetric=True)
    assert float(scale) == pytest.approx(2 / 127) and int(zero) == 0
    scale, zero = quant_params(_range(-2.0, 1.0), "uint8", symmetric=True)
    assert float(scale) == pytest.approx(2 / 127) and int(zero) == 128
    # The range always includes zero, so 0.0 quantizes exactly.
    scale, zero = quant_params(_range(2.0, 5.0), "uint8", symmetric=False)
    assert float(scale) == pytest.approx(5 / 255) and int(zero) == 0
    assert fake_quantize(np.zeros(1, np.float32), scale, zero)[0] == 0.0
    # Degenerate ranges: scale 1, nothing divides by zero.
    for dtype, symmetric, expected_zero in (("int8", False, 0), ("uint8", False, 0), ("uint8", True, 128)):
        scale, zero = quant_params(_range(0.0, 0.0), dtype, symmetric)
        assert float(scale) == 1.0 and int(zero) == expected_zero
    scale, zero = quant_params(_range(-1e-45, 1e-45), "int8", True)
    assert float(scale) == 1.0
    with pytest.raises(UsageError, match="non-finite"):
        quant_params(_range(-np.inf, 1.0), "int8", True)
    with pytest.raises(UsageError, match="int16"):
        quant_params(_range(-1.0, 1.0), "int16", True)  # type: ignore[arg-type]


def test_quant_params_per_channel():
    r = _range([-1.0, 0.0, -4.0], [1.0, 2.0, 0.0], axis=0)
    scale, zero = quant_params(r, "int8", symmetric=True)
    np.testing.assert_allclose(scale, np.array([1, 2, 4], np.float32) / 127)
    assert zero.shape == (3,) and zero.dtype == np.int8 and not zero.any()
    scale, zero = quant_params(r, "uint8", symmetric=False)
    np.testing.assert_allclose(scale, np.array([2, 2, 4], np.float32) / 255)
    np.testing.assert_array_equal(zero, [128, 0, 255])


def _ort_quantize(x, scale, zero, axis=None):
    attrs = {"axis": axis} if axis is not None else {}
    graph = oh.make_graph(
        [oh.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
         oh.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)],
        "qdq",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
        [oh.make_tensor_value_info("q", onnx.helper.np_dtype_to_tensor_dtype(zero.dtype), list(x.shape)),
         oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(x.shape))],
        [onnx.numpy_helper.from_array(scale, "s"), onnx.numpy_helper.from_array(zero, "z")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("dtype,symmetric", [("int8", True), ("int8", False), ("uint8", False), ("uint8", True)])
def test_quantize_matches_onnxruntime(dtype, symmetric):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((4, 64)) * 3).astype(np.float32)
    r = _one_shot(PercentileObserver(percentile=99.0), x)  # clips: saturation is exercised
    scale, zero = quant_params(r, dtype, symmetric)
    x[0, :8] = (np.arange(8) + 0.5) * scale  # exact halves: ties round to even
    q_ort, y_ort = _ort_quantize(x, scale, zero)
    np.testing.assert_array_equal(quantize(x, scale, zero), q_ort)
    np.testing.assert_array_equal(dequantize(q_ort, scale, zero), y_ort)
    np.testing.assert_array_equal(fake_quantize(x, scale, zero), y_ort)


def test_per_channel_quantize_matches_onnxruntime():
    rng = np.random.default_rng(10)
    w = rng.standard_normal((8, 5)).astype(np.float32) * np.array([0.1, 1, 10, 0.01, 3], np.float32)
    r = weight_range(w, axis=1)
    scale, zero = quant_params(r, "int8", symmetric=True)
    q_ort, y_ort = _ort_quantize(w, scale, zero, axis=1)
    np.testing.assert_array_equal(quantize(w, scale, zero, axis=1), q_ort)
    np.testing.assert_array_equal(fake_quantize(w, scale, zero, axis=1), y_ort)
    assert np.abs(y_ort - w).max(axis=0).max() <= (scale / 2 + 1e-7).max()
    with pytest.raises(UsageError, match="axis"):
        quantize(w, scale, zero)
