"""Timing micro-benchmarks on a target to fit its kernel model on this machine: the full
calibration (``greencc cost calibrate``), the quick one a CPU target runs on first use, and
the profile a target named without one gets here (:func:`machine_profile`).

It sits in the execution layer, below the driver, because the driver resolves a compile's
target (and so its profile) before anything else; what is fitted lives in
:mod:`greencc.cost.kernel_model`, which never runs a model.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from greencc import __version__
from greencc.cost.host import host_profile
from greencc.cost.kernel_model import (
    BenchmarkResult,
    Calibration,
    NodeFeatures,
    find_calibration,
    fit_calibration,
    initial_profile,
    node_features,
    resolve_dims_of,
)
from greencc.cost.profile import HardwareProfile
from greencc.errors import GreenccError, UsageError
from greencc.execution.microbenchmarks import (
    QUICK_DECISIVE,
    MicroBenchmark,
    default_benchmarks,
    quick_benchmarks,
)
from greencc.frontend.onnx_file import load
from greencc.ir.every_value import every_value
from greencc.ir.io import save_model
from greencc.model import Model
from greencc.target import CompiledModel, Target, resolve_target
from greencc.verify.feeds import random_feeds

log = logging.getLogger(__name__)

# GREENCC_HOST_PROFILE: what a CPU target named without a profile prices on, when no
# calibration of this machine is saved: "calibrate" (default) this machine's detected
# profile refined by a quick calibration on first use, saved; "detect" the detected
# profile, nothing run; "off" the target's shipped socket profile.
HOST_PROFILE_ENV = "GREENCC_HOST_PROFILE"
HOST_PROFILE_MODES = ("calibrate", "detect", "off")
# Targets that run on this machine's CPU cores, and those a quick calibration can time
# (one ONNX Runtime session per micro-benchmark; a TVM build each would take minutes).
HOST_TARGETS = ("ort-cpu", "tvm-llvm")
QUICK_CALIBRATED_TARGETS = ("ort-cpu",)
# Seconds each quick micro-benchmark is timed for (one round): the suite then takes
# 12-15 s on 2 shared cores, sessions and fit included.
QUICK_MIN_TIME_S = 0.1
# Seconds a quick calibration may take: no micro-benchmark starts after it (a busy machine).
QUICK_BUDGET_S = 25.0

# --------------------------------------------------------------------------------------
# Running the calibration
# --------------------------------------------------------------------------------------
class BackgroundLoad:
    """How busy the machine was with *other* work while a block ran (Linux ``/proc/stat``).

    ``other_cores``: CPU time used by other processes per second of wall time (cores);
    ``steal_cores``: time the hypervisor gave to other guests. Both are ``None`` where
    ``/proc/stat`` is unreadable. Timings taken while either is large are unreliable: a
    calibration or validation records them and warns.
    """

    def __init__(self) -> None:
        self.other_cores: float | None = None
        self.steal_cores: float | None = None
        self._start: tuple[float, float, float, float] | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            ticks = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
        values = [int(v) for v in fields]
        busy = sum(values[i] for i in (0, 1, 2, 5, 6) if i < len(values))  # user nice system irq softirq
        steal = values[7] if len(values) > 7 else 0
        own = os.times()
        return time.perf_counter(), busy / ticks, steal / ticks, own.user + own.system

    def __enter__(self) -> BackgroundLoad:
        self._start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return
        wall = end[0] - self._start[0]
        own = end[3] - self._start[3]
        self.other_cores = max((end[1] - self._start[1]) - own, 0.0) / wall
        self.steal_cores = max(end[2] - self._start[2], 0.0) / wall

    @property
    def noisy(self) -> bool:
        """True when others used more than a fifth of a core on average."""
        return (self.other_cores or 0.0) + (self.steal_cores or 0.0) > 0.2

    def to_dict(self) -> dict[str, Any]:
        """``other_cores``, ``steal_cores`` and ``noisy``."""
        return {"other_cores": self.other_cores, "steal_cores": self.steal_cores, "noisy": self.noisy}


class BudgetExhaustedError(UsageError):
    """A calibration's time budget ran out before it timed any micro-benchmark."""


