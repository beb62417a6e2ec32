"""The default profile is this machine: the profile detected from the CPU (SIMD, clock,
caches), the quick calibration a target named without a profile runs on first use (tiny
suite here), its budget and busy-machine guard, and the modes of $GREENCC_HOST_PROFILE."""

from __future__ import annotations

from pathlib import Path

import onnx.parser
import pytest

import greencc as gc
from greencc.cost import kernel_model as km
from greencc.cost.host import HostCpu, host_profile
from greencc.cost.profile import HardwareProfile
from greencc.errors import UsageError
from greencc.execution import calibrate as cal
from greencc.target import resolve_target

TINY = "neg[1]x1|neg[1]x16|matmul 16x32x32|matmulinteger 1x384x384"

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4, 32] x) => (float[4, 4] y) {
  t = Transpose<perm = [1, 0]>(x)
  y = MatMul(x, t)
}"""


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GREENCC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tiny_suite(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The quick suite cut to four benchmarks; returns the log of quick calibrations run."""
    runs: list[str] = []
    quick = cal.quick_calibration

    def counted(target, **kwargs):  # noqa: ANN001, ANN003, ANN202 - a spy with the same signature
        runs.append(target.name)
        return quick(target, **{"benchmarks": [b for b in cal.default_benchmarks() if b.name in TINY.split("|")],
                                "min_time_s": 0.01, **kwargs})

    monkeypatch.setattr(cal, "quick_calibration", counted)
    monkeypatch.setattr(cal, "_GAVE_UP", set())
    monkeypatch.setattr(cal.BackgroundLoad, "noisy", property(lambda self: False))
    return runs


def _cpu(flags: str, ghz: float = 2.5) -> HostCpu:
    return HostCpu(model="test cpu", logical_cores=8, arch="x86_64", flags=frozenset(flags.split()),
                   frequency_hz=ghz * 1e9, caches={2: (1 << 20, False), 3: (32 << 20, True)})


@pytest.mark.parametrize(("flags", "per_cycle"), [
    ("fma avx2 avx512f avx512_vnni amx_int8", (32.0, 1024.0)),
    ("fma avx2 avx512f avx512_vnni", (32.0, 128.0)),
    ("fma avx2 avx_vnni", (16.0, 64.0)),
    ("fma avx2", (16.0, 32.0)),
    ("asimd asimddp", (8.0, 32.0)),
    ("sse2", (4.0, 8.0)),
])
def test_simd_flags_give_macs_per_cycle(flags: str, per_cycle: tuple[float, float]) -> None:
    assert _cpu(flags).macs_per_cycle() == per_cycle


def test_detected_profile_is_threads_times_clock_times_simd() -> None:
    template = HardwareProfile.named("x86-avx512")
    profile = host_profile("ort-cpu", 2, template, _cpu("fma avx2 avx512f avx512_vnni", ghz=2.0))
    assert profile.name == "ort-cpu-2threads-detected" and not profile.calibrated
    assert profile.peak_macs_per_s == {"float32": 2 * 2e9 * 32, "int8": 2 * 2e9 * 128}
    assert [lv.name for lv in profile.memory_levels] == ["L2", "L3", "DRAM"]
    assert profile.memory_levels[0].capacity_bytes == 2 << 20  # private L2, one per thread
    assert profile.memory_levels[1].capacity_bytes == 32 << 20  # shared L3, once
    assert profile.static_power_w == pytest.approx(template.static_power_w * 2 / 96)
    assert profile.energy_pj_per_mac["int8"] == template.energy_pj_per_mac["int8"]


def test_detect_mode_prices_on_this_cpu_without_running_anything(monkeypatch: pytest.MonkeyPatch,
                                                                  tiny_suite: list[str]) -> None:
    monkeypatch.setenv(cal.HOST_PROFILE_ENV, "detect")
    profile = cal.machine_profile(resolve_target("ort-cpu", threads=1))
    assert profile is not None and profile.name == "ort-cpu-1threads-detected"
    fp32, int8 = HostCpu.detect().macs_per_cycle()
    assert profile.peak_macs_per_s["int8"] / profile.peak_macs_per_s["float32"] == pytest.approx(int8 / fp32)
    assert tiny_suite == []


def test_off_mode_keeps_the_shipped_profile(monkeypatch: pytest.MonkeyPatch, tiny_suite: list[str]) -> None:
    monkeypatch.setenv(cal.HOST_PROFILE_ENV, "off")
    assert cal.machine_profile(resolve_target("ort-cpu", threads=1)) is None
    compiled = gc.compile(gc.load(onnx.parser.parse_model(MODEL)), "ort-cpu", "-O1", threads=1)
    assert compiled.report.profile["name"] == "x86-avx512"
    assert tiny_suite == []


