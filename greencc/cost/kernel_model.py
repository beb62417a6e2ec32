"""The calibrated kernel model of a target on this machine: per-node features read back
through probe profiles, the log-space least-squares fit (effective throughput per dtype
class, bandwidth per memory level, per-kernel efficiency, size exponent, dispatch and
per-inference overhead), the calibrated :class:`HardwareProfile` built from its global
terms, and where calibrations are stored (``<cache>/profiles``) and found again.

Running the micro-benchmarks that feed the fit is ``greencc.calibration``'s job; this
module only fits and prices, so the cost model never runs a model.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from greencc.cache import cache_dir
from greencc.cost.estimate import estimate_cost
from greencc.cost.host import HOST_PROFILE_CORES, memory_levels_here, scaled_static_power_w
from greencc.cost.profile import HardwareProfile, MemoryLevel
from greencc.errors import UsageError
from greencc.ir.shapes import symbolic_dims, with_static_inputs

log = logging.getLogger(__name__)

CALIBRATION_SCHEMA = "greencc.calibration/1"
VALIDATION_SCHEMA = "greencc.validation/1"
# Written into a calibrated profile's calibration_note: the energy terms (pJ/MAC, pJ/byte,
# static power) were not fitted, since no energy meter was read. The report says so.
ENERGY_UNCALIBRATED_MARK = "energy terms not calibrated"
FITTED_DTYPES = ("float32", "int8")
_BIG = 1e30  # a probe profile's "infinitely fast" throughput or bandwidth


# --------------------------------------------------------------------------------------
# Where calibrated profiles live
# --------------------------------------------------------------------------------------
def profiles_dir() -> Path:
    """Where calibrated profiles are saved: ``<cache_dir>/profiles``."""
    return cache_dir() / "profiles"


def calibrated_profile_name(target: str, threads: int) -> str:
    """``ort-cpu-2threads``: one calibrated profile per target and thread count."""
    return f"{target}-{int(threads)}threads"


def calibration_path(name: str) -> Path:
    """The fit record saved beside profile ``name``: ``<name>.calibration.json``."""
    return profiles_dir() / f"{name}.calibration.json"


def validation_path(name: str) -> Path:
    """The held-out validation scores saved beside profile ``name``: ``<name>.validation.json``
    (written by ``greencc cost validate``, read by the report's energy headline)."""
    return profiles_dir() / f"{name}.validation.json"


def save_validation(name: str, record: Mapping[str, Any]) -> Path:
    """Write the validation ``record`` of calibrated profile ``name``; returns its path."""
    path = validation_path(name)
    _write_json_atomic(path, {"schema": VALIDATION_SCHEMA, **record})
    return path


def find_validation(name: str) -> dict[str, Any] | None:
    """The validation record of profile ``name`` made on this machine, or ``None`` (none
    saved, unreadable, another schema, or made on another machine)."""
    path = validation_path(name)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring the validation record %s: %s", path, exc)
        return None
    if not isinstance(record, dict) or record.get("schema") != VALIDATION_SCHEMA:
        return None
    if not _same_machine(record.get("machine") or {}, machine_info()):
        return None
    return record


def machine_info() -> dict[str, Any]:
    """What identifies this machine for a calibration: CPU model, logical cores, arch, OS."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "arch": platform.machine(),
        "system": platform.system(),
        "hostname": platform.node(),
    }


def _same_machine(recorded: Mapping[str, Any], here: Mapping[str, Any]) -> bool:
    # The hostname is recorded but not compared: VMs and containers get new ones.
    return all(recorded.get(key) == here.get(key) for key in ("cpu", "cores", "arch"))


@dataclass
class Calibration:
    """A calibrated profile and its fit record.

    ``run_overhead_s`` is the fixed cost per inference (session call, feeding inputs) in
    seconds, which :class:`HardwareProfile` has no field for yet; :func:`predict_latency_ms`
    adds it. ``fit`` holds the parameters, per-benchmark measured and predicted ms and the
    fit error (``median_abs_pct``, ``p90_abs_pct``, ``rms_log_error``).
    """

    profile: HardwareProfile
    target: str
    threads: int
    machine: dict[str, Any]
    created: str
    run_overhead_s: float
    fit: dict[str, Any]
    greencc_version: str = ""

    def record(self) -> dict[str, Any]:
        """The JSON fit record (everything but the profile, which is saved on its own)."""
        return {
            "schema": CALIBRATION_SCHEMA,
            "profile": self.profile.name,
            "target": self.target,
            "threads": self.threads,
            "machine": self.machine,
            "created": self.created,
            "greencc_version": self.greencc_version,
            "run_overhead_s": self.run_overhead_s,
            "fit": self.fit,
        }

    def save(self, directory: str | os.PathLike | None = None) -> Path:
        """Write ``<name>.json`` (the profile) and ``<name>.calibration.json``; returns the profile path."""
        directory = Path(directory) if directory is not None else profiles_dir()
        path = self.profile.to_json(directory / f"{self.profile.name}.json")
        _write_json_atomic(directory / f"{self.profile.name}.calibration.json", self.record())
        return path

    @classmethod
    def load(cls, name: str, directory: str | os.PathLike | None = None) -> Calibration:
        """Read the calibrated profile ``name`` and its fit record (``UsageError`` if bad)."""
        directory = Path(directory) if directory is not None else profiles_dir()
        profile = HardwareProfile.from_json(directory / f"{name}.json")
        record_path = directory / f"{name}.calibration.json"
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(
                f"cannot read the calibration record {record_path}: {exc}",
                hint="run `greencc cost calibrate` again",
            ) from None
        if not isinstance(record, dict) or record.get("schema") != CALIBRATION_SCHEMA:
            raise UsageError(f"{record_path} is not a greencc calibration record",
                             hint="run `greencc cost calibrate` again")
        return cls(
            profile=profile,
            target=str(record.get("target", "")),
            threads=int(record.get("threads", 0)),
            machine=dict(record.get("machine", {})),
            created=str(record.get("created", "")),
            run_overhead_s=float(record.get("run_overhead_s", 0.0)),
            fit=dict(record.get("fit", {})),
            greencc_version=str(record.get("greencc_version", "")),
        )


def find_calibration(target: str, threads: int | None) -> Calibration | None:
    """The calibration of ``target`` at ``threads`` made on this machine, or ``None``.

    A record from another machine (CPU model, core count or architecture differ) or an
    unreadable one is ignored, with a log message saying why.
    """
    if threads is None:
        return None
    name = calibrated_profile_name(target, threads)
    if not (profiles_dir() / f"{name}.json").is_file():
        return None
    try:
        calibration = Calibration.load(name)
    except UsageError as exc:
        log.warning("ignoring calibrated profile %s: %s", name, exc.message)
        return None
    if not _same_machine(calibration.machine, machine_info()):
        log.info("ignoring calibrated profile %s: it was made on another machine (%s)",
                 name, calibration.machine.get("cpu"))
        return None
    return calibration


def find_calibrated_profile(target: str, threads: int | None) -> HardwareProfile | None:
    """The profile :func:`find_calibration` finds, or ``None``."""
    calibration = find_calibration(target, threads)
    return calibration.profile if calibration is not None else None


# --------------------------------------------------------------------------------------
# Features: what the estimate counts per node, read back through probe profiles
# --------------------------------------------------------------------------------------
@dataclass
class NodeFeatures:
    """What each node of a graph costs in the estimate's own terms.

    ``work`` (nodes × fitted dtype classes): MAC-equivalents (MACs + FLOPs/2);
    ``bytes`` (nodes × memory levels): bytes moved at each level; ``kernel``: the node's
    kernel group (``domain::op_type``); ``op_class``: its cost-model op class;
    ``dispatched``: 1 for a node the runtime dispatches (all but ``Constant``);
    ``units``: independent sub-problems a fused kernel loops over (batch × heads for
    attention, 0 elsewhere), each with its own small GEMMs; ``outputs`` and
    ``output_bytes``: the graph's outputs, which the runtime allocates and hands back on
    every call (large ones are fresh pages, zeroed by the kernel on first touch).
    """

    kernel: list[str]
    op_class: list[str]
    work: np.ndarray
    bytes: np.ndarray
    dispatched: np.ndarray
    units: np.ndarray = field(default_factory=lambda: np.zeros(0))
    output_bytes: float = 0.0
    outputs: int = 0

    def __post_init__(self) -> None:
        if len(self.units) != len(self.kernel):
            self.units = np.zeros(len(self.kernel))

    @property
    def light(self) -> np.ndarray:
        """Dispatched nodes too small to be split across threads: no arithmetic to speak of
        and at most ``LIGHT_BYTES`` moved (views, shape arithmetic on a few int64s)."""
        return ((self.dispatched > 0) & (self.work.sum(axis=1) <= LIGHT_WORK)
                & (self.bytes.sum(axis=1) <= LIGHT_BYTES))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (lists)."""
        return {"kernel": self.kernel, "op_class": self.op_class, "work": self.work.tolist(),
                "bytes": self.bytes.tolist(), "dispatched": self.dispatched.tolist(),
                "units": self.units.tolist(), "output_bytes": self.output_bytes, "outputs": self.outputs}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeFeatures:
        """Inverse of :meth:`to_dict`."""
        levels = len(data["bytes"][0]) if data["bytes"] else 0
        return cls(list(data["kernel"]), list(data["op_class"]),
                   np.asarray(data["work"], dtype=np.float64).reshape(-1, len(FITTED_DTYPES)),
                   np.asarray(data["bytes"], dtype=np.float64).reshape(-1, levels),
                   np.asarray(data["dispatched"], dtype=np.float64),
                   np.asarray(data.get("units", []), dtype=np.float64),
                   float(data.get("output_bytes", 0.0)), int(data.get("outputs", 0)))


# A node at or below these is "light": a single-threaded call, no thread-pool dispatch.
LIGHT_WORK = 64.0
LIGHT_BYTES = 1024.0
# Fused attention kernels loop over batch × heads small GEMMs.
_ATTENTION_OPS = {"Attention", "MultiHeadAttention", "QAttention"}


def _units(node: Any) -> float:
    if node.op_type not in _ATTENTION_OPS or not node.inputs or node.inputs[0] is None:
        return 0.0
    shape = node.inputs[0].shape
    heads = node.attributes.get("num_heads")
    if shape is None or heads is None or not isinstance(shape[0], int):
        return 0.0
    return float(shape[0] * heads.value)


def _probe_profile(template: HardwareProfile, *, dtype: str | None = None,
                   level: int | None = None) -> HardwareProfile:
    levels = [
        MemoryLevel(lv.name, lv.capacity_bytes, 1.0 if i == level else _BIG, 1.0)
        for i, lv in enumerate(template.memory_levels)
    ]
    peaks = {d: (1.0 if d == dtype else _BIG) for d in FITTED_DTYPES}
    return HardwareProfile(
        name="probe", description="feature probe", peak_macs_per_s=peaks, memory_levels=levels,
        energy_pj_per_mac={d: 1.0 for d in peaks}, static_power_w=0.0, op_overhead_s=0.0,
        supports=dict(template.supports),
    )


def node_features(model: Any, template: HardwareProfile, dims: Mapping[str, int] | None = None) -> NodeFeatures:
    """Read the estimate's per-node work through probe profiles with ``template``'s memory
    levels: one probe per dtype class (peak 1 MAC/s) and one per level (1 B/s), so every
    count is exactly what :func:`~greencc.cost.estimate.estimate_cost` uses."""

    def run(probe: HardwareProfile) -> Any:
        return estimate_cost(model, probe, dims=dims)

    columns = []
    first = None
    for dtype in FITTED_DTYPES:
        cost = run(_probe_profile(template, dtype=dtype))
        first = first or cost
        columns.append([node.latency_ms * 1e-3 for node in cost.nodes])
    work = np.asarray(columns, dtype=np.float64).T
    nbytes = np.asarray(
        [[node.latency_ms * 1e-3 for node in run(_probe_profile(template, level=i)).nodes]
         for i in range(len(template.memory_levels))], dtype=np.float64).T
    assert first is not None
    kernel = [f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in first.nodes]
    dispatched = np.asarray([0.0 if n.op_type == "Constant" and not n.domain else 1.0 for n in first.nodes])
    # A probe's "infinitely fast" terms leave ~1e-30 s behind; round them away.
    work[work < 1e-6] = 0.0
    nbytes[nbytes < 1e-6] = 0.0
    graph = model.graph if hasattr(model, "graph") else model.ir.graph
    nodes = list(graph)
    units = np.asarray([_units(n) for n in nodes] if len(nodes) == len(kernel) else np.zeros(len(kernel)))
    try:
        outputs = with_static_inputs(_ir_of(model), resolve_dims_of(model, dims)).graph.outputs
    except UsageError:  # an unnamed dynamic dim: the outputs' size is unknown
        outputs = _ir_of(model).graph.outputs
    return NodeFeatures(kernel, [n.op_class for n in first.nodes], work, nbytes, dispatched, units,
                        float(sum(_value_bytes(v) for v in outputs)), len(outputs))


def _ir_of(model: Any) -> Any:
    return model.ir if hasattr(model, "ir") else model


def resolve_dims_of(model: Any, dims: Mapping[str, int] | None) -> dict[str, int]:
    """Every symbolic input dim of ``model`` bound: ``dims`` first, 1 for the rest."""

    resolved = {name: 1 for name in symbolic_dims(_ir_of(model))}
    resolved.update({k: int(v) for k, v in (dims or {}).items() if k in resolved})
    return resolved


def _value_bytes(value: Any) -> int:
    shape = value.shape
    if shape is None or value.dtype is None or not all(isinstance(d, int) for d in shape):
        return 0
    try:
        return math.ceil(math.prod(shape) * value.dtype.bitwidth / 8)
    except TypeError:
        return 0


# --------------------------------------------------------------------------------------
# The kernel model and its fit
# --------------------------------------------------------------------------------------
@dataclass
class KernelModel:
    """The fitted latency model of one target on this machine, per fused kernel:

        τ = smax(Σ_dtype work / peak[dtype], Σ_level bytes / bandwidth[level])
        t = call_overhead + Σ_nodes τ₀·(τ/τ₀)^exponent[k] / efficiency[k]
                                    + base_overhead · overhead_ratio[k] + units · unit_cost[k]

    ``τ`` is the roofline time and ``smax(a, b) = (a⁴ + b⁴)^¼`` a smooth maximum (at most
    19% above the hard one, where both terms are equal), which also lets the fit see both
    terms. ``peak_macs_per_s`` (MAC/s per dtype class) is the effective throughput of the
    reference kernels (MatMul, MatMulInteger); ``bandwidth_bytes_per_s`` (B/s) per memory
    level. Per kernel group ``k`` (``domain::op_type``): ``efficiency``, the fraction of
    the roofline it reaches at ``τ₀`` = 1 µs of roofline time; ``exponent`` (≤ 1), how
    its time grows with size (below 1: small instances are relatively slow);
    ``overhead_ratio``, its dispatch cost relative to the base, which is
    ``light_overhead_s`` for a light node (tiny tensors: one single-threaded call) and
    ``op_overhead_s`` otherwise; ``unit_cost_s``, the cost per independent sub-problem of
    a fused attention (batch × heads). Groups without a benchmark take their op class's
    geometric means (``class_*``), else 1: an extrapolation, which :meth:`predict`
    measures (a kernel's efficiency can differ from its class's by tens of times). Once
    per call: ``run_overhead_s``, plus
    ``output_overhead_s`` per graph output and its bytes over
    ``output_bandwidth_bytes_per_s`` (fresh output buffers are page-faulted in).
    """

    peak_macs_per_s: dict[str, float]
    bandwidth_bytes_per_s: list[float]
    efficiency: dict[str, float]
    exponent: dict[str, float]
    overhead_ratio: dict[str, float]
    op_overhead_s: float
    light_overhead_s: float
    run_overhead_s: float
    unit_cost_s: dict[str, float] = field(default_factory=dict)
    output_overhead_s: float = 0.0
    output_bandwidth_bytes_per_s: float = 1e30
    class_efficiency: dict[str, float] = field(default_factory=dict)
    class_exponent: dict[str, float] = field(default_factory=dict)

    def node_seconds(self, features: NodeFeatures) -> np.ndarray:
        """Predicted seconds per node."""
        work_s, overhead_s = self._node_parts(features)
        return work_s + overhead_s

    def _node_parts(self, features: NodeFeatures) -> tuple[np.ndarray, np.ndarray]:
        """Each node's predicted seconds in two parts: its roofline time scaled by its
        kernel's exponent and efficiency, and its dispatch and per-sub-problem overhead."""
        inverse_peak = np.array([1 / self.peak_macs_per_s[d] for d in FITTED_DTYPES])
        pairs = list(zip(features.kernel, features.op_class, strict=True))
        efficiency = np.array([self.efficiency.get(k, self.class_efficiency.get(c, 1.0)) for k, c in pairs])
        exponent = np.array([self.exponent.get(k, self.class_exponent.get(c, 1.0)) for k, c in pairs])
        ratio = np.array([self.overhead_ratio.get(k, 1.0) for k in features.kernel])
        unit_cost = np.array([self.unit_cost_s.get(k, 0.0) for k in features.kernel])
        base = np.where(features.light, self.light_overhead_s, self.op_overhead_s)
        compute = features.work @ inverse_peak
        memory = features.bytes @ (1 / np.asarray(self.bandwidth_bytes_per_s))
        scaled = _scale(smooth_max(compute, memory), exponent)
        return (scaled / efficiency * features.dispatched,
                (base * ratio + features.units * unit_cost) * features.dispatched)

    def call_overhead_s(self, features: NodeFeatures) -> float:
        """The fixed cost of one call: the run, and allocating and returning its outputs."""
        return (self.run_overhead_s + self.output_overhead_s * features.outputs
                + features.output_bytes / self.output_bandwidth_bytes_per_s)

    def predict_s(self, features: NodeFeatures) -> float:
        """Predicted seconds per inference (:meth:`predict`'s ``seconds``)."""
        return self.predict(features).seconds

    def fitted(self, kernel: str) -> bool:
        """Whether a calibration benchmark timed kernel group ``kernel`` (``domain::op_type``),
        so that its efficiency, exponent and overhead were fitted, not its class's."""
        return kernel in self.efficiency

    def predict(self, features: NodeFeatures) -> KernelPrediction:
        """Predicted seconds per inference, with the seconds priced by extrapolation: the
        scaled roofline time of each kernel group no calibration benchmark timed (its
        dispatch overhead is the fitted base overhead, so it is not counted)."""
        work_s, overhead_s = self._node_parts(features)
        extrapolated: dict[str, float] = {}
        for kernel, node_s in zip(features.kernel, work_s, strict=True):
            if node_s > 0 and not self.fitted(kernel):
                extrapolated[kernel] = extrapolated.get(kernel, 0.0) + float(node_s)
        return KernelPrediction(float((work_s + overhead_s).sum() + self.call_overhead_s(features)),
                                dict(sorted(extrapolated.items(), key=lambda item: -item[1])))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelModel:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class KernelPrediction:
    """A kernel model's latency of one graph: ``seconds`` per inference, and the seconds
    (``extrapolated_s``, costliest first) of each kernel group no calibration benchmark
    timed that rest on its op class's fitted efficiency and exponent rather than on its
    own timings."""

    seconds: float
    extrapolated_s: dict[str, float]

    @property
    def extrapolated_share(self) -> float:
        """The fraction (0..1) of ``seconds`` priced by extrapolation."""
        return sum(self.extrapolated_s.values()) / self.seconds if self.seconds > 0 else 0.0

    def extrapolated_shares(self) -> dict[str, float]:
        """Each extrapolated kernel group's fraction (0..1) of ``seconds``, costliest first."""
        return {k: s / self.seconds for k, s in self.extrapolated_s.items()} if self.seconds > 0 else {}


SMOOTH_MAX_POWER = 4.0
# The kernels that define each fitted dtype class's peak (efficiency 1, exponent 1).
REFERENCE_KERNELS = ("MatMul", "MatMulInteger")
# The roofline time at which a kernel's efficiency is quoted (s).
TAU0_S = 1e-6


def smooth_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a⁴ + b⁴)^¼``: the roofline's max, smoothed (see :class:`KernelModel`)."""
    p = SMOOTH_MAX_POWER
    top = np.maximum(np.maximum(a, b), 1e-300)
    return top * ((a / top) ** p + (b / top) ** p) ** (1 / p)


