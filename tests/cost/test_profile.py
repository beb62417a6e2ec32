"""Hardware profiles: the built-ins load and round-trip; bad ones fail with UsageError."""

from __future__ import annotations

import json

import pytest

from greencc.cost import HardwareProfile, MemoryLevel
from greencc.cost.profile import DTYPE_CLASSES
from greencc.errors import UsageError

BUILT_IN = ["arm-cortex-a76", "asic-int8-systolic", "nvidia-h100", "x86-avx512"]


def test_built_in_profiles_are_listed():
    assert HardwareProfile.available_profiles() == BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_profile_loads_and_is_honest(name):
    profile = HardwareProfile.named(name)
    assert profile.name == name
    assert set(profile.peak_macs_per_s) == set(DTYPE_CLASSES)
    assert profile.calibrated is False
    assert "never checked against measurement" in profile.calibration_note
    assert len(profile.sources) >= 3
    capacities = [level.capacity_bytes for level in profile.memory_levels]
    assert capacities == sorted(capacities)
    assert profile.supports["int8"] is True
    # int8 is never slower nor costlier per MAC than float32
    assert profile.peak_macs_per_s["int8"] >= profile.peak_macs_per_s["float32"]
    assert profile.energy_pj_per_mac["int8"] <= profile.energy_pj_per_mac["float32"]


@pytest.mark.parametrize("name", BUILT_IN)
def test_round_trip_through_dict_and_json(name, tmp_path):
    profile = HardwareProfile.named(name)
    again = HardwareProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again == profile
    path = profile.to_json(tmp_path / "sub" / f"{name}.json")
    assert HardwareProfile.from_json(path) == profile
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{name}.json"]  # no staging left
    assert path.stat().st_mode & 0o044 == 0o044  # readable by others, like any data file


def test_unknown_name_lists_available():
    with pytest.raises(UsageError) as info:
        HardwareProfile.named("tpu-v9")
    assert "x86-avx512" in info.value.hint
    with pytest.raises(UsageError):
        HardwareProfile.named("../profiles/x86-avx512")


def test_memory_level_for():
    profile = HardwareProfile.named("x86-avx512")
    first, *_, last = profile.memory_levels
    assert profile.memory_level_for(1) is first
    assert profile.memory_level_for(first.capacity_bytes + 1) is profile.memory_levels[1]
    assert profile.memory_level_for(last.capacity_bytes * 2) is last


def _valid() -> dict:
    return HardwareProfile.named("asic-int8-systolic").to_dict()


def test_not_json_is_a_usage_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "broken", ')
    with pytest.raises(UsageError, match="not valid JSON"):
        HardwareProfile.from_json(path)
    with pytest.raises(UsageError, match="cannot read"):
        HardwareProfile.from_json(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("static_power_w"), "lacks field"),
        (lambda d: d.update(peak_mac_per_s={}), "unknown field"),
        (lambda d: d["peak_macs_per_s"].update(float32=-1.0), "positive"),
        (lambda d: d["peak_macs_per_s"].update(float64=1e9), "unknown dtype class"),
        (lambda d: d["energy_pj_per_mac"].pop("int8"), "same dtype classes"),
        (lambda d: d["peak_macs_per_s"].update(float32="fast"), "positive"),
        (lambda d: d["memory_levels"][0].update(bandwidth_bytes_per_s=0), "positive"),
        (lambda d: d["memory_levels"][0].update(capacity_bytes=10**15), "no larger"),
        (lambda d: d["memory_levels"][0].pop("energy_pj_per_byte"), "exactly the fields"),
        (lambda d: d.update(memory_levels=[]), "non-empty"),
        (lambda d: d.update(static_power_w=float("nan")), "finite"),
        (lambda d: d.update(name="Bad Name"), "invalid"),
        (lambda d: d.update(calibrated="no"), "true or false"),
    ],
)
def test_invalid_profiles_are_rejected(edit, message, tmp_path):
    data = _valid()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=message):
        HardwareProfile.from_json(path)


def test_constructed_profile_is_validated():
    with pytest.raises(UsageError, match="float32"):
        HardwareProfile(
            name="int8-only", description="", peak_macs_per_s={"int8": 1e12},
            memory_levels=[MemoryLevel("dram", 1 << 30, 1e10, 20.0)],
            energy_pj_per_mac={"int8": 0.1}, static_power_w=1.0, op_overhead_s=0.0,
        )