def calibrate(
    target: Any = "ort-cpu",
    *,
    threads: int | None = None,
    benchmarks: Sequence[MicroBenchmark] | None = None,
    min_time_s: float = 0.25,
    rounds: int = 2,
    progress: Callable[[str, int, int], None] | None = None,
    budget_s: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Calibration:
    """Run the micro-benchmarks on ``target`` and fit its calibrated profile (not saved).

    ``threads`` defaults to the target's own default (this machine's core count for
    ort-cpu). Every benchmark is timed in each of ``rounds`` interleaved rounds for at
    least ``min_time_s`` seconds (median of calls after a warm-up); the lowest round median
    counts, so a transient slowdown from another tenant does not. ``progress(name, done,
    total)`` is called before each step.

    With ``budget_s``, no step starts once ``budget_s`` seconds (read on ``clock``) have
    passed: the fit uses the benchmarks timed by then, in suite order, and its ``fit``
    records them (``covered``), the rest (``skipped``) and ``elapsed_s``;
    :class:`BudgetExhaustedError` when the budget covers no benchmark.
    """

    options = {"threads": threads} if threads is not None else {}
    resolved = resolve_target(target, **options)
    resolved.require_available()
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UsageError(f"rounds={rounds!r} must be a positive integer")
    threads_used = int(resolved.options.get("threads") or os.cpu_count() or 1)
    template = HardwareProfile.named(type(resolved).profile_name)
    start = initial_profile(resolved.name, threads_used, template)
    suite = list(benchmarks if benchmarks is not None else default_benchmarks())
    if not suite:
        raise UsageError("calibration needs at least one micro-benchmark")
    started = clock()

    def out_of_time() -> bool:
        return budget_s is not None and clock() - started > budget_s

    steps = len(suite) * (1 + rounds)
    prepared: list[tuple[CompiledModel, dict[str, np.ndarray]]] = []
    features: list[NodeFeatures] = []
    medians = np.full((rounds, len(suite)), np.inf)

    def time_one(round_index: int, i: int) -> None:
        if progress is not None:
            progress(suite[i].name, len(suite) * (1 + round_index) + i, steps)
        compiled, feeds = prepared[i]
        medians[round_index, i] = compiled.benchmark(feeds, warmup=3, repeats=10, min_time_s=min_time_s).median_ms

    with BackgroundLoad() as load_meter:
        # Round 0 times each benchmark right after preparing it, so a budget that runs out
        # leaves the first benchmarks of the suite timed, not every one prepared and none timed.
        for done, bench in enumerate(suite):
            if out_of_time():
                break
            if progress is not None:
                progress(f"preparing {bench.name}", done, steps)
            model = load(bench.build())
            compiled = resolved.lower(model)
            prepared.append((compiled, compiled.check_feeds(random_feeds(model, seed=0))))
            features.append(node_features(target_graph(model), start))
            if not out_of_time():
                time_one(0, done)
        for round_index in range(1, rounds):
            for i in range(len(prepared)):
                if out_of_time():
                    break
                time_one(round_index, i)
    timed = [i for i in range(len(prepared)) if np.isfinite(medians[:, i]).any()]
    if not timed:
        raise BudgetExhaustedError(f"the calibration's budget of {budget_s} s ran out before any micro-benchmark "
                                   "was timed", hint="give it more time (budget_s), or calibrate on a quieter machine")
    results = [
        BenchmarkResult(suite[i].name, suite[i].op_class, suite[i].dtype, float(medians[:, i].min()),
                        nodes=len(prepared[i][0].model.graph))
        for i in timed
    ]
    if progress is not None:
        progress("fitting", steps, steps)
    calibration = fit_calibration(
        resolved.name, threads_used, start, template, results, [features[i] for i in timed],
        min_time_s=min_time_s, greencc_version=__version__,
    )
    measured = np.where(np.isfinite(medians[:, timed]), medians[:, timed], np.nan)  # a round cut short
    calibration.fit["rounds"] = rounds
    calibration.fit["round_spread_pct"] = float(np.median(100 * (np.nanmax(measured, 0) / np.nanmin(measured, 0) - 1)))
    calibration.fit["background_load"] = load_meter.to_dict()
    calibration.fit["features"] = [features[i].to_dict() for i in timed]
    if budget_s is not None:
        calibration.fit["covered"] = [suite[i].name for i in timed]
        calibration.fit["skipped"] = [bench.name for i, bench in enumerate(suite) if i not in timed]
        calibration.fit["elapsed_s"] = clock() - started
    return calibration


# --------------------------------------------------------------------------------------
# Prediction per fused kernel
# --------------------------------------------------------------------------------------
def target_graph(model: Model, dims: Mapping[str, int] | None = None, *, seed: int = 0,
                 disabled_optimizers: Sequence[str] = ()) -> Any:
    """The graph ONNX Runtime actually runs for ``model``, with every tensor's shape at ``dims``.

    ONNX Runtime optimises the model as the target gets it (symbolic dims kept, so shape
    computations stay in the graph as they do at run time) at the ``extended`` level: its
    fusions, without the CPU-specific NCHWc layout rewrite that ``all`` adds and the cost
    model has no ops for. The optimised graph is then run once on random inputs at
    ``dims`` with every intermediate tensor as an output, and each value gets the static
    shape and dtype observed, so contrib ops without shape inference are sized too.
    ``disabled_optimizers``: onnxruntime optimizers the target's sessions turn off (so the
    graph priced is the one they run).
    """
    import onnx_ir as ir
    import onnxruntime as ort


    dims = resolve_dims_of(model, dims)
    with tempfile.TemporaryDirectory(prefix="greencc-fused-") as tmp:
        source = save_model(model.ir, Path(tmp) / "model.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "fused.onnx")
        options.log_severity_level = 4
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(disabled_optimizers))
        proto = onnx.load(str(Path(tmp) / "fused.onnx"))
    fused = load(proto)
    observed = _observed_shapes(proto, random_feeds(model, seed=seed, dims=dims))
    for node in fused.graph:
        for value in node.outputs:
            shape = observed.get(value.name)
            if shape is not None:
                value.shape = ir.Shape(list(shape[0]))
                value.dtype = ir.DataType.from_numpy(shape[1])
    return fused


def _observed_shapes(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    try:
        values = every_value(proto, feeds)
    except Exception as exc:  # an exotic graph: fall back to shape inference alone
        log.info("could not observe the fused graph's shapes: %s", exc)
        return {}
    return {name: (tuple(a.shape), a.dtype) for name, a in values.items() if name not in feeds}


# --------------------------------------------------------------------------------------
# The profile of this machine
# --------------------------------------------------------------------------------------
def host_profile_mode() -> str:
    """``$GREENCC_HOST_PROFILE`` (``calibrate``, ``detect`` or ``off``; default ``calibrate``)."""
    mode = os.environ.get(HOST_PROFILE_ENV, "").strip().lower() or "calibrate"
    if mode not in HOST_PROFILE_MODES:
        raise UsageError(f"{HOST_PROFILE_ENV}={mode!r} is not a mode",
                         hint=f"choose one of {', '.join(HOST_PROFILE_MODES)}")
    return mode


# Quick calibrations that gave up in this process, by (target, threads): not retried
# before the next process, so a busy machine costs one budget per process, not per compile.
_GAVE_UP: set[tuple[str, Any]] = set()


def machine_profile(target: Target) -> HardwareProfile | None:
    """The profile ``target``, named without one, prices on here; ``None`` keeps its own.

    First a calibration of this machine for the target's threads, saved by ``greencc cost
    calibrate`` or by an earlier first use. Else, for a target running on this CPU
    (:data:`HOST_TARGETS`), by :func:`host_profile_mode`: ``calibrate`` runs
    :func:`quick_calibration` (ort-cpu) and uses what it saves, ``detect`` the profile
    :func:`~greencc.cost.host.host_profile` reads from the CPU, ``off`` nothing (the
    shipped socket profile). A quick calibration that fails, overruns its budget or ran on
    a busy machine saves nothing and leaves the detected profile for the rest of the process.
    """
    threads = target.options.get("threads")
    calibration = find_calibration(target.name, threads)
    if calibration is not None:
        return calibration.profile
    mode = host_profile_mode()
    if mode == "off" or target.name not in HOST_TARGETS or threads is None:
        return None
    if mode == "calibrate" and target.name in QUICK_CALIBRATED_TARGETS and (target.name, threads) not in _GAVE_UP:
        try:
            calibration = quick_calibration(target)
        except GreenccError as exc:
            log.warning("greencc: the quick calibration of %s failed (%s)", target.name, exc.message)
        if calibration is not None:
            return calibration.profile
        _GAVE_UP.add((target.name, threads))
        log.warning("greencc: pricing on the profile detected from the CPU (uncalibrated) in this process")
    return host_profile(target.name, int(threads), HardwareProfile.named(type(target).profile_name))


def quick_calibration(target: Target, *, benchmarks: Sequence[MicroBenchmark] | None = None,
                      min_time_s: float = QUICK_MIN_TIME_S, budget_s: float = QUICK_BUDGET_S,
                      clock: Callable[[], float] = time.perf_counter) -> Calibration | None:
    """Calibrate ``target`` on the quick suite (:func:`quick_benchmarks`, one round of
    ``min_time_s`` seconds each) within ``budget_s`` seconds (read on ``clock``) and save it
    where :func:`find_calibration` finds it; the record's ``fit`` says ``suite: quick``, its
    wall time (s) and which benchmarks the budget covered. The suite runs what -O3 decides
    on first (:data:`QUICK_DECISIVE`): a budget that stops before those are timed, or other
    work keeping the machine busy (the timings would be wrong for good), saves nothing and
    returns ``None``. ``greencc cost calibrate`` later replaces it with a fit of the full suite."""
    log.warning("greencc: calibrating %s (%s threads) on this machine once, at most %.0f s "
                "(saved for later runs; %s=detect skips it)", target.name, target.options.get("threads"),
                budget_s, HOST_PROFILE_ENV)
    suite = quick_benchmarks() if benchmarks is None else list(benchmarks)
    started = clock()
    try:
        calibration = calibrate(target, benchmarks=suite, min_time_s=min_time_s, rounds=1,
                                budget_s=budget_s, clock=clock)
    except BudgetExhaustedError:
        log.warning("greencc: the quick calibration ran out of its %.0f s before timing anything: is the "
                    "machine busy? Nothing saved", budget_s)
        return None
    wall_s = clock() - started
    missing = [name for name in QUICK_DECISIVE if name in {b.name for b in suite}
               and name not in calibration.fit["covered"]]
    if missing:
        log.warning("greencc: the quick calibration ran out of its %.0f s before timing %s: is the machine "
                    "busy? Nothing saved", budget_s, ", ".join(missing))
        return None
    if calibration.fit["background_load"]["noisy"]:
        log.warning("greencc: other work used %.1f core(s) during the quick calibration: nothing saved",
                    calibration.fit["background_load"]["other_cores"] or 0.0)
        return None
    calibration.fit["suite"] = "quick"
    calibration.fit["wall_s"] = wall_s
    skipped = calibration.fit["skipped"]
    profile = calibration.profile
    profile.description = f"{profile.description}: quick calibration on first use"
    covered = f"{len(calibration.fit['covered'])} of {len(suite)} micro-benchmarks" + (
        f" (the budget skipped {', '.join(skipped)})" if skipped else "")
    profile.calibration_note = (f"quick calibration on first use ({wall_s:.0f} s, {covered}; `greencc cost "
                                f"calibrate` fits the full suite): {profile.calibration_note}")
    path = calibration.save()
    log.warning("greencc: calibrated %s in %.1f s (%s; fit error median %.1f%%), saved as %s",
                target.name, wall_s, covered, calibration.fit["median_abs_pct"], path)
    return calibration
