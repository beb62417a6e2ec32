"""``HardwareProfile``: the numbers the cost model needs about one device, as plain data.

A profile is JSON (``targets/profiles/<name>.json``) with documented units and the sources
each number was derived from; loading validates it, so a typo fails loudly, not silently.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greencc.errors import UsageError

# Throughput/energy classes an op's arithmetic runs in. They are classes, not exact types:
# 8-bit integers and fp8 run as "int8", wider integers and fp64 as "float32" (see ops.py).
DTYPE_CLASSES: tuple[str, ...] = ("float32", "float16", "bfloat16", "int8")
# Every profile must give this class; a class a profile leaves out falls back to it.
FALLBACK_DTYPE = "float32"

UNITS: dict[str, str] = {
    "peak_macs_per_s": "multiply-accumulates per second, whole device, dense, per dtype class",
    "memory_levels[].capacity_bytes": "bytes",
    "memory_levels[].bandwidth_bytes_per_s": "bytes per second, whole device",
    "memory_levels[].energy_pj_per_byte": "picojoules per byte moved",
    "energy_pj_per_mac": "picojoules per multiply-accumulate, per dtype class",
    "static_power_w": "watts drawn whatever the work (leakage, uncore, idle DRAM)",
    "op_overhead_s": "seconds of fixed dispatch cost per executed node",
}

_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass
class MemoryLevel:
    """One level of the memory hierarchy where a tensor can live between ops.

    ``capacity_bytes`` (bytes, whole device), ``bandwidth_bytes_per_s`` (bytes/s, whole
    device) and ``energy_pj_per_byte`` (pJ per byte read or written).
    """

    name: str
    capacity_bytes: int
    bandwidth_bytes_per_s: float
    energy_pj_per_byte: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of this level."""
        return dataclasses.asdict(self)


