"""Energy windows: ``with energy_window("name") as w:`` or ``begin_window(name)`` /
``end_window(name)`` around any work, giving joules, gCO2e, duration and the meter's label.

Windows read one cumulative meter (:func:`~greencc.measure.energy.best_meter`: NVML or RAPL
where readable, else the labelled CPU-time estimate), so they nest and overlap freely and
are safe across threads: a window's energy is the counter's advance between its two reads,
which covers everything the metered device did meanwhile (the whole process for the
estimate), not only the calling thread. Finished windows are kept for CSV, JSON and
Prometheus export.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from greencc.errors import UsageError
from greencc.measure.carbon import CarbonFactors
from greencc.measure.energy import MEASURED_METHODS, Meter, best_meter

# Finished windows kept for export; older ones are dropped (a long-running service opens
# one per batch), while the running totals keep counting them.
DEFAULT_KEEP = 10_000


@dataclass(frozen=True)
class EnergyWindow:
    """One finished window: ``energy_j`` (J) over ``duration_s`` (s), ``g_co2e`` (g) at the
    monitor's carbon factors, the meter's ``method`` (``nvml``, ``rapl`` or
    ``estimate:cpu-time×tdp``) and what it counts (``meter``). ``started_at`` is Unix time
    (s); ``parent`` the innermost window still open in the same thread when this one began."""

    name: str
    started_at: float
    duration_s: float
    energy_j: float
    g_co2e: float
    method: str
    meter: str
    parent: str | None = None
    thread: str = ""

    @property
    def measured(self) -> bool:
        """True when a hardware counter (NVML, RAPL) measured it, False for the estimate."""
        return self.method in MEASURED_METHODS

    @property
    def label(self) -> str:
        """``measured (rapl: ...)`` or ``estimated (estimate:cpu-time×tdp: ...)``."""
        return f"{'measured' if self.measured else 'estimated'} ({self.method}: {self.meter})"

    @property
    def avg_power_w(self) -> float:
        """Mean power over the window, W."""
        return self.energy_j / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict, with ``measured`` and ``label``."""
        return {**asdict(self), "measured": self.measured, "label": self.label}


@dataclass
class _Open:
    name: str
    started_at: float
    start_s: float
    start_j: float
    parent: str | None
    thread: str


@dataclass
class WindowTotals:
    """Running sums over every finished window of one name: count, J, g, s."""

    count: int = 0
    energy_j: float = 0.0
    g_co2e: float = 0.0
    duration_s: float = 0.0
    method: str = ""


