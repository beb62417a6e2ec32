"""Energy meters and the windowed energy harness: NVML on NVIDIA GPUs and RAPL where the
kernel exposes it (measured), else a labelled estimate from the process's CPU time.

Every figure carries ``method``: ``nvml``, ``rapl`` or ``estimate:cpu-time×tdp`` (and
``model:cost`` for the cost model's estimates, which live in ``greencc.cost``). Counters
are read over windows long enough for them to advance (repeat until ≥ 1 s), and idle power
is measured over its own window and reported beside the figure, never silently mixed in.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from greencc.errors import UsageError

METHOD_NVML = "nvml"
METHOD_RAPL = "rapl"
METHOD_CPU_ESTIMATE = "estimate:cpu-time×tdp"
METHOD_COST_MODEL = "model:cost"
MEASURED_METHODS = frozenset({METHOD_NVML, METHOD_RAPL})

DEFAULT_POWERCAP_ROOT = Path("/sys/class/powercap")

# Per-core power of the estimate when the caller gives none: the host profile x86-avx512
# models an AMD EPYC 9654 socket, 360 W TDP over 96 cores (AMD's datasheet, cited in
# targets/profiles/x86-avx512.json) = 3.75 W per core.
DEFAULT_WATTS_PER_CORE = 360.0 / 96
# CodeCarbon's CPU models without RAPL (CodeCarbon "Methodology" docs; the load formula is
# its `cpu_load` mode, the constant its fallback "constant mode"): power = TDP·(0.1 +
# 0.9·load³), or 0.5·TDP when the load is not known.
LOAD_IDLE_FRACTION = 0.1
CONSTANT_TDP_FRACTION = 0.5
POWER_MODELS = ("load-cubic", "half-tdp")


class MeterAvailability(NamedTuple):
    """Whether a meter can read here, and why not when it cannot (truthiness follows ``ok``)."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return bool(self.ok)


@runtime_checkable
class Meter(Protocol):
    """An energy counter: ``read_j()`` returns joules accumulated since an arbitrary origin.

    Successive reads never decrease (wrap-around is handled by the meter); the difference
    of two reads is the energy of the window between them. ``method`` is the label every
    figure from this meter carries; ``describe()`` names what is counted (domains, device,
    assumed power).
    """

    method: str

    def available(self) -> MeterAvailability:
        """Whether this meter can read here (never raises)."""
        ...

    def read_j(self) -> float:
        """Cumulative energy in joules (J)."""
        ...

    def describe(self) -> str:
        """What the counter covers, in a few words."""
        ...


# --------------------------------------------------------------------------------------
# RAPL
# --------------------------------------------------------------------------------------
@dataclass
class RaplDomain:
    """One powercap zone: its directory, name (``package-0``, ``dram``) and counter range (µJ)."""

    path: Path
    name: str
    max_energy_range_uj: int


