"""The console ledger fits the width it is given (80, 100, 140 columns, with and without
measured columns): no line wider, no number or note cut, notes in full on their own lines,
and the columns left out to fit named."""

from __future__ import annotations

import pytest

from greencc.report.ledger import PassRow, Report

CLEANUP_STATS = {"simplify-shapes.resolved_shapes": 2, "remove-identity.removed": 12,
                 "cse.merged_initializers": 2, "dce.removed_initializers": 2}


def _measured(median: float) -> dict:
    return {"latency": {"median_ms": median, "p10_ms": median * 0.9, "p90_ms": median * 1.2},
            "energy": {"mj_per_inference": median * 3, "method": "rapl", "label": "measured (rapl: fake)"}}


def _report(measured: bool) -> Report:
    def row(name: str, modified: bool, nodes: int, energy: float, delta: float | None, **kw) -> PassRow:
        return PassRow(name, modified, 1234.5, nodes, 22_713_216, 90_300_000, {"float32": 1_435_400_000},
                       energy * 0.8, energy, delta_latency_ms=None if delta is None else delta * 0.8,
                       delta_energy_mj=delta, measured=_measured(energy / 10) if measured else None, **kw)

    rows = [
        row("(input)", False, 227, 129.851, None),
        row("cleanup", True, 224, 129.842, -0.009, stats=CLEANUP_STATS),
        row("quantize-int8{fallback=sensitivity,outlier_ratio=20}", True, 520, 41.334, -88.508,
            fidelity={"cosine_min": 0.99403, "max_abs_error": 0.0123}, stats={"quantized": 36, "float_fallback": 0}),
        row("prune-heads{ratio=0.25,score=fisher}", False, 520, 41.334, 0.0),
    ]
    return Report(model={}, target="ort-cpu", profile={"name": "ort-cpu-2threads"}, dims={"batch": 1, "seq": 128},
                  pipeline="", rows=rows,
                  near_misses=[{"pass": "prune-heads", "node": "graph", "reason": "no attention block found"}])


@pytest.mark.parametrize("measured", [False, True])
@pytest.mark.parametrize("width", [80, 100, 140])
def test_the_ledger_fits_and_cuts_nothing(width: int, measured: bool) -> None:
    text = _report(measured).to_console(width=width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in text
    flat = " ".join(text.split())
    for figure in ("129.851", "41.334", "-88.508", "0.994030", "227", "520"):
        assert figure in flat
    # Notes on their own lines, in full, and the reason the unchanged pass gives.
    notes = flat.split("notes (per pass; report.json has every counter):")[1]
    for key, value in CLEANUP_STATS.items():
        assert f"{key}={value}" in notes
    assert "3 prune-heads{ratio=0.25,score=fisher}: no change: graph: no attention block found" in notes
    if measured:
        assert "meas. ms" in text and "12.985" in flat


def test_narrow_widths_say_which_columns_they_left_out() -> None:
    wide = _report(True).to_console(width=140)
    narrow = _report(True).to_console(width=100)
    assert "left out" not in wide and "params" in wide and "22,713,216" in wide
    assert "(params" in narrow and "left out to fit 100 columns: report.json has them)" in narrow
    assert "22,713,216" not in narrow
    assert "(params left out to fit 100 columns" in _report(False).to_console(width=100)
