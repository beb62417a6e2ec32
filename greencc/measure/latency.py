"""The latency harness: time a callable after a warm-up and summarise the per-call times.

Each call is timed on its own with ``perf_counter_ns`` (monotonic, nanoseconds), so the
summary shows the spread, not just an average; the thread count is recorded with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from time import perf_counter_ns
from typing import Any

import numpy as np

from greencc.errors import UsageError

_NS_PER_MS = 1e6


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-call latencies in milliseconds.

    Percentiles use linear interpolation (numpy's default); ``iqr_ms`` is p75 - p25.
    ``repeats`` is the number of timed calls (at least the number asked for), ``warmup``
    the untimed calls before them, ``threads`` the intra-op thread count (``None`` when
    the caller did not say), ``shapes`` the input shapes timed (input name -> dims; ``None``
    when the caller did not say).
    """

    median_ms: float
    mean_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    iqr_ms: float
    repeats: int
    warmup: int
    threads: int | None
    shapes: dict[str, list[int]] | None = None

    @classmethod
    def from_samples(
        cls, samples_ms: list[float] | np.ndarray, *, warmup: int = 0, threads: int | None = None
    ) -> LatencyStats:
        """Summarise per-call times (ms)."""
        times = np.asarray(samples_ms, dtype=np.float64)
        if times.size == 0:
            raise UsageError("no latency samples to summarise", hint="time at least one call")
        p10, p25, p50, p75, p90 = np.percentile(times, [10, 25, 50, 75, 90])
        return cls(
            median_ms=float(p50),
            mean_ms=float(times.mean()),
            p10_ms=float(p10),
            p90_ms=float(p90),
            min_ms=float(times.min()),
            max_ms=float(times.max()),
            iqr_ms=float(p75 - p25),
            repeats=int(times.size),
            warmup=warmup,
            threads=threads,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of these statistics (``shapes`` only when known)."""
        data = asdict(self)
        if self.shapes is None:
            del data["shapes"]
        return data

    def __str__(self) -> str:
        threads = f", {self.threads} threads" if self.threads is not None else ""
        return (
            f"median {self.median_ms:.3f} ms (p10 {self.p10_ms:.3f}, p90 {self.p90_ms:.3f}, "
            f"IQR {self.iqr_ms:.3f}) over {self.repeats} runs after {self.warmup} warm-up{threads}"
            + (f" at {describe_shapes(self.shapes)}" if self.shapes else "")
        )


def describe_shapes(shapes: Mapping[str, Sequence[int]]) -> str:
    """``input_ids[1, 128], attention_mask[1, 128]``."""
    return ", ".join(f"{name}[{', '.join(map(str, dims))}]" for name, dims in shapes.items())


def measure_latency(
    fn: Callable[[], Any],
    *,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.0,
    threads: int | None = None,
) -> LatencyStats:
    """Call ``fn()`` ``warmup`` times untimed, then time it per call.

    Timed calls continue until at least ``repeats`` calls were made and at least
    ``min_time_s`` seconds passed in the timed phase. ``threads`` is only recorded (the
    caller configures its runtime).
    """
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise UsageError(f"warmup={warmup!r} must be a non-negative integer")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UsageError(f"repeats={repeats!r} must be a positive integer")
    if not isinstance(min_time_s, (int, float)) or not math.isfinite(min_time_s) or min_time_s < 0:
        raise UsageError(f"min_time_s={min_time_s!r} must be a non-negative number of seconds")
    for _ in range(warmup):
        fn()
    min_time_ns = int(min_time_s * 1e9)
    samples_ns: list[int] = []
    start = perf_counter_ns()
    while True:
        before = perf_counter_ns()
        fn()
        after = perf_counter_ns()
        samples_ns.append(after - before)
        if len(samples_ns) >= repeats and after - start >= min_time_ns:
            break
    samples_ms = np.asarray(samples_ns, dtype=np.float64) / _NS_PER_MS
    return LatencyStats.from_samples(samples_ms, warmup=warmup, threads=threads)