class RaplMeter:
    """Intel/AMD RAPL through Linux powercap: package and DRAM domains, summed.

    Reads ``<root>/intel-rapl:*/energy_uj`` (µJ, wraps at ``max_energy_range_uj``). Package
    zones (``intel-rapl:N``) and DRAM zones (a top-level or ``intel-rapl:N:M`` zone named
    ``dram``) are counted; ``core``/``uncore`` sub-zones are part of their package and
    ``psys`` covers the whole platform, so neither is added. ``root`` is configurable so
    tests can point it at a fake tree. The counter must be read at least once per wrap
    period (typically minutes at full load); windows here are seconds.
    """

    method = METHOD_RAPL

    def __init__(self, root: str | os.PathLike = DEFAULT_POWERCAP_ROOT) -> None:
        self.root = Path(root)
        self._domains: list[RaplDomain] | None = None
        self._last_uj: dict[Path, int] = {}
        self._total_uj = 0

    def domains(self) -> list[RaplDomain]:
        """The package and DRAM zones found under ``root`` (sorted by path)."""
        if self._domains is None:
            found: list[RaplDomain] = []
            for zone in sorted(self.root.glob("intel-rapl:*")):
                if not zone.is_dir():
                    continue
                name = _read_text(zone / "name")
                is_package = re.fullmatch(r"intel-rapl:\d+", zone.name) is not None
                if name == "dram" or (is_package and name.startswith("package")):
                    max_range = int(_read_text(zone / "max_energy_range_uj") or 0)
                    found.append(RaplDomain(zone, name, max_range))
            # Sub-zones appear inside their package directory on real systems.
            for zone in sorted(self.root.glob("intel-rapl:*/intel-rapl:*")):
                if _read_text(zone / "name") == "dram" and all(d.path.name != zone.name for d in found):
                    max_range = int(_read_text(zone / "max_energy_range_uj") or 0)
                    found.append(RaplDomain(zone, "dram", max_range))
            self._domains = found
        return self._domains

    def available(self) -> MeterAvailability:
        """Readable when at least one package zone exists and its ``energy_uj`` can be read."""
        if not self.root.is_dir():
            return MeterAvailability(
                False, f"{self.root} is absent (no RAPL: a VM, a container, or not Linux)"
            )
        try:
            domains = self.domains()
        except (OSError, ValueError) as exc:
            return MeterAvailability(False, f"cannot list RAPL zones under {self.root}: {exc}")
        if not any(d.name.startswith("package") for d in domains):
            return MeterAvailability(False, f"no RAPL package zone under {self.root}")
        for domain in domains:
            try:
                int((domain.path / "energy_uj").read_text())
            except PermissionError:
                return MeterAvailability(
                    False,
                    f"{domain.path / 'energy_uj'} is not readable: root-only since Linux 5.10 "
                    "(CVE-2020-8694); run as root or grant read access to the file",
                )
            except (OSError, ValueError) as exc:
                return MeterAvailability(False, f"cannot read {domain.path / 'energy_uj'}: {exc}")
        return MeterAvailability(True)

    def read_j(self) -> float:
        """Joules counted by the package and DRAM zones since the first read."""
        for domain in self.domains():
            raw = int((domain.path / "energy_uj").read_text())
            last = self._last_uj.get(domain.path)
            if last is not None:
                delta = raw - last
                if delta < 0:  # the counter wrapped at max_energy_range_uj
                    delta = delta + domain.max_energy_range_uj if domain.max_energy_range_uj > 0 else raw
                self._total_uj += delta
            self._last_uj[domain.path] = raw
        return self._total_uj * 1e-6

    def describe(self) -> str:
        """The zones summed, e.g. ``RAPL package-0 + dram``."""
        names = [d.name for d in self.domains()] if self.root.is_dir() else []
        return "RAPL " + (" + ".join(names) if names else "(no zones)")


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------------------
# NVML
# --------------------------------------------------------------------------------------
class NvmlMeter:
    """An NVIDIA GPU's total-energy counter through NVML (``pip install nvidia-ml-py``).

    ``nvmlDeviceGetTotalEnergyConsumption`` counts millijoules since the driver loaded
    (Volta and newer). ``pynvml`` is imported on first use, never at import time; a test
    can pass a stand-in module as ``nvml``.
    """

    method = METHOD_NVML

    def __init__(self, index: int = 0, *, nvml: Any = None) -> None:
        self.index = index
        self._nvml = nvml
        self._handle: Any = None
        self._name = ""

    def _module(self) -> Any:
        if self._nvml is None:
            self._nvml = importlib.import_module("pynvml")
        return self._nvml

    def _device(self) -> Any:
        if self._handle is None:
            nvml = self._module()
            nvml.nvmlInit()
            self._handle = nvml.nvmlDeviceGetHandleByIndex(self.index)
            name = nvml.nvmlDeviceGetName(self._handle)
            self._name = name.decode() if isinstance(name, bytes) else str(name)
        return self._handle

    def available(self) -> MeterAvailability:
        """Available when pynvml imports, a GPU ``index`` exists and has an energy counter."""
        try:
            self._module()
        except ImportError:
            return MeterAvailability(
                False, "pynvml is not installed (pip install nvidia-ml-py)"
            )
        try:
            handle = self._device()
            self._module().nvmlDeviceGetTotalEnergyConsumption(handle)
        except Exception as exc:  # NVMLError subclasses: no driver, no GPU, not supported
            return MeterAvailability(False, f"NVML cannot read GPU {self.index}'s energy: {exc}")
        return MeterAvailability(True)

    def read_j(self) -> float:
        """Joules the GPU consumed since its driver loaded."""
        return float(self._module().nvmlDeviceGetTotalEnergyConsumption(self._device())) * 1e-3

    def describe(self) -> str:
        """``NVML GPU 0 (NVIDIA H100 ...)``."""
        return f"NVML GPU {self.index}" + (f" ({self._name})" if self._name else "")


