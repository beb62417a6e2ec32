"""Runs ONNX's backend test suite through greencc: for every test that ONNX Runtime itself
runs correctly, ``gc.compile`` to ort-cpu at -O1 and -O2 (verification on, the test's own
inputs as calibration data), then the compiled model on every data set, checked with the
test's own rtol/atol.

Each run lands in one category (``CATEGORIES``); ``python -m tests.conformance.runner``
runs the whole suite, prints the table and writes the outcomes as JSON.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import multiprocessing
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from tests.conformance.suite import ConformanceCase, DataSet, Value, load_cases

LEVELS = ("-O1", "-O2")
# "pass": outputs within the test's tolerances. "wrong-numbers": compiled, ran, and gave
# other outputs. "unexpected-exception": anything but a GreenccError. "broken": a
# GreenccError on a model ONNX Runtime runs correctly (a pass, lowering or the compiled
# model failed). "declined": verification could not run the original model and said so.
CATEGORIES = ("pass", "wrong-numbers", "unexpected-exception", "broken", "declined")
# Tests ONNX Runtime itself cannot run correctly are not greencc's to pass.
NOT_RUNNABLE = ("not-materialized", "ort-fails")


@dataclasses.dataclass
class Outcome:
    """What one run of one test at one level gave; ``detail`` is the first line of the error."""

    name: str
    kind: str
    level: str
    category: str
    detail: str = ""
    seconds: float = 0.0


def feeds_of(model: onnx.ModelProto, data_set: DataSet) -> dict[str, Value]:
    """The data set's inputs by graph-input name (initializers are not fed)."""
    initializers = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in initializers]
    return dict(zip(names, data_set.inputs, strict=False))


def mismatch(expected: Sequence[Value], actual: Sequence[Value], rtol: float, atol: float) -> str | None:
    """Why ``actual`` differs from ``expected`` beyond the tolerances (None when it does not),
    compared as ONNX's backend runner compares them."""
    if len(expected) != len(actual):
        return f"{len(actual)} outputs, expected {len(expected)}"
    for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
        if isinstance(want, (list, tuple)) or isinstance(got, (list, tuple)):
            if not isinstance(want, (list, tuple)) or not isinstance(got, (list, tuple)):
                return f"output {i} is a {type(got).__name__}, expected a {type(want).__name__}"
            reason = mismatch(list(want), list(got), rtol, atol)
            if reason is not None:
                return f"output {i}: {reason}"
            continue
        if want is None or got is None:
            if want is not got:
                return f"output {i} is {got!r:.40}, expected {want!r:.40}"
            continue
        want, got = np.asarray(want), np.asarray(got)
        if want.shape != got.shape:
            return f"output {i} has shape {got.shape}, expected {want.shape}"
        if want.dtype == object or got.dtype == object:
            if not np.array_equal(want, got):
                return f"output {i}: strings differ"
            continue
        if want.dtype != got.dtype:
            return f"output {i} has dtype {got.dtype}, expected {want.dtype}"
        out_rtol = rtol
        if want.dtype.name == "bfloat16":
            out_rtol = max(rtol, 2**-6)
        if want.dtype.kind not in "biufc":
            want, got = want.astype(np.float32), got.astype(np.float32)
        try:
            np.testing.assert_allclose(got, want, rtol=out_rtol, atol=atol)
        except AssertionError as exc:
            return f"output {i}: " + " ".join(str(exc).split())[:200]
    return None