def test_unknown_mode_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cal.HOST_PROFILE_ENV, "sometimes")
    with pytest.raises(UsageError, match="GREENCC_HOST_PROFILE"):
        cal.machine_profile(resolve_target("ort-cpu", threads=1))


def test_first_compile_calibrates_once_and_later_ones_reuse_it(monkeypatch: pytest.MonkeyPatch,
                                                               tiny_suite: list[str]) -> None:
    monkeypatch.setenv(cal.HOST_PROFILE_ENV, "calibrate")
    model = gc.load(onnx.parser.parse_model(MODEL))
    first = gc.compile(model, "ort-cpu", "-O1", threads=1)
    assert tiny_suite == ["ort-cpu"]
    assert first.report.profile["name"] == "ort-cpu-1threads" and first.report.profile["calibrated"]
    saved = km.find_calibration("ort-cpu", 1)
    assert saved is not None and saved.fit["suite"] == "quick" and saved.fit["wall_s"] > 0
    assert "quick calibration on first use" in saved.profile.calibration_note
    second = gc.compile(model, "ort-cpu", "-O1", threads=1)
    assert tiny_suite == ["ort-cpu"]  # found, not run again
    assert second.report.profile["name"] == "ort-cpu-1threads"
    # A profile named on purpose (a tag, or profile=) is kept.
    named = gc.compile(model, "ort-cpu", "-O1", threads=1, target_options={"profile": "x86-avx512"})
    assert named.report.profile["name"] == "x86-avx512"
    assert gc.compile(model, "x86-avx512", "-O1", threads=1).report.profile["name"] == "x86-avx512"


def test_a_quick_calibration_over_budget_saves_nothing(monkeypatch: pytest.MonkeyPatch,
                                                       tiny_suite: list[str]) -> None:
    monkeypatch.setenv(cal.HOST_PROFILE_ENV, "calibrate")
    target = resolve_target("ort-cpu", threads=1)
    assert cal.quick_calibration(target, budget_s=0.0) is None
    assert km.find_calibration("ort-cpu", 1) is None
    profile = cal.machine_profile(target)  # its own run fits the budget
    assert profile is not None and profile.name == "ort-cpu-1threads"


def test_a_busy_machine_saves_nothing_and_prices_on_the_detected_profile(monkeypatch: pytest.MonkeyPatch,
                                                                         tiny_suite: list[str]) -> None:
    monkeypatch.setenv(cal.HOST_PROFILE_ENV, "calibrate")
    monkeypatch.setattr(cal.BackgroundLoad, "noisy", property(lambda self: True))
    profile = cal.machine_profile(resolve_target("ort-cpu", threads=1))
    assert tiny_suite == ["ort-cpu"]
    assert profile is not None and profile.name == "ort-cpu-1threads-detected"
    assert km.find_calibration("ort-cpu", 1) is None
    cal.machine_profile(resolve_target("ort-cpu", threads=1))
    assert tiny_suite == ["ort-cpu"]  # not retried in this process


def test_the_quick_budget_stops_early_fits_what_it_covered_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                                      tiny_suite: list[str]) -> None:
    # A fake clock: preparing a micro-benchmark (reading its features) takes 4 s, timing it none.
    now = [0.0]
    features = cal.node_features

    def slow_features(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - a wrapper with the same signature
        now[0] += 4.0
        return features(*args, **kwargs)

    monkeypatch.setattr(cal, "node_features", slow_features)
    suite = [b for b in cal.default_benchmarks() if b.name in TINY.split("|")]
    names = [b.name for b in suite]
    target = resolve_target("ort-cpu", threads=1)
    # 10 s covers the first two (prepared at 4 s and 8 s); the third is prepared at 12 s, not timed.
    monkeypatch.setattr(cal, "QUICK_DECISIVE", tuple(names[:2]))
    calibration = cal.quick_calibration(target, benchmarks=suite, min_time_s=0.01, budget_s=10.0,
                                        clock=lambda: now[0])
    assert calibration is not None
    assert calibration.fit["covered"] == names[:2] and calibration.fit["skipped"] == names[2:]
    assert calibration.fit["wall_s"] == 12.0 and len(calibration.fit["features"]) == 2
    saved = km.find_calibration("ort-cpu", 1)
    assert saved is not None and saved.fit["covered"] == names[:2]
    assert f"2 of 4 micro-benchmarks (the budget skipped {', '.join(names[2:])})" in saved.profile.calibration_note

    # A budget that ends before what -O3 decides on is timed saves nothing.
    km.calibration_path("ort-cpu-1threads").unlink()
    now[0] = 0.0
    monkeypatch.setattr(cal, "QUICK_DECISIVE", tuple(names[:3]))
    assert cal.quick_calibration(target, benchmarks=suite, min_time_s=0.01, budget_s=10.0,
                                 clock=lambda: now[0]) is None
    assert km.find_calibration("ort-cpu", 1) is None