# --------------------------------------------------------------------------------------
# The CPU-time estimate
# --------------------------------------------------------------------------------------
class CpuTimeEstimateMeter:
    """An estimate, not a measurement: this process's CPU time priced at a per-core power.

    Over each interval between reads, ``load = Δ(process CPU time) / (Δwall × cores)`` and
    ``TDP = watts_per_core × cores``; power is ``TDP·(0.1 + 0.9·load³)`` (``load-cubic``,
    CodeCarbon's load model) or ``0.5·TDP`` (``half-tdp``, CodeCarbon's constant mode);
    energy is power × Δwall. Fully busy cores therefore cost ``watts_per_core`` each, an
    idle process 10% of TDP. ``clock`` returns (wall s, CPU s) and exists for tests.
    """

    method = METHOD_CPU_ESTIMATE

    def __init__(
        self,
        watts_per_core: float = DEFAULT_WATTS_PER_CORE,
        cores: int | None = None,
        *,
        power_model: str = "load-cubic",
        source: str = "x86-avx512 profile: 360 W / 96 cores",
        clock: Callable[[], tuple[float, float]] | None = None,
    ) -> None:
        if not (isinstance(watts_per_core, (int, float)) and math.isfinite(watts_per_core)
                and watts_per_core > 0):
            raise UsageError(f"watts_per_core={watts_per_core!r} must be a positive number (W)")
        if power_model not in POWER_MODELS:
            raise UsageError(
                f"unknown power model {power_model!r}", hint=f"choose {' or '.join(POWER_MODELS)}"
            )
        self.watts_per_core = float(watts_per_core)
        self.cores = int(cores or os.cpu_count() or 1)
        self.power_model = power_model
        self.source = source
        self._clock = clock or _process_clock
        self._last: tuple[float, float] | None = None
        self._total_j = 0.0

    @property
    def tdp_w(self) -> float:
        """Assumed TDP of the cores this process can use, in W."""
        return self.watts_per_core * self.cores

    def power_w(self, load: float) -> float:
        """Estimated power (W) at ``load`` (0..1, fraction of all cores busy)."""
        if self.power_model == "half-tdp":
            return CONSTANT_TDP_FRACTION * self.tdp_w
        load = min(max(load, 0.0), 1.0)
        return self.tdp_w * (LOAD_IDLE_FRACTION + (1 - LOAD_IDLE_FRACTION) * load**3)

    def available(self) -> MeterAvailability:
        """Always available (it reads no hardware)."""
        return MeterAvailability(True)

    def read_j(self) -> float:
        """Estimated joules since the first read."""
        wall, cpu = self._clock()
        if self._last is not None:
            d_wall = max(wall - self._last[0], 0.0)
            d_cpu = max(cpu - self._last[1], 0.0)
            load = d_cpu / (d_wall * self.cores) if d_wall > 0 else 0.0
            self._total_j += self.power_w(load) * d_wall
        self._last = (wall, cpu)
        return self._total_j

    def describe(self) -> str:
        """``process CPU time × 3.75 W/core × 2 cores (load-cubic; source)``."""
        return (
            f"process CPU time × {self.watts_per_core:.3g} W/core × {self.cores} cores "
            f"({self.power_model}; {self.source})"
        )


