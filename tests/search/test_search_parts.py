"""The search's parts without Ray: the space (grid, pipeline text, space file), the SQLite
store, the Pareto front, the cost-model screen's rewrite and verdict, and the report's
front with links to each ledger."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import pytest

from greencc.config import CompileConfig
from greencc.errors import UsageError
from greencc.search.result import SearchResult, front_objectives, pareto_front
from greencc.search.runner import _values
from greencc.search.screen import Screen
from greencc.search.space import TEMPLATE, SearchSpace, default_space, store_key
from greencc.search.store import (
    BROKE_BUDGET,
    COMPILED,
    MEASURED,
    SCREENED,
    Candidate,
    CandidateStore,
)
from greencc.search.worker import pipeline_prefix, starts_with
from tests.models import weighted_model_proto

SPACE = SearchSpace(presets=("-O1", "-O2"), template="cleanup,prune-heads,quantize-int8{fallback=sensitivity}",
                    options={"prune-heads": {"ratio": (0.0, 0.5)}, "quantize-int8": {"enabled": (False, True)}},
                    threads=(1, 2))


def test_grid_lists_presets_then_every_template_combination() -> None:
    points = list(SPACE.grid())
    assert len(points) == SPACE.size() == 2 * 2 + 4 * 2  # presets x threads, template x threads
    assert points[0] == {"pipeline": "-O1", "target": "ort-cpu", "threads": 1}
    texts = {SPACE.pipeline_text(p) for p in points if p["pipeline"] == TEMPLATE}
    # a 0 ratio and enabled=false drop their pass; the template's own options stay
    assert texts == {"cleanup", "cleanup,prune-heads{ratio=0.5}", "cleanup,quantize-int8{fallback=sensitivity}",
                     "cleanup,prune-heads{ratio=0.5},quantize-int8{fallback=sensitivity}"}


def test_a_point_is_a_compile_config_with_a_stable_digest() -> None:
    base = CompileConfig(model="m.onnx", budget="cos=0.99", seed=3)
    point = {"pipeline": TEMPLATE, "target": "ort-cpu", "threads": 2, "prune-heads.ratio": 0.5,
             "quantize-int8.enabled": False}
    config = SPACE.config(point, base)
    assert (config.pipeline, config.threads, config.budget, config.seed) == ("cleanup,prune-heads{ratio=0.5}", 2,
                                                                             "cos=0.99", 3)
    assert config.digest == SPACE.config(dict(point), base).digest != SPACE.config({**point, "threads": 1}, base).digest


def test_the_store_key_expands_presets() -> None:
    base = CompileConfig(model="m.onnx", budget="cos=0.99")
    key = {text: store_key(dataclasses.replace(base, pipeline=text)) for text in ("-O2", "cleanup,fuse,dce", "-O3")}
    assert key["-O2"] == key["cleanup,fuse,dce"] != key["-O3"]


def test_the_prefix_up_to_a_breaking_pass() -> None:
    prefix = pipeline_prefix("cleanup,prune-heads{ratio=0.25},prune-ffn{share=0.2},fuse", "prune-heads{ratio=0.25}")
    assert prefix == "cleanup,prune-heads{ratio=0.25}"
    assert starts_with("cleanup,prune-heads{ratio=0.25},fuse,dce", prefix)
    assert not starts_with("cleanup,prune-heads{ratio=0.5},fuse", prefix) and not starts_with("cleanup", prefix)
    assert pipeline_prefix("green", "prune-heads{share=0.4}") == "cleanup,prune-heads{share=0.4}"  # preset expanded
    assert pipeline_prefix("-O2", "quantize-int8") is None


def test_a_candidate_that_broke_the_budget_is_told_as_costly_as_the_costliest_built() -> None:
    built = [_candidate("a", 3.0, 2.0, 1.0), _candidate("b", 1.0, 1.0, 0.995)]
    broken = Candidate("c", {}, {"pipeline": "c"}, BROKE_BUDGET, fidelity=0.95)
    assert _values(broken, "energy", built) == (3.0, pytest.approx(0.05))
    assert _values(broken, "energy", []) is None  # nothing built yet: told as a failure
    assert _values(built[1], "energy", built) == (1.0, pytest.approx(0.005))


def test_space_file_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text('presets = ["-O2"]\nthreads = [0, 2]\ntemplate = "cleanup,prune-ffn"\n'
                    '[options."prune-ffn"]\nratio = [0.25, 0.5]\n')
    space = SearchSpace.from_toml(path)
    assert space.threads == (None, 2) and space.size() == 2 + 2 * 2
    path.write_text('template = "cleanup"\n[options."prune-ffn"]\nratio = [0.5]\n')
    with pytest.raises(UsageError, match="options for 'prune-ffn', which its template lacks"):
        SearchSpace.from_toml(path)
    path.write_text('presets = ["-O2"]\ncolour = "green"\n')
    with pytest.raises(UsageError, match="no field 'colour'"):
        SearchSpace.from_toml(path)


def test_default_space_per_model_kind() -> None:
    encoder, decoder = default_space(decoder=False), default_space(decoder=True)
    assert "prune-heads.ratio" in encoder.choices() and "quantize-weights.bits" in decoder.choices()
    assert "prune-heads.ratio" not in decoder.choices()
    # without calibration data static int8 refuses, recover declines, the method is unused
    assert "quantize-int8.mode" not in encoder.choices() and "recover" not in encoder.template
    calibrated = default_space(decoder=False, calibrated=True).choices()
    assert calibrated["quantize-int8.mode"] == ("dynamic", "static") and "quantize-int8.method" in calibrated


def _candidate(digest: str, energy: float, latency: float, fidelity: float, status: str = MEASURED) -> Candidate:
    return Candidate(digest, {"pipeline": digest}, {"pipeline": digest}, status, est_energy_mj=energy,
                     est_latency_ms=latency, measured_latency_ms=latency, fidelity=fidelity)


def test_store_round_trips_and_survives_reopening(tmp_path: Path) -> None:
    with CandidateStore(tmp_path) as store:
        store.put(_candidate("a", 1.0, 2.0, 0.999))
        store.put(Candidate("b", {}, {"pipeline": "x"}, SCREENED, reason="dominated"))
        store.set_meta({"objective": "energy"})
    with CandidateStore(tmp_path) as store:
        assert len(store) == 2 and [c.seq for c in store] == [1, 2]
        stored = store.get("a")
        assert stored is not None and stored.fidelity == 0.999 and stored.params == {"pipeline": "a"}
        assert store.get("b").reason == "dominated" and store.get("zzz") is None
        assert store.meta() == {"objective": "energy"}


def test_a_store_written_before_a_column_existed_gains_it(tmp_path: Path) -> None:
    import sqlite3

    with CandidateStore(tmp_path) as store:
        store.put(_candidate("a", 1.0, 2.0, 0.999))
    db = sqlite3.connect(tmp_path / "search.db")
    db.execute("ALTER TABLE candidates DROP COLUMN compile_start")
    db.commit()
    db.close()
    with CandidateStore(tmp_path) as store:
        assert store.get("a").compile_start is None
        store.put(Candidate("b", {}, {"pipeline": "x"}, COMPILED, compile_start=5.0))
        assert store.get("b").compile_start == 5.0 and len(store) == 2


def test_pareto_front_keeps_the_non_dominated() -> None:
    exact = _candidate("exact", 3.0, 2.0, 1.0)
    cheap = _candidate("cheap", 1.0, 1.5, 0.995)
    worse = _candidate("worse", 1.5, 1.6, 0.99)  # dominated by cheap in every axis
    fast = _candidate("fast", 2.0, 0.5, 0.99)
    front = pareto_front([exact, cheap, worse, fast], front_objectives("energy"))
    assert {c.digest for c in front} == {"exact", "cheap", "fast"}
    result = SearchResult(Path("."), "energy", "cos=0.99", [exact, cheap, worse, fast])
    assert result.best().digest == "cheap" and result.best("latency").digest == "fast"
    assert list(result.to_dataframe()["on_front"]) == [True, True, False, True]


def test_once_any_was_measured_the_front_holds_only_measured_candidates() -> None:
    measured = _candidate("measured", 2.0, 30.0, 1.0)
    estimated = _candidate("estimated", 2.0, 4.0, 1.0, COMPILED)
    estimated.measured_latency_ms = None  # its 4 ms is the cost model's, not a measurement
    assert [c.digest for c in SearchResult(Path("."), "energy", None, [measured, estimated]).pareto] == ["measured"]
    assert [c.digest for c in SearchResult(Path("."), "energy", None, [estimated]).pareto] == ["estimated"]


def test_screen_prices_optimistically_and_discards_only_below_an_exact_point(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(weighted_model_proto(), path)
    screen = Screen(str(path))
    assert screen.optimistic("cleanup,prune-heads{share=0.3},quantize-int8{fallback=sensitivity,method=entropy}") == (
        "cleanup,prune-heads{ratio=0.5,score=magnitude},quantize-int8{fallback=none,method=minmax}")
    estimate = screen.estimate(CompileConfig(model=str(path), pipeline="-O2", dims={"batch": 4}))
    assert estimate is not None and estimate.energy_mj > 0 and estimate.latency_ms > 0
    cheaper_exact = _candidate("-O2", estimate.energy_mj / 2, estimate.latency_ms / 2, 1.0, COMPILED)
    cheaper_lossy = _candidate("int8", estimate.energy_mj / 2, estimate.latency_ms / 2, 0.999, COMPILED)
    assert "exact '-O2'" in screen.verdict(estimate, [cheaper_exact])
    assert screen.verdict(estimate, [cheaper_lossy]) is None  # a lossy point may lose to it on fidelity
    close = _candidate("-O1", estimate.energy_mj * 0.99, estimate.latency_ms * 0.99, 1.0, COMPILED)
    assert screen.verdict(estimate, [close]) is None  # within the margin


def test_report_plots_the_front_and_links_each_ledger(tmp_path: Path) -> None:
    import greencc as gc
    from greencc.report.html import render_html

    path = tmp_path / "m.onnx"
    onnx.save(weighted_model_proto(), path)
    compiled = gc.compile(str(path), pipeline="-O2", dims={"batch": 4}, output_dir=tmp_path / "candidates" / "a")
    point = _candidate("a", 1.0, 1.0, 1.0)
    point.artifact = str(tmp_path / "candidates" / "a")
    result = SearchResult(tmp_path, "energy", None, [point, _candidate("b", 2.0, 2.0, 0.99)])
    page = result.write_report().read_text(encoding="utf-8")
    assert "<h2>Search: Pareto front</h2>" in page and 'href="candidates/a/report.html"' in page
    assert "fidelity loss" in page and compiled.report is not None
    assert render_html(compiled.report).count("Pareto") == 0


def test_gc_search_is_lazy_and_callable_after_the_package_is_imported() -> None:
    import subprocess
    import sys

    code = ("import sys, greencc as gc, greencc.search; "
            "assert callable(gc.search) and callable(greencc.search.search); "
            "print(sorted(m for m in ('ray', 'optuna', 'torch', 'tvm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
