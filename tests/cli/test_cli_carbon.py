"""The command line's carbon and per-pass measurement flags end to end: --grid-intensity
with a location code (its table cited in the console and report.json), on compile and
bench, unknown codes, and --measure --measure-window filling the per-pass columns."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from greencc.cli import main

needs_codecarbon = pytest.mark.skipif(
    importlib.util.find_spec("codecarbon") is None, reason="the greencc[carbon] extra is not installed"
)


@pytest.fixture(autouse=True)
def no_calibrated_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENCC_CACHE_DIR", str(tmp_path / "cache"))


@needs_codecarbon
def test_compile_with_a_country_code_cites_the_table(good_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["compile", str(good_model), "-O1", "-o", str(out), "--grid-intensity", "FRA"]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "FRA (France): Our World in Data, 'Carbon intensity of electricity generation'" in printed
    assert "global_energy_mix.json" in printed and "gCO2e per 1k inferences" in printed
    factors = json.loads((out / "report.json").read_text())["carbon_factors"]
    assert factors["grid_location"] == "FRA" and 10 < factors["grid_g_per_kwh"] < 150
    assert "Our World in Data" in factors["grid_source"]
    assert main(["report", str(out / "report.json")]) == 0  # the citation survives the round trip
    assert "FRA (France)" in capsys.readouterr().out


@needs_codecarbon
def test_bench_prices_its_energy_with_a_us_state(good_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["compile", str(good_model), "-o", str(out), "-q"]) == 0
    assert main(["bench", str(out), "--repeats", "5", "--warmup", "1", "--energy",
                 "--grid-intensity", "USA:CA", "--pue", "1.2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    carbon = data["carbon"]
    assert carbon["grid_location"] == "USA:california" and carbon["pue"] == 1.2 and "eGRID" in carbon["grid_source"]
    assert carbon["energy_method"] == data["energy"]["method"]
    expected = data["energy"]["j_per_inference"] / 3.6e6 * 1.2 * carbon["grid_g_per_kwh"] * 1000
    assert carbon["g_per_1k_inferences"] == pytest.approx(expected)


def test_bench_carbon_flags_need_an_energy_figure(good_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["compile", str(good_model), "-o", str(out), "-q"]) == 0
    assert main(["bench", str(out), "--grid-intensity", "300"]) == 2
    assert "add --energy" in capsys.readouterr().err


@needs_codecarbon
def test_an_unknown_code_fails_before_any_work(good_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["compile", str(good_model), "-o", str(out), "--grid-intensity", "FRANCE"]) == 2
    err = capsys.readouterr().err
    assert "unknown grid location 'FRANCE'" in err and "did you mean FRA (France)" in err
    assert not out.exists()


def test_compile_measure_window_fills_the_per_pass_columns(good_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["compile", str(good_model), "--pipeline", "cleanup,cleanup", "-o", str(out), "--measure",
                 "--measure-window", "0.05"]) == 0
    printed = capsys.readouterr().out
    # Energy without a meter is the CPU-time estimate, titled so ("meas. mJ" only for a meter's).
    assert "meas. ms" in printed and "cpu-est mJ" in printed and " est" in printed
    assert "the pass changed nothing" in printed  # the second cleanup reuses the first's figure
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["measured"]["energy"]["method"] for r in rows] == ["estimate:cpu-time×tdp"] * 3
    assert all(r["measured"]["energy"]["window_s"] >= 0.05 for r in rows)
    assert rows[2]["measured"]["same_as_row"] == 1