def ort_outputs(model: onnx.ModelProto, feeds: dict[str, Value]) -> list[Value]:
    """ONNX Runtime's own outputs for ``model`` on ``feeds`` (graph-output order)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def ort_runs(case: ConformanceCase) -> str | None:
    """Why ONNX Runtime cannot run ``case`` correctly (None when it can)."""
    if not case.materialized:
        return "not-materialized"
    try:
        for data_set in case.data_sets:
            got = ort_outputs(case.model, feeds_of(case.model, data_set))
            if mismatch(data_set.outputs, got, case.rtol, case.atol) is not None:
                return "ort-fails"
    except Exception:
        return "ort-fails"
    return None


def finite(feeds: dict[str, Value]) -> bool:
    """Whether every float array in ``feeds`` (sequences included) is free of NaN and inf."""
    arrays = [a for v in feeds.values() for a in (v if isinstance(v, (list, tuple)) else [v])]
    return all(np.isfinite(a).all() for a in arrays if isinstance(a, np.ndarray) and a.dtype.kind in "fc")


def run_level(case: ConformanceCase, level: str) -> Outcome:
    """Compile ``case`` to ort-cpu with ``level`` and check the compiled model's outputs.

    The test's inputs are the calibration data, unless they hold NaN or inf: calibration
    data must be finite (it sets quantization ranges), so such a test is verified on
    generated inputs and its compiled model still checked on its own.
    """
    import greencc as gc

    start = time.perf_counter()
    outcome = Outcome(case.name, case.kind, level, "pass")
    try:
        all_feeds = [feeds_of(case.model, d) for d in case.data_sets]
        calibration = all_feeds if all(finite(f) for f in all_feeds) else None
        compiled = gc.compile(case.model, "ort-cpu", level, calibration=calibration)
        names = [o.name for o in case.model.graph.output]
        for data_set, feeds in zip(case.data_sets, all_feeds, strict=True):
            result = compiled(feeds)
            reason = mismatch(data_set.outputs, [result[n] for n in names], case.rtol, case.atol)
            if reason is not None:
                outcome.category, outcome.detail = "wrong-numbers", reason
                break
    except gc.GreenccError as exc:
        outcome.category = "declined" if getattr(exc, "unverifiable", False) else "broken"
        outcome.detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    except Exception as exc:
        outcome.category = "unexpected-exception"
        outcome.detail = "".join(traceback.format_exception_only(exc)).strip().splitlines()[-1][:300]
    outcome.seconds = time.perf_counter() - start
    return outcome


def run_case(case: ConformanceCase, levels: Sequence[str] = LEVELS) -> list[Outcome]:
    """Every level's outcome for ``case``, or one not-runnable outcome when ONNX Runtime
    cannot run it correctly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        why = ort_runs(case)
        if why is not None:
            return [Outcome(case.name, case.kind, "-", why)]
        return [run_level(case, level) for level in levels]


_CASES: list[ConformanceCase] = []


def _run_index(index: int) -> list[Outcome]:
    return run_case(_CASES[index])


def run_suite(cases: Sequence[ConformanceCase], jobs: int = 1) -> list[Outcome]:
    """Outcomes of every case, on ``jobs`` forked worker processes."""
    _CASES[:] = cases
    if jobs <= 1:
        return [o for case in cases for o in run_case(case)]
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        return [o for outcomes in pool.map(_run_index, range(len(cases)), chunksize=4) for o in outcomes]


def summary(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Counts per category (runs), per level, plus the not-runnable tests."""
    counts = collections.Counter(o.category for o in outcomes)
    by_level = {level: collections.Counter(o.category for o in outcomes if o.level == level) for level in LEVELS}
    runnable_tests = len({o.name for o in outcomes if o.category not in NOT_RUNNABLE})
    runs = sum(counts[c] for c in CATEGORIES)
    return {
        "tests": len({o.name for o in outcomes}),
        "runnable_tests": runnable_tests,
        "runs": runs,
        "counts": {c: counts[c] for c in (*CATEGORIES, *NOT_RUNNABLE)},
        "by_level": {level: {c: by_level[level][c] for c in CATEGORIES} for level in LEVELS},
        "declined_percent": round(100.0 * counts["declined"] / runs, 2) if runs else 0.0,
    }


def table(outcomes: Sequence[Outcome]) -> str:
    """The summary as a plain-text table."""
    s = summary(outcomes)
    lines = [f"ONNX backend suite: {s['tests']} tests, {s['runnable_tests']} run correctly by ONNX Runtime, "
             f"{s['runs']} greencc runs ({', '.join(LEVELS)})",
             f"{'category':<22}" + "".join(f"{level:>8}" for level in LEVELS) + f"{'total':>8}"]
    for category in CATEGORIES:
        lines.append(f"{category:<22}" + "".join(f"{s['by_level'][lv][category]:>8}" for lv in LEVELS)
                     + f"{s['counts'][category]:>8}")
    for category in NOT_RUNNABLE:
        lines.append(f"{category + ' (tests)':<22}{'':>16}{s['counts'][category]:>8}")
    lines.append(f"declined: {s['declined_percent']}% of runs")
    for o in outcomes:
        if o.category in CATEGORIES and o.category != "pass":
            lines.append(f"  {o.category:<20} {o.level} {o.kind}/{o.name}: {o.detail}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; exit 1 when a run is wrong, raised unexpectedly or broke a valid model."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--json", default="conformance.json", help="where the outcomes go")
    parser.add_argument("--only", default=None, help="run the tests whose name contains this")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = load_cases()
    if args.only:
        cases = [c for c in cases if args.only in c.name]
    start = time.perf_counter()
    outcomes = run_suite(cases, args.jobs)
    print(table(outcomes))
    print(f"wall time {time.perf_counter() - start:.0f} s on {args.jobs} job(s)")
    with open(args.json, "w") as f:
        json.dump({"summary": summary(outcomes), "outcomes": [dataclasses.asdict(o) for o in outcomes]}, f, indent=1)
    counts = summary(outcomes)["counts"]
    return 1 if counts["wrong-numbers"] or counts["unexpected-exception"] or counts["broken"] else 0


if __name__ == "__main__":
    sys.exit(main())