def _process_clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


# --------------------------------------------------------------------------------------
# Choosing a meter
# --------------------------------------------------------------------------------------
class MeterChoice(NamedTuple):
    """The meter :func:`best_meter` picked and why (which better meters were unavailable)."""

    meter: Meter
    reason: str


DEVICES = ("any", "cpu", "gpu")


def best_meter(
    device: str = "any",
    *,
    powercap_root: str | os.PathLike = DEFAULT_POWERCAP_ROOT,
    watts_per_core: float = DEFAULT_WATTS_PER_CORE,
    nvml: Any = None,
) -> MeterChoice:
    """The best meter here: NVML > RAPL > the CPU-time estimate, and the reason.

    ``device`` restricts the choice to where the work runs: ``cpu`` skips NVML (a GPU's
    counter says nothing about CPU inference), ``gpu`` skips RAPL. The estimate is the
    last resort for ``any`` and ``cpu``; for ``gpu`` without NVML it is returned too, with
    the reason saying it only sees the host process.
    """
    if device not in DEVICES:
        raise UsageError(f"device={device!r} is not one of {', '.join(DEVICES)}")
    skipped: list[str] = []
    if device in ("any", "gpu"):
        nvml_meter = NvmlMeter(nvml=nvml)
        state = nvml_meter.available()
        if state.ok:
            return MeterChoice(nvml_meter, "NVML energy counter of GPU 0 (measured)")
        skipped.append(f"NVML: {state.reason}")
    if device in ("any", "cpu"):
        rapl = RaplMeter(powercap_root)
        state = rapl.available()
        if state.ok:
            return MeterChoice(rapl, f"{rapl.describe()} (measured)" + _why_not(skipped))
        skipped.append(f"RAPL: {state.reason}")
    estimate = CpuTimeEstimateMeter(watts_per_core)
    return MeterChoice(estimate, f"no energy counter, so an estimate: {estimate.describe()}" + _why_not(skipped))


def _why_not(skipped: list[str]) -> str:
    return f" [not used: {'; '.join(skipped)}]" if skipped else ""


