"""Calibration: the features read back from the estimate, the fit recovering known
parameters, the ORT-fused graph with observed shapes, saving/finding a calibrated profile
(machine match), and the driver using it for ``-t ort-cpu``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

import greencc as gc
from greencc import calibration as cal
from greencc.calibration import calibrate, predict_latency, target_graph
from greencc.cli import main
from greencc.cost import kernel_model as km
from greencc.cost.kernel_model import (
    FITTED_DTYPES,
    Calibration,
    KernelModel,
    NodeFeatures,
    find_calibration,
    fit_kernel_model,
    node_features,
)
from greencc.cost.profile import HardwareProfile
from greencc.errors import UsageError
from greencc.execution import calibrate as calibration_run


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GREENCC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _start_profile() -> HardwareProfile:
    return km.initial_profile("ort-cpu", 2, HardwareProfile.named("x86-avx512"))


def _small(name: str) -> list[cal.MicroBenchmark]:
    return [b for b in cal.default_benchmarks() if b.name in name.split("|")]


# ----------------------------------------------------------------------------- features
def test_features_are_the_estimates_own_counts() -> None:
    profile = _start_profile()
    (matmul,) = _small("matmul 128x384x384")
    features = node_features(gc.load(matmul.build()), profile)
    assert features.kernel == ["MatMul"] and features.op_class == ["matmul"]
    assert features.work[0, FITTED_DTYPES.index("float32")] == pytest.approx(128 * 384 * 384)
    assert features.work[0, FITTED_DTYPES.index("int8")] == 0
    # a (196,608 B) and y (196,608 B) and the 589,824 B weight: all fit the first cache level.
    assert features.bytes[0].sum() == pytest.approx(2 * 128 * 384 * 4 + 384 * 384 * 4)
    assert features.bytes[0, 0] == features.bytes[0].sum()
    (integer,) = _small("matmulinteger 128x384x384")
    features = node_features(gc.load(integer.build()), profile)
    assert features.work[0, FITTED_DTYPES.index("int8")] == pytest.approx(128 * 384 * 384)
    assert NodeFeatures.from_dict(json.loads(json.dumps(features.to_dict()))).kernel == ["MatMulInteger"]


def test_every_default_benchmark_builds_a_valid_model() -> None:
    benchmarks = cal.default_benchmarks()
    assert len(benchmarks) >= 60 and len({b.name for b in benchmarks}) == len(benchmarks)
    classes = {b.op_class for b in benchmarks}
    assert {"matmul", "conv", "elementwise", "reduction", "softmax", "normalization"} <= classes
    assert {"float32", "int8"} == {b.dtype for b in benchmarks}
    for bench in benchmarks:
        onnx.checker.check_model(bench.build(), full_check=False)


# ----------------------------------------------------------------------------- the fit
def _synthetic(model: KernelModel, rng: np.random.Generator, n: int = 40) -> list[NodeFeatures]:
    """Benchmarks with one to eight nodes of three kernels, spanning overhead-, memory- and
    compute-bound sizes."""
    kernels = [("MatMul", "matmul"), ("Softmax", "softmax"), ("Reshape", "data-movement")]
    features = []
    for _ in range(n):
        count = int(rng.integers(1, 8))
        picks = [kernels[int(rng.integers(0, 3))] for _ in range(count)]
        scale = 10 ** rng.uniform(2, 8)
        work = np.zeros((count, len(FITTED_DTYPES)))
        nbytes = np.zeros((count, 2))
        for i, (kernel, _) in enumerate(picks):
            if kernel == "MatMul":
                work[i, 0] = scale * rng.uniform(1, 50)
                nbytes[i, 0] = scale * rng.uniform(0.5, 2)
            elif kernel == "Softmax":
                work[i, 0] = scale * 0.1
                nbytes[i, int(rng.integers(0, 2))] = scale * rng.uniform(1, 4)
        features.append(NodeFeatures([k for k, _ in picks], [c for _, c in picks], work, nbytes, np.ones(count)))
    return features


def test_fit_recovers_known_parameters() -> None:
    truth = KernelModel(
        peak_macs_per_s={"float32": 1.2e11, "int8": 4e11}, bandwidth_bytes_per_s=[6e10, 2e10],
        efficiency={"MatMul": 1.0, "Softmax": 0.3, "Reshape": 1.0},
        exponent={"MatMul": 1.0, "Softmax": 1.0, "Reshape": 1.0},
        overhead_ratio={"MatMul": 1.0, "Softmax": 0.75, "Reshape": 1.0},
        op_overhead_s=2e-6, light_overhead_s=3e-7, run_overhead_s=5e-6,
    )
    features = _synthetic(truth, np.random.default_rng(0))
    measured = [truth.predict_s(f) for f in features]
    fitted, residuals = fit_kernel_model(features, measured, levels=2)
    # Every benchmark within 5% and most within 1% (the ridge prior pulls a little).
    assert np.max(np.abs(residuals)) < 0.05 and np.median(np.abs(residuals)) < 0.01
    assert fitted.peak_macs_per_s["float32"] == pytest.approx(1.2e11, rel=0.05)
    # Softmax's efficiency scales its memory time too, so only their product is identified.
    assert fitted.efficiency["Softmax"] * fitted.bandwidth_bytes_per_s[0] == pytest.approx(0.3 * 6e10, rel=0.15)
    assert fitted.run_overhead_s == pytest.approx(5e-6, rel=0.2)
    assert fitted.efficiency["MatMul"] == 1.0  # the reference kernel defines the peak
    held_out = _synthetic(truth, np.random.default_rng(1), n=10)
    for f in held_out:
        assert fitted.predict_s(f) == pytest.approx(truth.predict_s(f), rel=0.05)


def test_fit_is_robust_to_one_outlier() -> None:
    truth = KernelModel(
        peak_macs_per_s={"float32": 1e11, "int8": 4e11}, bandwidth_bytes_per_s=[5e10, 2e10],
        efficiency={"MatMul": 1.0, "Softmax": 1.0, "Reshape": 1.0},
        exponent={"MatMul": 1.0, "Softmax": 1.0, "Reshape": 1.0},
        overhead_ratio={}, op_overhead_s=1e-6, light_overhead_s=3e-7, run_overhead_s=5e-6,
    )
    features = _synthetic(truth, np.random.default_rng(2))
    measured = [truth.predict_s(f) for f in features]
    measured[3] *= 20  # a benchmark disturbed by another process
    fitted, residuals = fit_kernel_model(features, measured, levels=2)
    others = np.delete(np.abs(residuals), 3)
    assert np.median(others) < 0.05 and abs(residuals[3]) > 1.0


# ----------------------------------------------------------------------------- fused graph
ERF_GELU = """<ir_version: 10, opset_import: ["" : 17]>
g (float[batch, 64] x) => (float[batch, 64] y) <float half = {0.5}, float one = {1.0}, float sqrt2 = {1.4142135}> {
  s = Div(x, sqrt2)
  e = Erf(s)
  p = Add(e, one)
  m = Mul(x, p)
  y = Mul(m, half)
}"""


def test_target_graph_is_what_ort_runs_with_observed_static_shapes() -> None:
    model = gc.load(onnx.parser.parse_model(ERF_GELU))
    fused = target_graph(model, {"batch": 3})
    ops = [node.op_type for node in fused.graph]
    assert ops == ["Gelu"]  # ONNX Runtime fused the erf GELU into one kernel
    (node,) = fused.graph
    assert list(node.outputs[0].shape) == [3, 64]
    assert len(model.graph) == 5  # the input model is untouched


def test_predict_latency_with_a_profile_and_with_a_calibration(cache: Path) -> None:
    model = gc.load(onnx.parser.parse_model(ERF_GELU))
    plain = predict_latency(model, "x86-avx512", {"batch": 8})
    assert plain.method.startswith("model:cost(x86-avx512") and plain.kernels == 1 and plain.nodes == 5
    calibration = calibrate("ort-cpu", benchmarks=_small("neg[1]x1|neg[1]x16|add 4K|relu 64K|gelu 16x64"),
                            min_time_s=0.02)
    predicted = predict_latency(model, calibration, {"batch": 8})
    assert predicted.method.startswith("model:kernels(ort-cpu-")
    assert 1e-4 < predicted.latency_ms < 1.0


# ----------------------------------------------------------------------------- saving and finding
def test_calibrate_saves_and_ort_cpu_uses_it(cache: Path, tmp_path: Path) -> None:
    calibration = calibrate("ort-cpu", threads=1, benchmarks=_small("neg[1]x1|neg[1]x16|add 4K|matmul 16x32x32"),
                            min_time_s=0.02)
    assert calibration.profile.name == "ort-cpu-1threads" and calibration.profile.calibrated
    assert km.ENERGY_UNCALIBRATED_MARK in calibration.profile.calibration_note
    assert len(calibration.fit["benchmarks"]) == 4 and calibration.fit["background_load"]
    path = calibration.save()
    assert path == cache / "profiles" / "ort-cpu-1threads.json"
    assert HardwareProfile.from_json(path).op_overhead_s == calibration.profile.op_overhead_s
    found = find_calibration("ort-cpu", 1)
    assert found is not None and found.run_overhead_s == calibration.run_overhead_s
    assert find_calibration("ort-cpu", 2) is None  # another thread count is not this profile

    good = tmp_path / "good.onnx"
    onnx.save(onnx.parser.parse_model(ERF_GELU), good)
    report = gc.compile(gc.load(good), "ort-cpu", "-O1", threads=1, dims={"batch": 2}).report
    assert report.profile["name"] == "ort-cpu-1threads"
    assert "latency calibrated on this machine, energy terms uncalibrated" in report.energy_method
    # A tag names its profile on purpose: the calibration does not replace it.
    assert gc.compile(gc.load(good), "x86-avx512", "-O1", threads=1).report.profile["name"] == "x86-avx512"


def test_a_calibration_from_another_machine_is_ignored(cache: Path) -> None:
    calibration = calibrate("ort-cpu", threads=1, benchmarks=_small("neg[1]x1|add 4K"), min_time_s=0.01)
    calibration.machine = {**calibration.machine, "cpu": "Some Other CPU"}
    calibration.save()
    assert find_calibration("ort-cpu", 1) is None
    record = cache / "profiles" / "ort-cpu-1threads.calibration.json"
    record.write_text("{not json")
    with pytest.raises(UsageError, match="calibration record"):
        Calibration.load("ort-cpu-1threads")
    assert find_calibration("ort-cpu", 1) is None  # unreadable: ignored with a warning


def test_cli_cost_calibrate(cache: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    few = _small("neg[1]x1|neg[1]x16|add 4K")
    monkeypatch.setattr(calibration_run, "default_benchmarks", lambda: few)
    assert main(["cost", "calibrate", "-t", "ort-cpu", "--threads", "1", "--min-time", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "calibrated ort-cpu with 1 thread(s)" in out and "fit error: median" in out
    assert (cache / "profiles" / "ort-cpu-1threads.json").is_file()
    assert main(["cost", "calibrate", "--min-time", "0"]) == 2
    assert main(["cost"]) == 2