class WindowMonitor:
    """Opens and closes energy windows on one meter (thread-safe).

    ``meter`` defaults to :func:`best_meter` for ``device``; ``factors`` price joules in
    gCO2e (default: the cited world average). ``keep`` finished windows are retained for
    :meth:`records`; :meth:`totals` counts all of them.
    """

    def __init__(
        self,
        meter: Meter | None = None,
        *,
        factors: CarbonFactors | None = None,
        device: str = "any",
        keep: int = DEFAULT_KEEP,
    ) -> None:
        self.meter = meter if meter is not None else best_meter(device).meter
        state = self.meter.available()
        if not state.ok:
            raise UsageError(f"energy meter {self.meter.method} is not available: {state.reason}",
                             hint="use greencc.measure.best_meter() to pick one that is")
        self.factors = factors or CarbonFactors()
        self._lock = threading.Lock()
        self._open: dict[str, _Open] = {}
        self._stacks: dict[int, list[str]] = {}
        self._ids = itertools.count()
        self._records: deque[EnergyWindow] = deque(maxlen=keep)
        self._totals: dict[str, WindowTotals] = {}
        with self._lock:
            self.meter.read_j()  # the CPU-time estimate counts from its first read

    @property
    def method(self) -> str:
        """The meter's method label (``nvml``, ``rapl``, ``estimate:cpu-time×tdp``)."""
        return self.meter.method

    @property
    def measured(self) -> bool:
        """Whether this monitor's windows are measured (NVML/RAPL) rather than estimated."""
        return self.meter.method in MEASURED_METHODS

    def begin_window(self, name: str) -> None:
        """Open the window ``name`` (names of open windows are unique)."""
        self._begin(name, name)

    def end_window(self, name: str) -> EnergyWindow:
        """Close the window ``name``; returns its record."""
        return self._end(name)

    @contextmanager
    def window(self, name: str) -> Iterator[WindowHandle]:
        """``with monitor.window("batch") as w: ...``; ``w.result`` is set on exit. Unlike
        :meth:`begin_window`, the same name may be open in several threads at once."""
        handle = WindowHandle(name)
        key = f"{name}\x00{next(self._ids)}"
        self._begin(key, name)
        try:
            yield handle
        finally:
            handle.result = self._end(key)

    def _begin(self, key: str, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise UsageError(f"window name {name!r} must be a non-empty string")
        thread = threading.get_ident()
        with self._lock:
            if key in self._open:
                raise UsageError(f"energy window {name!r} is already open",
                                 hint="close it first, give nested windows distinct names, or use "
                                 "`with energy_window(name)` (which allows one name in several threads)")
            stack = self._stacks.setdefault(thread, [])
            parent = self._open[stack[-1]].name if stack else None
            self._open[key] = _Open(name, time.time(), time.perf_counter(), self.meter.read_j(), parent,
                                    threading.current_thread().name)
            stack.append(key)

    def _end(self, key: str) -> EnergyWindow:
        with self._lock:
            opened = self._open.pop(key, None)
            if opened is None:
                raise UsageError(f"energy window {key!r} is not open",
                                 hint="begin_window(name) first; a window is ended once")
            energy = max(self.meter.read_j() - opened.start_j, 0.0)
            duration = time.perf_counter() - opened.start_s
            for stack in self._stacks.values():
                if key in stack:
                    stack.remove(key)
            record = EnergyWindow(
                name=opened.name, started_at=opened.started_at, duration_s=duration, energy_j=energy,
                g_co2e=self.factors.grams(energy), method=self.meter.method, meter=self.meter.describe(),
                parent=opened.parent, thread=opened.thread,
            )
            self._records.append(record)
            totals = self._totals.setdefault(opened.name, WindowTotals(method=self.meter.method))
            totals.count += 1
            totals.energy_j += record.energy_j
            totals.g_co2e += record.g_co2e
            totals.duration_s += record.duration_s
            return record

    def open_windows(self) -> list[str]:
        """Names of the windows open now."""
        with self._lock:
            return [w.name for w in self._open.values()]

    def records(self) -> list[EnergyWindow]:
        """The finished windows kept, oldest first."""
        with self._lock:
            return list(self._records)

    def totals(self) -> dict[str, WindowTotals]:
        """Per window name: how many finished, and their summed J, gCO2e and seconds."""
        with self._lock:
            return {name: WindowTotals(**asdict(t)) for name, t in self._totals.items()}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The kept records as a JSON list (written to ``path`` when given)."""
        text = json.dumps([r.to_dict() for r in self.records()], indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The kept records as CSV (header row first; written to ``path`` when given)."""
        buffer = io.StringIO()
        columns = [*EnergyWindow.__dataclass_fields__, "measured"]
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for record in self.records():
            writer.writerow({k: v for k, v in record.to_dict().items() if k in columns})
        if path is not None:
            Path(path).write_text(buffer.getvalue(), encoding="utf-8")
        return buffer.getvalue()

    def prometheus_collector(self) -> Any:
        """A prometheus-client collector of the running totals per window name:
        ``greencc_window_energy_joules_total``, ``greencc_window_co2e_grams_total``,
        ``greencc_window_duration_seconds_total`` and ``greencc_windows_total``, labelled
        ``name`` and ``method``. Register it: ``registry.register(monitor.prometheus_collector())``
        (needs ``prometheus-client``, in the ``serve`` extra)."""
        return _WindowCollector(self)


@dataclass
class WindowHandle:
    """What ``with energy_window(name) as w`` binds: ``w.result`` is the finished
    :class:`EnergyWindow` after the block (``None`` inside it)."""

    name: str
    result: EnergyWindow | None = field(default=None)

    def __getattr__(self, attribute: str) -> Any:
        # w.energy_j, w.g_co2e, w.duration_s, w.label read through to the finished record.
        if attribute.startswith("_") or self.result is None:
            raise AttributeError(f"window {self.name!r} has no {attribute!r} until it ends")
        return getattr(self.result, attribute)


class _WindowCollector:
    def __init__(self, monitor: WindowMonitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        families = {
            "energy_j": CounterMetricFamily("greencc_window_energy_joules", "Energy of finished windows (J)",
                                            labels=["name", "method"]),
            "g_co2e": CounterMetricFamily("greencc_window_co2e_grams", "gCO2e of finished windows",
                                          labels=["name", "method"]),
            "duration_s": CounterMetricFamily("greencc_window_duration_seconds", "Duration of finished windows (s)",
                                              labels=["name", "method"]),
            "count": CounterMetricFamily("greencc_windows", "Finished windows", labels=["name", "method"]),
        }
        for name, totals in self._monitor.totals().items():
            for key, family in families.items():
                family.add_metric([name, totals.method], float(getattr(totals, key)))
        yield from families.values()


_default_lock = threading.Lock()
_default: WindowMonitor | None = None


def default_monitor() -> WindowMonitor:
    """The process's shared monitor behind :func:`energy_window`, :func:`begin_window` and
    :func:`end_window`, created on first use with :func:`best_meter`."""
    global _default
    with _default_lock:
        if _default is None:
            _default = WindowMonitor()
        return _default


def energy_window(name: str) -> Any:
    """``with gc.energy_window("name") as w: ...``; then ``w.energy_j`` (J), ``w.g_co2e``,
    ``w.duration_s`` (s) and ``w.label`` (measured or estimated, and by what)."""
    return default_monitor().window(name)


def begin_window(name: str) -> None:
    """Open the window ``name`` on the shared monitor."""
    default_monitor().begin_window(name)


def end_window(name: str) -> EnergyWindow:
    """Close the window ``name`` on the shared monitor; returns its record."""
    return default_monitor().end_window(name)


__all__ = [
    "EnergyWindow", "WindowHandle", "WindowMonitor", "WindowTotals",
    "begin_window", "default_monitor", "end_window", "energy_window",
]
