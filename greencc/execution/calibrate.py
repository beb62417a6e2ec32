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
from greencc.execution.microbenchmarks import MicroBenchmark, default_benchmarks, quick_benchmarks
from greencc.frontend.onnx_file import load
from greencc.ir.io import save_model
from greencc.model import Model
from greencc.target import Target, resolve_target
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
# about 15 s on 2 cores, sessions and fit included.
QUICK_MIN_TIME_S = 0.1
# Seconds a quick calibration may take before it gives up (a busy machine).
QUICK_BUDGET_S = 30.0

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


def calibrate(
    target: Any = "ort-cpu",
    *,
    threads: int | None = None,
    benchmarks: Sequence[MicroBenchmark] | None = None,
    min_time_s: float = 0.25,
    rounds: int = 2,
    progress: Callable[[str, int, int], None] | None = None,
) -> Calibration:
    """Run the micro-benchmarks on ``target`` and fit its calibrated profile (not saved).

    ``threads`` defaults to the target's own default (this machine's core count for
    ort-cpu). Every benchmark is timed in each of ``rounds`` interleaved rounds for at
    least ``min_time_s`` seconds (median of calls after a warm-up); the lowest round median
    counts, so a transient slowdown from another tenant does not. ``progress(name, done,
    total)`` is called before each step.
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

    steps = len(suite) * (1 + rounds)
    prepared = []
    features: list[NodeFeatures] = []
    for done, bench in enumerate(suite):
        if progress is not None:
            progress(f"preparing {bench.name}", done, steps)
        model = load(bench.build())
        compiled = resolved.lower(model)
        prepared.append((compiled, compiled.check_feeds(random_feeds(model, seed=0))))
        features.append(node_features(target_graph(model), start))
    medians = np.full((rounds, len(suite)), np.inf)
    with BackgroundLoad() as load_meter:
        for round_index in range(rounds):
            for i, (bench, (compiled, feeds)) in enumerate(zip(suite, prepared, strict=True)):
                if progress is not None:
                    progress(bench.name, len(suite) * (1 + round_index) + i, steps)
                stats = compiled.benchmark(feeds, warmup=3, repeats=10, min_time_s=min_time_s)
                medians[round_index, i] = stats.median_ms
    results = [
        BenchmarkResult(bench.name, bench.op_class, bench.dtype, float(medians[:, i].min()),
                        nodes=len(compiled.model.graph))
        for i, (bench, (compiled, _)) in enumerate(zip(suite, prepared, strict=True))
    ]
    if progress is not None:
        progress("fitting", steps, steps)
    calibration = fit_calibration(
        resolved.name, threads_used, start, template, results, features, min_time_s=min_time_s,
        greencc_version=__version__,
    )
    calibration.fit["rounds"] = rounds
    calibration.fit["round_spread_pct"] = float(np.median(100 * (medians.max(0) / medians.min(0) - 1)))
    calibration.fit["background_load"] = load_meter.to_dict()
    calibration.fit["features"] = [f.to_dict() for f in features]
    return calibration


# --------------------------------------------------------------------------------------
# Prediction per fused kernel
# --------------------------------------------------------------------------------------
def target_graph(model: Model, dims: Mapping[str, int] | None = None, *, seed: int = 0) -> Any:
    """The graph ONNX Runtime actually runs for ``model``, with every tensor's shape at ``dims``.

    ONNX Runtime optimises the model as the target gets it (symbolic dims kept, so shape
    computations stay in the graph as they do at run time) at the ``extended`` level: its
    fusions, without the CPU-specific NCHWc layout rewrite that ``all`` adds and the cost
    model has no ops for. The optimised graph is then run once on random inputs at
    ``dims`` with every intermediate tensor as an output, and each value gets the static
    shape and dtype observed, so contrib ops without shape inference are sized too.
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
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
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
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    existing = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in existing:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                existing.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        arrays = session.run(names, dict(feeds))
    except Exception as exc:  # an exotic graph: fall back to shape inference alone
        log.info("could not observe the fused graph's shapes: %s", exc)
        return {}
    return {name: (tuple(a.shape), a.dtype) for name, a in zip(names, arrays, strict=True)
            if isinstance(a, np.ndarray)}


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


class _OverBudget(Exception):
    """The quick calibration ran past its budget (raised from its progress callback)."""


def quick_calibration(target: Target, *, benchmarks: Sequence[MicroBenchmark] | None = None,
                      min_time_s: float = QUICK_MIN_TIME_S, budget_s: float = QUICK_BUDGET_S) -> Calibration | None:
    """Calibrate ``target`` on the quick suite (:func:`quick_benchmarks`, one round of
    ``min_time_s`` seconds each) and save it where :func:`find_calibration` finds it; the
    record's ``fit`` says ``suite: quick`` and its wall time (s). ``None``, with nothing
    saved, when it runs past ``budget_s`` seconds or other work kept the machine busy
    (its timings would be wrong for good). ``greencc cost calibrate`` later replaces it
    with a fit of the full suite."""
    log.warning("greencc: calibrating %s (%s threads) on this machine once, at most %.0f s "
                "(saved for later runs; %s=detect skips it)", target.name, target.options.get("threads"),
                budget_s, HOST_PROFILE_ENV)
    started = time.perf_counter()

    def deadline(name: str, done: int, total: int) -> None:
        if time.perf_counter() - started > budget_s:
            raise _OverBudget(name)

    try:
        calibration = calibrate(target, benchmarks=quick_benchmarks() if benchmarks is None else benchmarks,
                                min_time_s=min_time_s, rounds=1, progress=deadline)
    except _OverBudget as stopped:
        log.warning("greencc: the quick calibration ran past %.0f s (at %s): is the machine busy? "
                    "Nothing saved", budget_s, stopped)
        return None
    wall_s = time.perf_counter() - started
    if calibration.fit["background_load"]["noisy"]:
        log.warning("greencc: other work used %.1f core(s) during the quick calibration: nothing saved",
                    calibration.fit["background_load"]["other_cores"] or 0.0)
        return None
    calibration.fit["suite"] = "quick"
    calibration.fit["wall_s"] = wall_s
    profile = calibration.profile
    profile.description = f"{profile.description}: quick calibration on first use"
    profile.calibration_note = (f"quick calibration on first use ({wall_s:.0f} s; `greencc cost calibrate` "
                                f"fits the full suite): {profile.calibration_note}")
    path = calibration.save()
    log.warning("greencc: calibrated %s in %.1f s (fit error median %.1f%%), saved as %s",
                target.name, wall_s, calibration.fit["median_abs_pct"], path)
    return calibration
