"""``greencc cost calibrate``: run the micro-benchmarks through the real target with its
thread count and fit its kernel model (:mod:`greencc.cost.kernel_model`); and the fused
graph ONNX Runtime actually runs (:func:`target_graph`), which :func:`predict_latency`
prices per fused kernel.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from greencc import __version__
from greencc.calibration.benchmarks import MicroBenchmark, default_benchmarks
from greencc.cost.estimate import estimate_cost
from greencc.cost.kernel_model import (
    BenchmarkResult,
    Calibration,
    KernelModel,
    NodeFeatures,
    fit_calibration,
    initial_profile,
    node_features,
)
from greencc.cost.profile import HardwareProfile
from greencc.driver import as_model, resolve_dims
from greencc.errors import UsageError
from greencc.frontend.onnx_file import load
from greencc.ir.io import save_model
from greencc.target import resolve_target
from greencc.verify.feeds import random_feeds

log = logging.getLogger(__name__)


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
def target_graph(model: Any, dims: Mapping[str, int] | None = None, *, seed: int = 0) -> Any:
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


    model = as_model(model)
    dims = resolve_dims(model, dims)
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


@dataclass
class Prediction:
    """A latency prediction (ms per inference) and how it was made."""

    latency_ms: float
    method: str
    nodes: int
    kernels: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)


def predict_latency(model: Any, calibration: Calibration | HardwareProfile | str,
                    dims: Mapping[str, int] | None = None) -> Prediction:
    """Predicted latency of ``model`` per inference on the calibrated target.

    With a :class:`Calibration`: its kernel model over :func:`target_graph` (what ONNX
    Runtime runs). With a plain profile: :func:`~greencc.cost.estimate.estimate_cost`
    over the same fused graph (what the profile alone can say).
    """

    model = as_model(model)
    dims = resolve_dims(model, dims)
    fused = target_graph(model, dims)
    if isinstance(calibration, Calibration):
        kernel_model = KernelModel.from_dict(calibration.fit["kernel_model"])
        features = node_features(fused, calibration.profile, dims)
        return Prediction(kernel_model.predict_s(features) * 1e3,
                          f"model:kernels({calibration.profile.name}, fused by onnxruntime)",
                          len(model.graph), len(fused.graph))
    cost = estimate_cost(fused, calibration, dims=dims)
    return Prediction(cost.latency_ms, f"model:cost({cost.profile}, fused by onnxruntime)",
                      len(model.graph), len(fused.graph))


