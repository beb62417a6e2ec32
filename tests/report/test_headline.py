"""The report's one energy headline: a meter's measurement first, else the calibrated kernel
model, else the roofline, each with its label and this machine's validation error from
``greencc cost validate``; energy columns titled "meas." hold only measurements; a noise
warning when repeated baseline measurements disagree beyond their spread."""

from __future__ import annotations

from pathlib import Path

import pytest

import greencc as gc
from greencc.calibration import calibrate, default_benchmarks
from greencc.calibration.validate import CaseResult, ValidationReport
from greencc.cost import kernel_model as km
from greencc.report.ledger import PassRow, Report
from tests.helpers import ConstantPowerRapl


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GREENCC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _validation(profile: str, template: str) -> ValidationReport:
    """A validation of ``profile`` whose kernel model errs 10% / 20% and roofline 40% / 80%."""
    results = [CaseResult(f"case{i}", "mlp", "-O1", {"batch": 1}, 4, 2, m, m, m, m * 1.1 ** s, m * 1.4 ** s, m * 2 ** s)
               for i, (m, s) in enumerate([(1.0, 1), (2.0, -1), (3.0, 1), (4.0, 1)])]
    return ValidationReport(target="ort-cpu", threads=1, profile=profile, calibration={"template": template},
                            machine=km.machine_info(), created="2026-01-02T03:04:05+00:00", results=results)


def test_without_meter_or_calibration_the_roofline_leads_and_says_it_is_unvalidated(good_model: Path) -> None:
    report = gc.compile(gc.load(good_model), "ort-cpu", "-O1").report
    headline = report.headline()
    assert headline is not None and headline["method"] == "model:cost"
    assert headline["final_mj"] == report.rows[-1].est_energy_mj
    assert headline["validation_text"] == "not validated on this machine (run `greencc cost validate`)"
    assert "no calibration of this target" in headline["why"]
    text = report.to_console()
    # The headline leads: before the ledger table.
    assert text.index("ENERGY: ") < text.index("greencc ledger")
    assert "validation: not validated on this machine" in text


def test_the_roofline_quotes_its_validation_error_on_this_machine(good_model: Path) -> None:
    validation = _validation("ort-cpu-1threads", "x86-avx512")
    validation.save()
    report = gc.compile(gc.load(good_model), "ort-cpu", "-O1").report  # uncalibrated: x86-avx512
    headline = report.headline()
    assert headline["method"] == "model:cost" and headline["validation"]["cases"] == 4
    roofline = validation.scores()[2]
    assert headline["validation"]["median_abs_pct"] == pytest.approx(roofline.median_abs_pct)
    assert f"median error {roofline.median_abs_pct:.1f}%" in headline["validation_text"]


def test_a_validation_from_another_machine_is_not_quoted() -> None:
    validation = _validation("ort-cpu-1threads", "x86-avx512")
    validation.machine = {**validation.machine, "cpu": "Some Other CPU"}
    validation.save()
    assert km.find_validation("x86-avx512") is None
    assert km.validation_path("x86-avx512").is_file()


def test_with_a_calibration_the_kernel_model_leads_with_its_validation_error(good_model: Path) -> None:
    benchmarks = [b for b in default_benchmarks() if b.name in ("neg[1]x1", "add 4K", "matmul 16x32x32")]
    calibration = calibrate("ort-cpu", threads=1, benchmarks=benchmarks, min_time_s=0.02)
    calibration.save()
    validation = _validation(calibration.profile.name, "x86-avx512")
    validation.save()
    report = gc.compile(gc.load(good_model), "ort-cpu", "-O1", threads=1).report
    kernel = report.kernel_estimate
    assert kernel is not None and kernel["profile"] == "ort-cpu-1threads"
    assert kernel["original_mj"] > 0 and kernel["final_mj"] > 0 and kernel["final_ms"] > 0
    methods = [f["method"] for f in report.energy_figures()]
    assert methods == ["model:cost", "model:kernels"]
    headline = report.headline()
    assert headline["method"] == "model:kernels" and headline["final_mj"] == kernel["final_mj"]
    assert headline["validation"]["median_abs_pct"] == pytest.approx(validation.scores()[0].median_abs_pct)
    # The roofline, in detail, quotes the calibrated roofline's error, not the kernel model's.
    roofline = report.energy_figures()[0]
    assert roofline["validation"]["median_abs_pct"] == pytest.approx(validation.scores()[1].median_abs_pct)
    text = report.to_console()
    assert "by estimate: model:kernels(ort-cpu-1threads" in text
    assert f"median error {validation.scores()[0].median_abs_pct:.1f}%" in text
    # The kernel model's energy: the estimate's dynamic energy plus static power over its latency.
    again = Report.from_dict(report.to_dict())
    assert again.kernel_estimate == kernel and again.headline()["method"] == "model:kernels"


def test_a_meter_leads_and_the_estimated_column_is_not_titled_measured(good_model: Path) -> None:
    measured = gc.compile(gc.load(good_model), "ort-cpu", "-O1", measure=True,
                          energy_meter=ConstantPowerRapl(), energy_window_s=0.05).report
    headline = measured.headline()
    assert headline["kind"] == "measured" and headline["method"] == "rapl"
    assert headline["validation_text"].startswith("a measurement")
    assert "meas. mJ" in measured.to_console()
    estimated = gc.compile(gc.load(good_model), "ort-cpu", "-O1", measure=True, energy_window_s=0.05).report
    assert estimated.headline()["method"] == "model:cost"  # CPU time × power is not a measurement
    text = estimated.to_console()
    assert "meas. ms" in text and "meas. mJ" not in text and "cpu-est mJ" in text
    assert len(estimated.baseline_latencies()) >= 2  # the input was measured twice


def _stats(median: float, spread: float) -> dict:
    return {"median_ms": median, "p10_ms": median - spread, "p90_ms": median + spread}


def _report_with_baselines(*baselines: dict) -> Report:
    row = PassRow("(input)", False, 0.0, 1, 0, 0, {}, 1.0, 1.0,
                  measured={"latency": baselines[0], "energy": {"mj_per_inference": 1.0, "method": "rapl",
                                                               "label": "measured (rapl: fake)"}})
    return Report(model={}, target="ort-cpu", profile=None, dims={}, pipeline="", rows=[row],
                  baseline_repeats=list(baselines[1:]))


def test_a_noise_warning_when_repeated_baselines_disagree_beyond_their_spread() -> None:
    noisy = _report_with_baselines(_stats(19.0, 0.5), _stats(43.4, 1.0))
    (warning,) = noisy.noise_warnings()
    assert "19.000 ms" in warning and "43.400 ms" in warning and "unreliable" in warning
    assert warning in " ".join(noisy.to_console().split())  # the console wraps long lines
    assert _report_with_baselines(_stats(19.0, 0.5), _stats(19.6, 0.5)).noise_warnings() == []  # within spread
    # Disjoint but within NOISE_MIN_RATIO (5%): ordinary drift.
    assert _report_with_baselines(_stats(19.0, 0.1), _stats(19.95, 0.1)).noise_warnings() == []
