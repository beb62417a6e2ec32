"""The int8 systolic-array accelerator as data: ``SystolicArraySpec``, read from a hardware
profile's ``supports.systolic_array`` section and checked against the numbers the cost
model reads from the same profile, so the estimate and the simulator describe one device.

A variant (another array size or energy table) is ``derive_profile(base, name, ...)``: a
new ``HardwareProfile`` whose roofline numbers follow from its array.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greencc.cost.profile import HardwareProfile, MemoryLevel
from greencc.errors import UsageError

if TYPE_CHECKING:
    from greencc.cost.profile import HardwareProfile

SECTION = "systolic_array"
# The memory levels the simulator counts bytes at, outermost first.
LEVELS: tuple[str, ...] = ("dram", "weight_sram", "activation_sram", "accumulator_sram")
# The roofline numbers a profile must agree on with its array (relative tolerance).
_AGREEMENT = 1e-6


@dataclass(frozen=True)
class SystolicArraySpec:
    """A weight-stationary int8 systolic array: ``rows`` × ``cols`` MACs at ``clock_hz`` Hz.

    Each MAC multiplies int8 (or uint8) operands into an int32 accumulator. SRAM sizes in
    bytes (weights, activations, int32 accumulators); ``dram_bandwidth_bytes_per_s`` in
    bytes/s; ``vector_lanes`` elements per cycle of the (re)quantization unit;
    ``energy_pj_per_mac`` in pJ per int8 MAC; ``energy_pj_per_byte`` in pJ per byte moved,
    keyed by level (``dram``, ``weight_sram``, ``activation_sram``, ``accumulator_sram``);
    ``static_power_w`` in W (the profile's).
    """

    rows: int
    cols: int
    clock_hz: float
    weight_sram_bytes: int
    activation_sram_bytes: int
    accumulator_sram_bytes: int
    dram_bandwidth_bytes_per_s: float
    vector_lanes: int
    energy_pj_per_mac: float
    energy_pj_per_byte: dict[str, float]
    static_power_w: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "weight_sram_bytes", "activation_sram_bytes",
                     "accumulator_sram_bytes", "vector_lanes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{SECTION}.{name} must be a positive integer, got {value!r}")
        for name in ("clock_hz", "dram_bandwidth_bytes_per_s", "energy_pj_per_mac"):
            _check_number(f"{SECTION}.{name}", getattr(self, name), allow_zero=False)
        _check_number(f"{SECTION}.static_power_w", self.static_power_w, allow_zero=True)
        table = self.energy_pj_per_byte
        if not isinstance(table, dict) or set(table) != set(LEVELS):
            got = sorted(table) if isinstance(table, dict) else type(table).__name__
            raise UsageError(
                f"{SECTION}.energy_pj_per_byte must give exactly the levels {list(LEVELS)}",
                hint=f"got {got}",
            )
        for level, value in table.items():
            _check_number(f"{SECTION}.energy_pj_per_byte[{level!r}]", value, allow_zero=True)
        if self.accumulator_sram_bytes < 4 * self.cols:
            raise UsageError(
                f"{SECTION}.accumulator_sram_bytes={self.accumulator_sram_bytes} cannot hold one "
                f"row of {self.cols} int32 partial sums",
                hint=f"give at least {4 * self.cols} bytes",
            )

    @property
    def peak_macs_per_s(self) -> float:
        """rows × cols × clock: int8 MAC/s when every cell is busy."""
        return self.rows * self.cols * self.clock_hz

    @classmethod
    def from_dict(cls, data: Any, *, static_power_w: float = 0.0, origin: str = "profile") -> SystolicArraySpec:
        """Parse the ``systolic_array`` section; ``UsageError`` naming a missing or bad field."""
        if not isinstance(data, dict):
            raise UsageError(f"{origin}: supports.{SECTION} must be an object")
        fields = {f.name for f in dataclasses.fields(cls)} - {"static_power_w"}
        missing, unknown = sorted(fields - set(data)), sorted(set(data) - fields)
        if missing or unknown:
            raise UsageError(
                f"{origin}: supports.{SECTION} " + (f"lacks {missing}" if missing else f"has unknown {unknown}"),
                hint=f"its fields are {', '.join(sorted(fields))}",
            )
        values = dict(data)
        values["energy_pj_per_byte"] = dict(values["energy_pj_per_byte"]) if isinstance(
            values["energy_pj_per_byte"], dict) else values["energy_pj_per_byte"]
        try:
            return cls(**values, static_power_w=static_power_w)
        except UsageError as exc:
            raise UsageError(f"{origin}: {exc.message}", hint=exc.hint) from None

    @classmethod
    def from_profile(cls, profile: HardwareProfile) -> SystolicArraySpec:
        """The array a profile describes, checked against the profile's roofline numbers
        (int8 peak MAC/s, int8 pJ/MAC and DRAM bandwidth must agree)."""
        origin = f"profile '{profile.name}'"
        section = profile.supports.get(SECTION)
        if section is None:
            raise UsageError(
                f"{origin} describes no systolic array (supports.{SECTION} is missing)",
                hint="use the 'asic-int8-systolic' profile, or one made with "
                "greencc.targets.asic.spec.derive_profile",
            )
        spec = cls.from_dict(section, static_power_w=profile.static_power_w, origin=origin)
        checks = (
            ("peak_macs_per_s['int8']", profile.peak_macs_per_s.get("int8"), spec.peak_macs_per_s,
             "rows × cols × clock_hz"),
            ("energy_pj_per_mac['int8']", profile.energy_pj_per_mac.get("int8"), spec.energy_pj_per_mac,
             f"{SECTION}.energy_pj_per_mac"),
            (f"memory_levels[-1] ('{profile.memory_levels[-1].name}') bandwidth",
             profile.memory_levels[-1].bandwidth_bytes_per_s, spec.dram_bandwidth_bytes_per_s,
             f"{SECTION}.dram_bandwidth_bytes_per_s"),
        )
        for what, given, implied, source in checks:
            if given is None or not math.isclose(float(given), implied, rel_tol=_AGREEMENT):
                raise UsageError(
                    f"{origin}: {what} is {given}, but its systolic array implies {implied:g} ({source})",
                    hint="the cost model and the simulator must describe the same device; "
                    "derive variants with greencc.targets.asic.spec.derive_profile",
                )
        return spec

    def to_dict(self) -> dict[str, Any]:
        """The ``systolic_array`` section (without the profile's static power)."""
        data = dataclasses.asdict(self)
        data.pop("static_power_w")
        return data


def derive_profile(base: HardwareProfile, name: str, description: str, **changes: Any) -> HardwareProfile:
    """A copy of ``base`` with its systolic array changed by ``changes`` (field=value, e.g.
    ``rows=32, cols=32``, ``energy_pj_per_byte={...}``) and the roofline numbers the cost
    model reads made to agree with it: int8 peak MAC/s, int8 pJ/MAC, the first memory
    level (the on-chip SRAMs together) and the DRAM level's bandwidth and pJ/byte."""

    array = SystolicArraySpec.from_profile(base)
    static = changes.pop("static_power_w", base.static_power_w)
    try:
        array = dataclasses.replace(array, static_power_w=static, **changes)
    except TypeError as exc:
        raise UsageError(f"derive_profile: {exc}", hint=f"fields: {', '.join(array.to_dict())}") from None
    data = base.to_dict()
    data.update(name=name, description=description, static_power_w=static, calibrated=False,
                calibration_note=f"derived from '{base.name}' ({base.calibration_note})")
    data["peak_macs_per_s"] = {**base.peak_macs_per_s, "int8": array.peak_macs_per_s}
    data["energy_pj_per_mac"] = {**base.energy_pj_per_mac, "int8": array.energy_pj_per_mac}
    sram = array.weight_sram_bytes + array.activation_sram_bytes + array.accumulator_sram_bytes
    levels = [MemoryLevel(**level) if isinstance(level, dict) else level for level in data["memory_levels"]]
    first, dram = levels[0], levels[-1]
    energy = array.energy_pj_per_byte
    levels[0] = MemoryLevel(first.name, sram, first.bandwidth_bytes_per_s * array.clock_hz / _clock(base),
                            max(energy["weight_sram"], energy["activation_sram"]))
    levels[-1] = MemoryLevel(dram.name, max(dram.capacity_bytes, sram + 1),
                             array.dram_bandwidth_bytes_per_s, energy["dram"])
    data["memory_levels"] = [dataclasses.asdict(level) for level in levels]
    data["supports"] = {**base.supports, SECTION: array.to_dict()}
    data["sources"] = [*base.sources, f"derived with greencc.targets.asic.spec.derive_profile from '{base.name}'"]
    return HardwareProfile.from_dict(data, origin=f"profile '{name}'")


def _clock(profile: HardwareProfile) -> float:
    return float(profile.supports[SECTION]["clock_hz"])


def _check_number(what: str, value: Any, *, allow_zero: bool) -> None:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value >= 0 if allow_zero else value > 0))
    if not ok:
        raise UsageError(f"{what} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


__all__ = ["LEVELS", "SystolicArraySpec", "derive_profile"]
