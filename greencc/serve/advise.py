"""``greencc advise``: energy per inference of a compiled artifact against intra-op thread
count and batch size, and the energy-optimal setting whose batch latency meets a target.

Each point is timed (median of several calls) and metered over its own window with the
best meter here (NVML/RAPL where readable, else the labelled CPU-time estimate). CPU
frequency and GPU power limit are reported as knobs only where the machine exposes them
(cpufreq in sysfs, NVML); where absent the advice says so.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from greencc.errors import UsageError
from greencc.measure.energy import MEASURED_METHODS, Meter, NvmlMeter, best_meter, measure_energy
from greencc.measure.latency import measure_latency
from greencc.serve.batching import batchable_variant
from greencc.target.artifact import CompiledModel
from greencc.verify.feeds import random_feeds

CPUFREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq")
DEFAULT_BATCHES = (1, 2, 4, 8)


@dataclass(frozen=True)
class AdvicePoint:
    """One setting: ``threads``, ``batch`` rows per call; ``batch_ms`` the median latency of
    one call (ms), ``j_per_inference`` its energy per row (J) by ``method``."""

    threads: int
    batch: int
    batch_ms: float
    j_per_inference: float
    method: str
    within_slo: bool

    @property
    def inferences_per_s(self) -> float:
        """Rows per second one worker reaches at this setting."""
        return self.batch / self.batch_ms * 1000.0 if self.batch_ms > 0 else 0.0


@dataclass
class Advice:
    """The curve, the energy-optimal point within ``slo_ms`` (``None`` when none meets it),
    whether the energy was measured, and the knobs this machine does not expose."""

    slo_ms: float
    points: list[AdvicePoint]
    measured: bool
    meter: str
    knobs: dict[str, str] = field(default_factory=dict)

    @property
    def best(self) -> AdvicePoint | None:
        """Least J/inference among the points within the latency target."""
        within = [p for p in self.points if p.within_slo]
        return min(within, key=lambda p: p.j_per_inference) if within else None

    @property
    def label(self) -> str:
        """``measured (rapl: ...)`` or ``estimated (estimate:cpu-time×tdp: ...)``."""
        return f"{'measured' if self.measured else 'estimated'} ({self.meter})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (the HTML report's advice section reads it)."""
        best = self.best
        return {"slo_ms": self.slo_ms, "measured": self.measured, "label": self.label, "knobs": self.knobs,
                "points": [{**asdict(p), "inferences_per_s": p.inferences_per_s} for p in self.points],
                "best": asdict(best) if best else None}

    def to_text(self) -> str:
        """The curve as a table, the recommendation and the knobs not swept."""
        lines = [f"energy per inference vs threads and batch — {self.label}",
                 f"{'threads':>7} {'batch':>5} {'batch ms':>9} {'inf/s':>9} {'mJ/inf':>8}  within {self.slo_ms:g} ms"]
        for p in self.points:
            mark = " <- best" if p is self.best else ""
            lines.append(f"{p.threads:>7} {p.batch:>5} {p.batch_ms:>9.3f} {p.inferences_per_s:>9.0f} "
                         f"{p.j_per_inference * 1e3:>8.4f}  {'yes' if p.within_slo else 'no'}{mark}")
        best = self.best
        if best is None:
            lines.append(f"no setting meets {self.slo_ms:g} ms: relax --slo-ms or compile a faster variant")
        else:
            lines.append(f"recommendation: --threads {best.threads}, batches of {best.batch} "
                         f"({best.j_per_inference * 1e3:.4f} mJ/inference {'measured' if self.measured else 'estimated'}, "
                         f"{best.batch_ms:.3f} ms per batch)")
        lines += [f"{knob}: {state}" for knob, state in self.knobs.items()]
        return "\n".join(lines)


def exposed_knobs(nvml: Any = None) -> dict[str, str]:
    """Whether CPU frequency (cpufreq) and GPU power limit (NVML) are exposed here."""
    if CPUFREQ.is_dir():
        cpu = f"exposed at {CPUFREQ} but not swept (greencc does not change the governor)"
    else:
        cpu = f"not exposed here ({CPUFREQ} is absent: a VM or container), so not swept"
    state = NvmlMeter(nvml=nvml).available()
    gpu = ("exposed through NVML but not swept (setting it needs root; the artifact runs on the CPU)"
           if state.ok else f"not exposed here ({state.reason}), so not swept")
    return {"CPU frequency": cpu, "GPU power limit": gpu}


def advise(
    compiled: CompiledModel,
    slo_ms: float,
    *,
    threads: list[int] | None = None,
    batches: tuple[int, ...] = DEFAULT_BATCHES,
    window_s: float = 0.5,
    meter: Meter | None = None,
) -> Advice:
    """Sweep ``threads`` (default 1 … cores) × ``batches`` (only 1 for a model without a
    symbolic batch dim); energy is measured over ``window_s`` seconds per point."""
    if not slo_ms > 0:
        raise UsageError(f"--slo-ms {slo_ms!r} must be a positive number of ms")
    cores = os.cpu_count() or 1
    threads = threads or list(range(1, cores + 1))
    if meter is None:
        meter = best_meter("cpu" if "cpu" in compiled.target else "any").meter
    lead = compiled.signature["inputs"][0]["shape"][0] if compiled.signature["inputs"][0]["shape"] else None
    sizes = batches if batchable_variant(compiled.signature) else (1,)
    points = []
    for count in threads:
        runner = compiled.with_options(threads=count) if count != compiled.options.get("threads") else compiled
        for batch in sizes:
            dims = {**compiled.dims, **({lead: batch} if isinstance(lead, str) else {})}
            arrays = runner.check_feeds(random_feeds(compiled.model, seed=0, dims=dims))

            def call(runner: CompiledModel = runner, arrays: dict[str, Any] = arrays) -> Any:
                return runner._run(arrays)

            latency = measure_latency(call, warmup=2, repeats=5, min_time_s=0.1)
            energy = measure_energy(call, meter=meter, idle_s=0, warmup=0, min_window_s=window_s,
                                    inferences_per_call=batch)
            points.append(AdvicePoint(count, batch, latency.median_ms, energy.j_per_inference, energy.method,
                                      latency.median_ms <= slo_ms))
    return Advice(slo_ms, points, meter.method in MEASURED_METHODS, f"{meter.method}: {meter.describe()}",
                  exposed_knobs())


__all__ = ["Advice", "AdvicePoint", "advise", "exposed_knobs"]