@dataclass
class HardwareProfile:
    """Peak throughput, memory hierarchy, energy and static power of one device.

    Units: ``peak_macs_per_s`` in MAC/s and ``energy_pj_per_mac`` in pJ/MAC, both keyed by
    dtype class (``float32``, ``float16``, ``bfloat16``, ``int8``); ``memory_levels``
    ordered fastest (smallest) first, the last one being DRAM; ``static_power_w`` in W;
    ``op_overhead_s`` in seconds per executed node. ``supports`` lists what the hardware
    can exploit (``int8``, ``sparsity_2_4``, ``fused_ops``...). ``sources`` cite where each
    number comes from; ``calibrated`` says whether they were ever checked against
    measurement, and ``calibration_note`` how (or that they were not).
    """

    name: str
    description: str
    peak_macs_per_s: dict[str, float]
    memory_levels: list[MemoryLevel]
    energy_pj_per_mac: dict[str, float]
    static_power_w: float
    op_overhead_s: float
    supports: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    calibrated: bool = False
    calibration_note: str = "never checked against measurement"

    def __post_init__(self) -> None:
        self.validate()

    # -- loading and saving ------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, origin: str = "profile") -> HardwareProfile:
        """Build and validate a profile from a dict as written by :meth:`to_dict`.

        Raises :class:`UsageError` naming the missing, unknown or invalid field.
        """
        if not isinstance(data, dict):
            raise UsageError(
                f"{origin}: a hardware profile must be a JSON object, got {type(data).__name__}"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        unknown = sorted(set(data) - fields - {"units"})
        if unknown:
            raise UsageError(
                f"{origin}: unknown field(s) {unknown} in hardware profile",
                hint=f"the fields are {', '.join(sorted(fields))}",
            )
        missing = sorted(required - set(data))
        if missing:
            raise UsageError(f"{origin}: hardware profile lacks field(s) {missing}")
        kwargs = {k: v for k, v in data.items() if k in fields}
        levels = kwargs["memory_levels"]
        if not isinstance(levels, list) or not levels:
            raise UsageError(f"{origin}: memory_levels must be a non-empty list")
        parsed_levels = []
        for i, level in enumerate(levels):
            if isinstance(level, MemoryLevel):
                parsed_levels.append(level)
                continue
            level_fields = {f.name for f in dataclasses.fields(MemoryLevel)}
            if not isinstance(level, dict) or set(level) != level_fields:
                raise UsageError(
                    f"{origin}: memory_levels[{i}] must have exactly the fields "
                    f"{sorted(level_fields)}",
                    hint=f"got {sorted(level) if isinstance(level, dict) else type(level).__name__}",
                )
            parsed_levels.append(MemoryLevel(**level))
        kwargs["memory_levels"] = parsed_levels
        try:
            return cls(**kwargs)
        except UsageError as exc:
            raise UsageError(f"{origin}: {exc.message}", hint=exc.hint) from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> HardwareProfile:
        """Load and validate a profile from a JSON file; :class:`UsageError` on bad content."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read hardware profile {path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                hint="fix the file; see targets/profiles/*.json for the format",
            ) from None
        return cls.from_dict(data, origin=str(path))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of this profile (with a ``units`` legend)."""
        data = dataclasses.asdict(self)
        data["units"] = dict(UNITS)
        return data

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write this profile as JSON to ``path`` atomically; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            os.chmod(staging, 0o644)  # mkstemp makes 0600; a profile is shared, readable data
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.to_dict(), handle, indent=2)
                handle.write("\n")
            os.replace(staging, path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def named(cls, name: str) -> HardwareProfile:
        """The built-in profile ``targets/profiles/<name>.json`` (``x86-avx512``...).

        Raises :class:`UsageError` listing the available names when ``name`` is unknown.
        """
        available = cls.available_profiles()
        if not isinstance(name, str) or name not in available:
            raise UsageError(
                f"unknown hardware profile '{name}'",
                hint=f"available profiles: {', '.join(available) or '(none installed)'}",
            )
        resource = _profiles_dir() / f"{name}.json"
        try:
            data = json.loads(resource.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UsageError(f"built-in profile '{name}' is not valid JSON: {exc.msg}") from None
        return cls.from_dict(data, origin=f"profile '{name}'")

    @staticmethod
    def available_profiles() -> list[str]:
        """Names of the built-in profiles, sorted."""
        return available_profiles()

    # -- queries -----------------------------------------------------------------------
    def memory_level_for(self, nbytes: int) -> MemoryLevel:
        """The fastest level whose capacity holds ``nbytes``; the last level (DRAM) otherwise."""
        for level in self.memory_levels:
            if nbytes <= level.capacity_bytes:
                return level
        return self.memory_levels[-1]

    def dtype_class(self, dtype: str) -> str:
        """``dtype`` if this profile gives numbers for it, else the fallback ``float32``."""
        return dtype if dtype in self.peak_macs_per_s else FALLBACK_DTYPE

    # -- validation --------------------------------------------------------------------
    def validate(self) -> None:
        """Check every number is finite and in range; raise :class:`UsageError` if not."""
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise UsageError(
                f"profile name {self.name!r} is invalid",
                hint="use lower-case letters, digits, '.', '_' and '-', e.g. 'my-npu'",
            )
        if not isinstance(self.description, str):
            raise UsageError("description must be a string")
        for field_name in ("peak_macs_per_s", "energy_pj_per_mac"):
            table = getattr(self, field_name)
            if not isinstance(table, dict) or not table:
                raise UsageError(f"{field_name} must be a non-empty object keyed by dtype class")
            unknown = sorted(set(table) - set(DTYPE_CLASSES))
            if unknown:
                raise UsageError(
                    f"{field_name} has unknown dtype class(es) {unknown}",
                    hint=f"known classes: {', '.join(DTYPE_CLASSES)}",
                )
            if FALLBACK_DTYPE not in table:
                raise UsageError(
                    f"{field_name} must give '{FALLBACK_DTYPE}' (the class others fall back to)"
                )
            for dtype, value in table.items():
                _check_positive(f"{field_name}[{dtype!r}]", value)
        if set(self.peak_macs_per_s) != set(self.energy_pj_per_mac):
            raise UsageError(
                "peak_macs_per_s and energy_pj_per_mac must give the same dtype classes",
                hint=f"got {sorted(self.peak_macs_per_s)} and {sorted(self.energy_pj_per_mac)}",
            )
        if not isinstance(self.memory_levels, list) or not self.memory_levels:
            raise UsageError("memory_levels must be a non-empty list, fastest first")
        previous = 0
        for i, level in enumerate(self.memory_levels):
            if not isinstance(level, MemoryLevel):
                raise UsageError(f"memory_levels[{i}] must be a MemoryLevel")
            if not isinstance(level.name, str) or not level.name:
                raise UsageError(f"memory_levels[{i}].name must be a non-empty string")
            if isinstance(level.capacity_bytes, bool) or not isinstance(level.capacity_bytes, int):
                raise UsageError(f"memory_levels[{i}].capacity_bytes must be an integer (bytes)")
            _check_positive(f"memory_levels[{i}].capacity_bytes", level.capacity_bytes)
            _check_positive(f"memory_levels[{i}].bandwidth_bytes_per_s", level.bandwidth_bytes_per_s)
            _check_positive(f"memory_levels[{i}].energy_pj_per_byte", level.energy_pj_per_byte)
            if level.capacity_bytes <= previous:
                raise UsageError(
                    f"memory level '{level.name}' is no larger than the level before it",
                    hint="order memory_levels fastest and smallest first, DRAM last",
                )
            previous = level.capacity_bytes
        _check_positive("static_power_w", self.static_power_w, allow_zero=True)
        _check_positive("op_overhead_s", self.op_overhead_s, allow_zero=True)
        if not isinstance(self.supports, dict):
            raise UsageError("supports must be an object, e.g. {\"int8\": true, \"fused_ops\": []}")
        fused = self.supports.get("fused_ops", [])
        if not isinstance(fused, list) or not all(isinstance(op, str) for op in fused):
            raise UsageError("supports.fused_ops must be a list of op type names")
        if not isinstance(self.sources, list) or not all(isinstance(s, str) for s in self.sources):
            raise UsageError("sources must be a list of citation strings")
        if not isinstance(self.calibrated, bool):
            raise UsageError("calibrated must be true or false")
        if not isinstance(self.calibration_note, str):
            raise UsageError("calibration_note must be a string")


def _check_positive(what: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = "non-negative" if allow_zero else "positive"
        raise UsageError(f"{what} must be a {bound} finite number, got {value!r}")


def _profiles_dir() -> Path:
    """``targets/profiles`` of the installed ``greencc.targets`` package, found without
    importing it (importing it would register every target: the cost layer stays below them)."""
    spec = importlib.util.find_spec("greencc.targets")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) / "profiles" if locations else Path(os.devnull)


def available_profiles() -> list[str]:
    """Names of the built-in hardware profiles (``targets/profiles/*.json``), sorted."""
    directory = _profiles_dir()
    if not directory.is_dir():
        return []
    return sorted(
        entry.name[: -len(".json")]
        for entry in directory.iterdir()
        if entry.name.endswith(".json") and _NAME_PATTERN.match(entry.name[: -len(".json")])
    )