# --------------------------------------------------------------------------------------
# Windowed measurement
# --------------------------------------------------------------------------------------
@dataclass
class EnergyMeasurement:
    """Energy per inference over a measured window, with the idle power beside it.

    ``energy_j`` (J) over ``window_s`` (s) and ``calls`` calls of ``inferences_per_call``
    inferences each; ``j_per_inference`` is window energy / inferences and
    ``active_j_per_inference`` the same after subtracting ``idle_power_w`` (W, measured
    over its own ``idle_window_s``) × ``window_s`` (floored at 0). ``method`` is ``nvml``,
    ``rapl`` or ``estimate:cpu-time×tdp``; ``meter`` says what was counted.
    """

    method: str
    meter: str
    window_s: float
    calls: int
    inferences_per_call: int
    energy_j: float
    idle_power_w: float
    idle_window_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        """True for a hardware counter (NVML, RAPL), False for an estimate."""
        return self.method in MEASURED_METHODS

    @property
    def inferences(self) -> int:
        """Inferences run in the window."""
        return self.calls * self.inferences_per_call

    @property
    def j_per_inference(self) -> float:
        """Window energy per inference, J (idle draw included)."""
        return self.energy_j / self.inferences

    @property
    def active_j_per_inference(self) -> float:
        """Energy per inference above idle, J."""
        return max(self.energy_j - self.idle_power_w * self.window_s, 0.0) / self.inferences

    @property
    def avg_power_w(self) -> float:
        """Mean power over the window, W."""
        return self.energy_j / self.window_s if self.window_s > 0 else 0.0

    @property
    def label(self) -> str:
        """``measured (rapl: RAPL package-0 + dram)`` or ``estimate (estimate:cpu-time×tdp: ...)``."""
        kind = "measured" if self.measured else "estimate"
        return f"{kind} ({self.method}: {self.meter})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict with the derived figures and the label."""
        data = asdict(self)
        data.update(
            measured=self.measured,
            label=self.label,
            inferences=self.inferences,
            j_per_inference=self.j_per_inference,
            mj_per_inference=self.j_per_inference * 1e3,
            active_j_per_inference=self.active_j_per_inference,
            active_mj_per_inference=self.active_j_per_inference * 1e3,
            avg_power_w=self.avg_power_w,
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnergyMeasurement:
        """Rebuild from :meth:`to_dict` output (derived figures are recomputed)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})

    def __str__(self) -> str:
        return (
            f"{self.j_per_inference * 1e3:.3f} mJ/inference ({self.active_j_per_inference * 1e3:.3f} mJ "
            f"above an idle draw of {self.idle_power_w:.2f} W) over {self.window_s:.2f} s, "
            f"{self.inferences} inferences — {self.label}"
        )


def measure_energy(
    fn: Callable[[], Any],
    *,
    meter: Meter | None = None,
    min_window_s: float = 1.0,
    idle_s: float = 0.5,
    warmup: int = 1,
    inferences_per_call: int = 1,
    max_window_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> EnergyMeasurement:
    """Measure the energy of ``fn()`` per inference with ``meter`` (default :func:`best_meter`).

    Idle power is read first over ``idle_s`` seconds of sleep. After ``warmup`` untimed
    calls, ``fn`` is repeated until the window lasts at least ``min_window_s`` seconds and
    the counter advanced; a counter that stays flat is given up to ``max_window_s``
    (default 4 × ``min_window_s``) before the figure is reported as 0 with a note.
    """
    if not (isinstance(min_window_s, (int, float)) and min_window_s > 0):
        raise UsageError(f"min_window_s={min_window_s!r} must be a positive number of seconds")
    if not (isinstance(idle_s, (int, float)) and idle_s >= 0):
        raise UsageError(f"idle_s={idle_s!r} must be a non-negative number of seconds")
    if isinstance(inferences_per_call, bool) or not isinstance(inferences_per_call, int) or inferences_per_call < 1:
        raise UsageError(f"inferences_per_call={inferences_per_call!r} must be a positive integer")
    if meter is None:
        meter = best_meter().meter
    state = meter.available()
    if not state.ok:
        raise UsageError(f"energy meter {meter.method} is not available: {state.reason}",
                         hint="use greencc.measure.best_meter() to pick one that is")
    limit = max_window_s if max_window_s is not None else 4 * min_window_s
    notes: list[str] = []

    idle_power = 0.0
    idle_window = 0.0
    if idle_s > 0:
        e0, t0 = meter.read_j(), time.perf_counter()
        sleep(idle_s)
        e1, t1 = meter.read_j(), time.perf_counter()
        idle_window = t1 - t0
        idle_power = (e1 - e0) / idle_window if idle_window > 0 else 0.0

    for _ in range(warmup):
        fn()
    calls = 0
    e0, t0 = meter.read_j(), time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed < min_window_s:
            continue
        energy = meter.read_j() - e0
        if energy > 0 or elapsed >= limit:
            break
    window = time.perf_counter() - t0
    if energy <= 0:
        notes.append(f"the counter did not advance in {window:.2f} s: reported as 0 J")
    return EnergyMeasurement(
        method=meter.method,
        meter=meter.describe(),
        window_s=window,
        calls=calls,
        inferences_per_call=inferences_per_call,
        energy_j=max(energy, 0.0),
        idle_power_w=idle_power,
        idle_window_s=idle_window,
        notes=notes,
    )


__all__ = [
    "CpuTimeEstimateMeter", "EnergyMeasurement", "Meter", "MeterAvailability", "MeterChoice",
    "NvmlMeter", "RaplDomain", "RaplMeter", "best_meter", "measure_energy",
    "METHOD_CPU_ESTIMATE", "METHOD_COST_MODEL", "METHOD_NVML", "METHOD_RAPL",
    "MEASURED_METHODS", "DEFAULT_WATTS_PER_CORE",
]
