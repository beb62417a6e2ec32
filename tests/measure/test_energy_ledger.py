"""Energy and carbon in the ledger: every figure in the console, the JSON and the report
carries its method (estimate vs measured, and which meter), --measure measures the final
and the original model, and --grid-intensity / --pue reach every carbon figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import greencc as gc
from greencc.cli import main
from greencc.report.ledger import Report
from tests.helpers import ConstantPowerRapl


@pytest.fixture(autouse=True)
def no_calibrated_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A profile calibrated on the developer's machine must not change these tests.
    monkeypatch.setenv("GREENCC_CACHE_DIR", str(tmp_path / "cache"))


def _all_energy_figures(report: dict) -> list[dict]:
    return report["summary"]["energy"]


def test_without_a_meter_every_energy_figure_is_labelled_estimate(good_model: Path) -> None:
    compiled = gc.compile(gc.load(good_model), "ort-cpu", "-O1", measure=True,
                          energy_window_s=0.05)
    data = json.loads(compiled.report.to_json())
    assert data["schema"] == "greencc.report/1"
    assert data["energy_method"].startswith("estimate: model:cost(")
    for row in data["rows"]:
        assert row["energy_method"].startswith("estimate: model:cost(")
    figures = _all_energy_figures(data)
    assert [f["method"] for f in figures] == ["model:cost", "estimate:cpu-time×tdp"]
    for figure in figures:
        assert figure["kind"] == "estimate" and "estimate" in figure["label"]
        assert figure["original_mj"] > 0 and figure["final_mj"] > 0
    assert data["measured_energy"]["measured"] is False
    assert data["measured_energy"]["window_s"] >= 0.05
    assert data["baseline_measured"]["energy"]["method"] == "estimate:cpu-time×tdp"
    text = compiled.report.to_console()
    assert "measured (" not in text
    assert text.count("[estimate") == 2  # one label per energy line


def test_with_a_meter_the_figure_is_labelled_measured_with_the_meter(good_model: Path) -> None:
    compiled = gc.compile(gc.load(good_model), "ort-cpu", "-O1", measure=True,
                          energy_meter=ConstantPowerRapl(), energy_window_s=0.05)
    report = compiled.report
    measured = [f for f in report.energy_figures() if f["kind"] == "measured"]
    assert len(measured) == 1 and measured[0]["method"] == "rapl"
    assert measured[0]["label"].startswith("measured (rapl: RAPL package-0 (fake, 10 W))")
    # 10 W for the window, over the calls in it: J/inference = 10 W × window / inferences.
    energy = report.measured_energy
    assert energy["j_per_inference"] == pytest.approx(10 * energy["window_s"] / energy["inferences"], rel=1e-3)
    assert energy["idle_power_w"] == pytest.approx(10.0, rel=1e-3)
    assert "measured (rapl: RAPL package-0" in report.to_console()


def test_carbon_uses_the_given_intensity_and_pue(good_model: Path) -> None:
    compiled = gc.compile(gc.load(good_model), "ort-cpu", "-O1", grid_intensity=300, pue=1.2)
    report = compiled.report
    assert report.carbon_factors["grid_g_per_kwh"] == 300 and report.carbon_factors["pue"] == 1.2
    (estimate,) = report.energy_figures()  # no --measure: only the cost model's figure
    expected = estimate["final_mj"] * 1e-3 / 3.6e6 * 1.2 * 300 * 1000
    assert estimate["final_g_per_1k"] == pytest.approx(expected)
    text = report.to_console()
    assert "grid 300 gCO2e/kWh (given by the user), PUE 1.2" in text and "gCO2e per 1k inferences" in text


def test_default_carbon_factors_are_stated(good_model: Path) -> None:
    text = gc.compile(gc.load(good_model), "ort-cpu", "-O1").report.to_console()
    assert "grid 475 gCO2e/kWh (IEA 2019 world average" in text and "PUE 1 (assumed" in text


def test_report_round_trips_new_fields_and_reads_old_reports(good_model: Path, tmp_path: Path) -> None:
    report = gc.compile(gc.load(good_model), "ort-cpu", "-O1", measure=True, energy_window_s=0.05).report
    again = Report.from_dict(json.loads(report.to_json()))
    assert again.measured_energy == report.measured_energy
    assert again.energy_figures() == report.energy_figures()
    old = json.loads(report.to_json())
    for key in ("measured_energy", "baseline_measured", "carbon_factors"):
        old.pop(key)
    for row in old["rows"]:
        row.pop("energy_method")
    legacy = Report.from_dict(old)
    assert legacy.measured_energy is None
    assert legacy.energy_figures()[0]["kind"] == "estimate"


def test_cli_compile_measure_and_carbon_flags(good_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["compile", str(good_model), "-O1", "-o", str(out), "--measure",
                 "--grid-intensity", "100", "--pue", "1.5"]) == 0
    printed = capsys.readouterr().out
    assert "gCO2e per 1k inferences" in printed and "grid 100 gCO2e/kWh" in printed
    assert "estimate:cpu-time×tdp" in printed and "original model" in printed
    data = json.loads((out / "report.json").read_text())
    assert data["carbon_factors"]["pue"] == 1.5
    assert main(["report", str(out / "report.json")]) == 0
    assert "gCO2e per 1k inferences" in capsys.readouterr().out


def test_cli_rejects_a_pue_below_one(good_model: Path, tmp_path: Path, capsys) -> None:
    assert main(["compile", str(good_model), "-o", str(tmp_path / "o"), "--pue", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "PUE 0.5 must be a number ≥ 1" in err and not (tmp_path / "o").exists()


def test_cli_bench_energy(good_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["compile", str(good_model), "-o", str(out), "-q"]) == 0
    assert main(["bench", str(out), "--repeats", "5", "--warmup", "1", "--energy", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["energy"]["method"] == "estimate:cpu-time×tdp" and data["energy"]["measured"] is False


# --------------------------------------------------------------------------------------
# Per-pass measurement: each row of a pass that changed the model is measured
# --------------------------------------------------------------------------------------
class CountingMeasure:
    """A ``measure_model`` stand-in recording which models it was asked to measure."""

    def __init__(self) -> None:
        self.nodes: list[int] = []

    def __call__(self, model: gc.Model, dims: dict) -> dict:
        self.nodes.append(len(model.graph))
        n = len(self.nodes)
        return {"latency": {"median_ms": float(n), "p10_ms": n - 0.1, "p90_ms": n + 0.1},
                "energy": {"mj_per_inference": 10.0 * n, "method": "rapl", "label": "measured (rapl: fake)"}}


def test_the_ledger_measures_the_input_and_each_pass_that_changed_the_model(good_model: Path) -> None:
    counter = CountingMeasure()
    _, report = gc.optimize(gc.load(good_model), "cleanup,cleanup", measure_model=counter)
    input_row, first, second = report.rows
    assert first.modified and not second.modified
    # The input twice (the repeat feeds the noise check); the unchanged second run is not measured.
    assert counter.nodes == [input_row.nodes, input_row.nodes, first.nodes]
    assert input_row.measured_latency_ms == 1.0 and report.baseline_repeats[0]["median_ms"] == 2.0
    assert first.measured_latency_ms == 3.0
    assert first.measured_energy_mj == 30.0 and "same_as" not in first.measured
    assert second.measured["same_as"] == "cleanup" and second.measured["same_as_row"] == 1
    assert second.measured_energy_mj == first.measured_energy_mj
    text = report.to_console()
    assert "meas. ms" in text and "meas. mJ" in text and "=30.000 rapl" in text
    assert "'=' : the pass changed nothing" in text and "measured (rapl: fake)" in text


def test_a_row_that_cannot_be_measured_says_why(good_model: Path) -> None:
    _, report = gc.optimize(gc.load(good_model), "cleanup",
                            measure_model=lambda model, dims: {"error": "could not be measured: no kernel"})
    assert report.rows[1].measured == {"error": "could not be measured: no kernel"}
    assert report.rows[1].measured_latency_ms is None
    text = report.to_console()
    assert "n/a" in text and "cleanup: could not be measured: no kernel" in text


def test_compile_measure_fills_every_row_with_the_same_meter(tmp_path: Path) -> None:
    from tests import models

    compiled = gc.compile(models.tiny_bert_model(), "ort-cpu", "-O2", measure=True,
                          dims={"batch": 1, "seq": 16}, energy_meter=ConstantPowerRapl(), energy_window_s=0.05)
    report = compiled.report
    assert [r.name for r in report.rows] == ["(input)", "cleanup", "fuse", "dce"]
    for row in report.rows:
        latency, energy = row.measured["latency"], row.measured["energy"]
        assert latency["p10_ms"] <= latency["median_ms"] <= latency["p90_ms"] and latency["repeats"] >= 50
        assert energy["method"] == "rapl" and energy["label"].startswith("measured (rapl:")
        assert energy["window_s"] >= 0.05 and energy["mj_per_inference"] > 0
        assert ("same_as" in row.measured) == (row.name != "(input)" and not row.modified)
    # The final and original figures are the last and the first row's (ort-cpu legalizes nothing).
    assert report.measured == report.rows[-1].measured["latency"]
    assert report.measured_energy == report.rows[-1].measured["energy"]
    assert report.baseline_measured == report.rows[0].measured
    data = json.loads(report.to_json())
    assert data["rows"][2]["measured"]["energy"]["method"] == "rapl"
    again = Report.from_dict(data)
    assert again.rows[2].measured == report.rows[2].measured
    text = report.to_console()
    assert text.count(" rapl ") >= 4 and "meas. mJ" in text


def test_without_measure_the_rows_carry_no_measurement(good_model: Path) -> None:
    report = gc.compile(gc.load(good_model), "ort-cpu", "-O1").report
    assert all(row.measured is None for row in report.rows)
    assert "meas. ms" not in report.to_console()


def test_a_non_positive_window_is_refused_before_any_work(good_model: Path) -> None:
    with pytest.raises(gc.UsageError, match="energy_window_s"):
        gc.compile(gc.load(good_model), "ort-cpu", "-O1", measure=True, energy_window_s=0)