def _scale(tau: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    return TAU0_S * np.power(np.maximum(tau, 0.0) / TAU0_S, exponent)


def fit_kernel_model(
    features: Sequence[NodeFeatures],
    measured_s: Sequence[float],
    levels: int,
    *,
    iterations: int = 200,
    huber: float = 0.2,
    prior: float = 0.1,
) -> tuple[KernelModel, np.ndarray]:
    """Least-squares fit of :class:`KernelModel` to measured seconds, in log space.

    Minimises Σ ρ(log predicted − log measured) over the log of every parameter
    (positivity for free; relative error, so a 5 µs op weighs as much as a 5 ms one) by
    Levenberg–Marquardt with a Huber ρ (``huber`` in log units: one odd benchmark cannot
    drag the rest), then a per-parameter grid search over the kernel groups (a kernel deep
    in one regime has no gradient for the others) and a second descent. The reference
    kernels (MatMul, MatMulInteger) have efficiency and exponent 1 by definition; every
    other group's log-efficiency, log-overhead ratio and log-exponent carry a weak ridge
    ``prior`` towards the shared values, so what the data cannot separate stays shared.
    Returns the model and the log residuals.
    """
    table = _FeatureTable(features)
    groups = table.groups
    n_d, n_l, n_g = len(FITTED_DTYPES), levels, len(groups)
    # Start: 50 GMAC/s, 20 GB/s, full efficiency, linear, shared overheads 1 µs / 0.5 µs / 5 µs.
    theta = np.concatenate([
        np.log(np.full(n_d, 1 / 5e10)), np.log(np.full(n_l, 1 / 2e10)),
        np.zeros(n_g), np.zeros(n_g), np.zeros(n_g), np.log(np.full(n_g, 1e-6)), np.log([5e-7, 1 / 1e10]),
        np.log([1e-6, 5e-7, 5e-6]),
    ])
    start = n_d + n_l
    slices = {
        "peak": slice(0, n_d), "bw": slice(n_d, start),
        "ineff": slice(start, start + n_g), "oh": slice(start + n_g, start + 2 * n_g),
        "exp": slice(start + 2 * n_g, start + 3 * n_g), "unit": slice(start + 3 * n_g, start + 4 * n_g),
        "out": slice(start + 4 * n_g, start + 4 * n_g + 2),
    }
    # Bounds keep a term no benchmark exercises finite (a peak nothing needs would drift to
    # infinity): 1 MMAC/s-10 PMAC/s, 1 MB/s-100 TB/s, efficiency 1e-4-20, exponent 0.2-1
    # (an exponent above 1 would blow up when a model's kernel is larger than any benchmark).
    low = np.concatenate([np.log(np.full(n_d, 1e-16)), np.log(np.full(n_l, 1e-14)), np.full(n_g, -3.0),
                          np.full(n_g, -6.0), np.full(n_g, math.log(0.2)), np.log(np.full(n_g, 1e-12)),
                          np.log([1e-10, 1e-14]), np.log([1e-9, 1e-10, 1e-9])])
    high = np.concatenate([np.log(np.full(n_d, 1e-6)), np.log(np.full(n_l, 1e-6)), np.full(n_g, 9.0),
                           np.full(n_g, 6.0), np.full(n_g, 0.0), np.log(np.full(n_g, 1e-3)),
                           np.log([1e-3, 1e-8]), np.log([1e-2, 1e-2, 1e-1])])
    # The reference kernel of each dtype class defines its peak: efficiency and exponent 1.
    pinned = [slices[name].start + groups.index(g) for g in REFERENCE_KERNELS if g in groups
              for name in ("ineff", "exp")]
    # Groups that never loop over sub-problems have no unit cost to fit: hold it at the floor.
    unitless = [slices["unit"].start + i for i in range(n_g) if not table.group_units[i]]
    theta[unitless] = low[unitless]
    target = np.log(np.asarray(measured_s, dtype=np.float64))
    n_data, n_params = len(features), len(theta)
    regularised = np.r_[slices["ineff"].start:slices["exp"].stop]

    def residuals(t: np.ndarray) -> np.ndarray:
        t = np.clip(t, low, high)
        t[pinned] = 0.0
        t[unitless] = low[unitless]
        predicted = table.predict_log(t, slices)
        return np.concatenate([predicted - target, prior * t[regularised]])

    def weighted_cost(r: np.ndarray) -> float:
        data = np.abs(r[:n_data])
        rho = np.where(data <= huber, data**2, 2 * huber * data - huber**2)
        return float(rho.sum() + np.sum(r[n_data:] ** 2))

    def levenberg_marquardt(theta: np.ndarray) -> np.ndarray:
        damping = 1e-2
        r = residuals(theta)
        for _ in range(iterations):
            data = r[:n_data]
            weights = np.concatenate([
                np.where(np.abs(data) <= huber, 1.0, huber / np.maximum(np.abs(data), 1e-12)),
                np.ones(len(r) - n_data),
            ])
            cost = weighted_cost(r)
            jac = np.empty((len(r), n_params))
            for i in range(n_params):
                shifted = theta.copy()
                shifted[i] += 1e-6
                jac[:, i] = (residuals(shifted) - r) / 1e-6
            normal = (jac * weights[:, None]).T @ jac
            gradient = (jac * weights[:, None]).T @ r
            step = np.zeros(n_params)
            improved = False
            while damping < 1e10:
                lhs = normal + damping * (np.diag(np.diag(normal)) + 1e-9 * np.eye(n_params))
                try:
                    step = -np.linalg.solve(lhs, gradient)
                except np.linalg.LinAlgError:
                    damping *= 10
                    continue
                candidate = np.clip(theta + step, low, high)
                r_new = residuals(candidate)
                if weighted_cost(r_new) < cost:
                    theta, r = candidate, r_new
                    damping = max(damping / 3, 1e-12)
                    improved = True
                    break
                damping *= 10
            if not improved or float(np.max(np.abs(step))) < 1e-8:
                break
        return theta

    def grid_search(theta: np.ndarray) -> np.ndarray:
        grids = {"ineff": np.linspace(-1.0, 7.0, 33), "oh": np.linspace(-3.0, 3.0, 25),
                 "exp": np.log(np.linspace(0.3, 1.0, 15)), "unit": np.log(np.logspace(-8, -4, 25))}
        for name, grid in grids.items():
            for i in range(n_g):
                index = slices[name].start + i
                if index in pinned or index in unitless:
                    continue
                current = weighted_cost(residuals(theta))
                trials = []
                for value in grid:
                    trial = theta.copy()
                    trial[index] = value
                    trials.append(weighted_cost(residuals(trial)))
                best = int(np.argmin(trials))
                if trials[best] < current:
                    theta = theta.copy()
                    theta[index] = grid[best]
        return theta

    theta = levenberg_marquardt(theta)
    theta = levenberg_marquardt(grid_search(theta))
    theta[pinned] = 0.0
    values = np.exp(theta)
    op_oh, light_oh, run_oh = (float(v) for v in values[-3:])
    efficiency = {g: float(1 / x) for g, x in zip(groups, values[slices["ineff"]], strict=True)}
    exponent = {g: float(x) for g, x in zip(groups, values[slices["exp"]], strict=True)}
    overhead = {g: float(x) for g, x in zip(groups, values[slices["oh"]], strict=True)}
    unit_cost = {g: float(x) for i, (g, x) in enumerate(zip(groups, values[slices["unit"]], strict=True))
                 if table.group_units[i]}
    output_overhead, inverse_output_bandwidth = (float(v) for v in values[slices["out"]])
    by_class: dict[str, set[str]] = {}
    for f in features:
        for kernel, op_class in zip(f.kernel, f.op_class, strict=True):
            by_class.setdefault(op_class, set()).add(kernel)

    def class_mean(table_: dict[str, float]) -> dict[str, float]:
        return {c: float(math.exp(np.mean([math.log(table_[k]) for k in ks]))) for c, ks in by_class.items()}

    model = KernelModel(
        peak_macs_per_s={d: float(1 / v) for d, v in zip(FITTED_DTYPES, values[slices["peak"]], strict=True)},
        bandwidth_bytes_per_s=[float(1 / v) for v in values[slices["bw"]]],
        efficiency=efficiency, exponent=exponent, overhead_ratio=overhead, op_overhead_s=op_oh,
        light_overhead_s=light_oh, run_overhead_s=run_oh, unit_cost_s=unit_cost,
        output_overhead_s=output_overhead, output_bandwidth_bytes_per_s=1 / inverse_output_bandwidth,
        class_efficiency=class_mean(efficiency), class_exponent=class_mean(exponent),
    )
    return model, residuals(theta)[:n_data]


class _FeatureTable:
    """Every benchmark's nodes in one set of arrays, so a prediction is a few numpy ops."""

    def __init__(self, features: Sequence[NodeFeatures]) -> None:
        self.groups = sorted({k for f in features for k in f.kernel})
        index = {g: i for i, g in enumerate(self.groups)}
        self.bench = np.concatenate([np.full(len(f.kernel), i) for i, f in enumerate(features)])
        self.group = np.concatenate([[index[k] for k in f.kernel] for f in features]).astype(int)
        self.work = np.concatenate([f.work for f in features])
        self.bytes = np.concatenate([f.bytes for f in features])
        self.light = np.concatenate([f.light for f in features])
        self.dispatched = np.concatenate([f.dispatched for f in features])
        self.units = np.concatenate([f.units for f in features])
        self.outputs = np.asarray([f.outputs for f in features], dtype=np.float64)
        self.output_bytes = np.asarray([f.output_bytes for f in features], dtype=np.float64)
        self.count = len(features)
        self.group_units = [bool(np.any(self.units[self.group == i] > 0)) for i in range(len(self.groups))]

    def predict_log(self, theta: np.ndarray, slices: Mapping[str, slice]) -> np.ndarray:
        values = np.exp(theta)
        compute = self.work @ values[slices["peak"]]
        memory = self.bytes @ values[slices["bw"]]
        scaled = _scale(smooth_max(compute, memory), values[slices["exp"]][self.group])
        op_oh, light_oh, run_oh = values[-3:]
        overhead = np.where(self.light, light_oh, op_oh) * values[slices["oh"]][self.group]
        units = self.units * values[slices["unit"]][self.group]
        per_node = (scaled * values[slices["ineff"]][self.group] + overhead + units) * self.dispatched
        output_overhead, inverse_output_bandwidth = values[slices["out"]]
        calls = run_oh + output_overhead * self.outputs + self.output_bytes * inverse_output_bandwidth
        totals = np.bincount(self.bench, weights=per_node, minlength=self.count) + calls
        return np.log(np.maximum(totals, 1e-12))


# --------------------------------------------------------------------------------------
# The calibrated profile's starting point
# --------------------------------------------------------------------------------------
def initial_profile(target_name: str, threads: int, template: HardwareProfile) -> HardwareProfile:
    """The calibrated profile's starting point: this machine's memory levels, the
    template's energy terms with static power scaled to ``threads`` cores."""
    return HardwareProfile(
        name=calibrated_profile_name(target_name, threads),
        description=f"{target_name} with {threads} thread(s) on this machine, calibrated by greencc cost calibrate",
        peak_macs_per_s={d: 5e10 if d == "float32" else 1e11 for d in FITTED_DTYPES},
        memory_levels=memory_levels_here(threads, template),
        energy_pj_per_mac={d: template.energy_pj_per_mac.get(d, template.energy_pj_per_mac["float32"])
                           for d in FITTED_DTYPES},
        static_power_w=scaled_static_power_w(template, threads),
        op_overhead_s=1e-6,
        supports=dict(template.supports),
        sources=[],
        calibrated=False,
        calibration_note="not yet fitted",
    )



# --------------------------------------------------------------------------------------
# Fitting measured micro-benchmarks
# --------------------------------------------------------------------------------------
@dataclass
class BenchmarkResult:
    """A micro-benchmark's measured median (ms) and, after the fit, its prediction (ms)."""

    name: str
    op_class: str
    dtype: str
    measured_ms: float
    predicted_ms: float = 0.0
    nodes: int = 0

    @property
    def error_pct(self) -> float:
        """(predicted − measured) / measured, in percent."""
        return 100.0 * (self.predicted_ms - self.measured_ms) / self.measured_ms


def fit_calibration(
    target: str,
    threads: int,
    start: HardwareProfile,
    template: HardwareProfile,
    results: Sequence[BenchmarkResult],
    features: Sequence[NodeFeatures],
    *,
    min_time_s: float = 0.0,
    greencc_version: str = "",
) -> Calibration:
    """Fit the kernel model to measured ``results`` and build the calibrated profile."""
    kernel_model, _ = fit_kernel_model(features, [r.measured_ms * 1e-3 for r in results],
                                       len(start.memory_levels))
    for result, feature in zip(results, features, strict=True):
        result.predicted_ms = kernel_model.predict_s(feature) * 1e3
    errors = np.abs([r.error_pct for r in results])
    fit = {
        "kernel_model": kernel_model.to_dict(),
        "benchmarks": [{**asdict(r), "error_pct": r.error_pct} for r in results],
        "median_abs_pct": float(np.median(errors)),
        "p90_abs_pct": float(np.percentile(errors, 90)),
        "max_abs_pct": float(np.max(errors)),
        "rms_log_error": float(np.sqrt(np.mean(np.log([r.predicted_ms / r.measured_ms for r in results]) ** 2))),
        "min_time_s": min_time_s,
    }
    machine = machine_info()
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    profile = _fitted_profile(start, kernel_model, template, machine, created, threads, fit)
    return Calibration(profile=profile, target=target, threads=threads, machine=machine,
                       created=created, run_overhead_s=kernel_model.run_overhead_s, fit=fit,
                       greencc_version=greencc_version)


def _fitted_profile(start: HardwareProfile, model: KernelModel, template: HardwareProfile,
                    machine: Mapping[str, Any], created: str, threads: int,
                    fit: Mapping[str, Any]) -> HardwareProfile:
    levels = [MemoryLevel(lv.name, lv.capacity_bytes, bw, lv.energy_pj_per_byte)
              for lv, bw in zip(start.memory_levels, model.bandwidth_bytes_per_s, strict=True)]
    note = (
        f"latency terms calibrated on {machine['cpu']} ({machine['cores']} logical cores), "
        f"{threads} thread(s), {created}: {len(fit['benchmarks'])} micro-benchmarks, fit error "
        f"median {fit['median_abs_pct']:.1f}% / p90 {fit['p90_abs_pct']:.1f}%; peak = MatMul's "
        "effective throughput; per-kernel efficiencies and the per-inference overhead "
        f"({model.run_overhead_s * 1e6:.1f} us) are in the .calibration.json record; "
        f"{ENERGY_UNCALIBRATED_MARK}: pJ/MAC and pJ/byte are {template.name}'s, static power "
        f"{template.name}'s scaled to {threads} of {HOST_PROFILE_CORES.get(template.name, '?')} cores "
        "(no energy meter was read)"
    )
    sources = [
        "greencc cost calibrate: least-squares fit (log space, Huber) of the per-kernel roofline "
        "to measured micro-benchmark medians; see the .calibration.json record",
        f"memory level capacities: this machine's caches (sysfs) for {threads} thread(s), DRAM = physical memory",
        f"energy terms from profile {template.name} (its sources apply); not measured here",
    ]
    return HardwareProfile(
        name=start.name,
        description=start.description,
        peak_macs_per_s={d: float(v) for d, v in model.peak_macs_per_s.items()},
        memory_levels=levels,
        energy_pj_per_mac=dict(start.energy_pj_per_mac),
        static_power_w=start.static_power_w,
        op_overhead_s=model.op_overhead_s,
        supports=dict(start.supports),
        sources=sources,
        calibrated=True,
        calibration_note=note,
    )


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(staging, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


