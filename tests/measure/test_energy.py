"""Energy meters: RAPL against a fake powercap tree (wrap-around included), NVML against a
stand-in module (and a real GPU when one is present), the CPU-time estimate, the windowed
harness and the meter choice."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from greencc.errors import UsageError
from greencc.measure import (
    CpuTimeEstimateMeter,
    EnergyMeasurement,
    Meter,
    NvmlMeter,
    RaplMeter,
    best_meter,
    measure_energy,
)
from greencc.measure.energy import METHOD_CPU_ESTIMATE, METHOD_NVML, METHOD_RAPL


# ----------------------------------------------------------------------------- fakes
def _zone(path: Path, name: str, energy_uj: int, max_uj: int = 1_000_000) -> Path:
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


def _fake_powercap(root: Path) -> dict[str, Path]:
    """A two-level tree like Linux's: package-0 with core and dram sub-zones, and psys."""
    zones = {
        "package": _zone(root / "intel-rapl:0", "package-0", 100),
        "core": _zone(root / "intel-rapl:0" / "intel-rapl:0:0", "core", 50),
        "dram": _zone(root / "intel-rapl:0" / "intel-rapl:0:2", "dram", 10),
        "psys": _zone(root / "intel-rapl:1", "psys", 7),
    }
    return zones


def _set(zone: Path, energy_uj: int) -> None:
    (zone / "energy_uj").write_text(f"{energy_uj}\n")


class FakeNvml:
    """The part of pynvml the meter uses: a counter in mJ the test advances."""

    class NVMLError(Exception):
        pass

    def __init__(self, supported: bool = True) -> None:
        self.energy_mj = 5_000
        self.supported = supported
        self.inits = 0

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        self.inits += 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(index=index)

    def nvmlDeviceGetName(self, handle: SimpleNamespace) -> bytes:  # noqa: N802
        return b"Fake GPU"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: SimpleNamespace) -> int:  # noqa: N802
        if not self.supported:
            raise self.NVMLError("Not Supported")
        return self.energy_mj


# ----------------------------------------------------------------------------- RAPL
def test_rapl_sums_package_and_dram_only(tmp_path: Path) -> None:
    zones = _fake_powercap(tmp_path)
    meter = RaplMeter(tmp_path)
    assert meter.available().ok
    assert sorted(d.name for d in meter.domains()) == ["dram", "package-0"]
    assert meter.describe() == "RAPL package-0 + dram"
    assert meter.read_j() == 0.0  # the first read sets the origin
    _set(zones["package"], 100 + 2_000_000 % 1_000_000 + 300_000)  # +300 mJ
    _set(zones["dram"], 10 + 40_000)  # +40 mJ
    _set(zones["core"], 999_999)  # part of the package: must not be added
    _set(zones["psys"], 999_999)  # the whole platform: must not be added
    assert meter.read_j() == pytest.approx(0.340)


def test_rapl_handles_wrap_around(tmp_path: Path) -> None:
    zones = _fake_powercap(tmp_path)
    _set(zones["package"], 999_900)  # 100 µJ below the wrap at 1,000,000
    meter = RaplMeter(tmp_path)
    meter.read_j()
    _set(zones["package"], 400)  # wrapped: 100 + 400 µJ elapsed
    assert meter.read_j() == pytest.approx(500e-6)
    _set(zones["package"], 900_400)  # no wrap: +900,000 µJ
    assert meter.read_j() == pytest.approx(500e-6 + 0.9)


def test_rapl_top_level_dram_zone_counts(tmp_path: Path) -> None:
    # Some servers expose DRAM as its own top-level zone (intel-rapl:0:2 as a sibling link).
    _zone(tmp_path / "intel-rapl:0", "package-0", 0)
    dram = _zone(tmp_path / "intel-rapl:0:2", "dram", 0)
    meter = RaplMeter(tmp_path)
    meter.read_j()
    _set(dram, 2_000)
    assert meter.read_j() == pytest.approx(0.002)


def test_rapl_unavailable_reasons(tmp_path: Path) -> None:
    missing = RaplMeter(tmp_path / "absent").available()
    assert not missing.ok and "absent" in missing.reason
    _zone(tmp_path / "intel-rapl:1", "psys", 0)
    no_package = RaplMeter(tmp_path).available()
    assert not no_package.ok and "no RAPL package zone" in no_package.reason


def test_rapl_unreadable_counter_names_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_powercap(tmp_path)
    real_read_text = Path.read_text

    def deny(self: Path, *args, **kwargs):  # as for a non-root user since Linux 5.10
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", deny)
    state = RaplMeter(tmp_path).available()
    assert not state.ok and "CVE-2020-8694" in state.reason


# ----------------------------------------------------------------------------- NVML
def test_nvml_meter_reads_millijoules_through_the_module() -> None:
    fake = FakeNvml()
    meter = NvmlMeter(nvml=fake)
    assert meter.available().ok
    start = meter.read_j()
    fake.energy_mj += 1_500
    assert meter.read_j() - start == pytest.approx(1.5)
    assert meter.describe() == "NVML GPU 0 (Fake GPU)"
    assert fake.inits == 1  # initialised once, lazily


def test_nvml_unavailable_without_counter_or_module(monkeypatch: pytest.MonkeyPatch) -> None:
    state = NvmlMeter(nvml=FakeNvml(supported=False)).available()
    assert not state.ok and "Not Supported" in state.reason
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    state = NvmlMeter().available()
    assert not state.ok and "nvidia-ml-py" in state.reason


def _real_gpu_reason() -> str:
    try:
        import pynvml
    except ImportError:
        return "pynvml (nvidia-ml-py) is not installed"
    try:
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() < 1:
            return "NVML sees no GPU"
    except Exception as exc:  # no driver
        return f"no NVIDIA driver/GPU: {exc}"
    return ""


@pytest.mark.skipif(bool(_real_gpu_reason()), reason=f"needs an NVIDIA GPU with NVML: {_real_gpu_reason()}")
def test_nvml_on_a_real_gpu_counts_energy_of_gpu_work() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    x = torch.randn(4096, 4096, device="cuda")

    def work() -> None:
        for _ in range(10):
            x @ x
        torch.cuda.synchronize()

    result = measure_energy(work, meter=NvmlMeter(), min_window_s=1.0, idle_s=0.5)
    assert result.method == METHOD_NVML and result.measured
    assert result.energy_j > 0 and result.avg_power_w > result.idle_power_w > 0


# ----------------------------------------------------------------------------- estimate
class FakeClock:
    """(wall, cpu) seconds the test advances by hand."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 5.0

    def __call__(self) -> tuple[float, float]:
        return self.wall, self.cpu


def test_cpu_estimate_is_codecarbon_load_cubic() -> None:
    clock = FakeClock()
    meter = CpuTimeEstimateMeter(watts_per_core=4.0, cores=2, clock=clock)
    assert meter.method == METHOD_CPU_ESTIMATE == "estimate:cpu-time×tdp"
    meter.read_j()
    clock.wall += 2.0
    clock.cpu += 4.0  # both cores busy: load 1 -> the full 8 W TDP
    assert meter.read_j() == pytest.approx(16.0)
    clock.wall += 2.0
    clock.cpu += 2.0  # half load: 8·(0.1 + 0.9·0.125) W for 2 s
    assert meter.read_j() == pytest.approx(16.0 + 8 * (0.1 + 0.9 * 0.125) * 2)
    clock.wall += 1.0  # idle: 10% of TDP
    assert meter.read_j() == pytest.approx(16.0 + 8 * (0.1 + 0.9 * 0.125) * 2 + 0.8)


def test_cpu_estimate_half_tdp_and_bad_inputs() -> None:
    clock = FakeClock()
    meter = CpuTimeEstimateMeter(watts_per_core=4.0, cores=2, power_model="half-tdp", clock=clock)
    meter.read_j()
    clock.wall += 3.0
    assert meter.read_j() == pytest.approx(0.5 * 8 * 3)
    with pytest.raises(UsageError, match="watts_per_core"):
        CpuTimeEstimateMeter(watts_per_core=0)
    with pytest.raises(UsageError, match="power model"):
        CpuTimeEstimateMeter(power_model="linear")


def test_meters_satisfy_the_protocol(tmp_path: Path) -> None:
    for meter in (RaplMeter(tmp_path), NvmlMeter(nvml=FakeNvml()), CpuTimeEstimateMeter()):
        assert isinstance(meter, Meter)


# ----------------------------------------------------------------------------- harness
class StepMeter:
    """A counter that gains ``joules_per_call`` per workload call and ``idle_w`` while idle."""

    method = METHOD_RAPL

    def __init__(self, joules_per_call: float, idle_w: float = 0.0) -> None:
        self.total = 0.0
        self.joules_per_call = joules_per_call
        self.idle_w = idle_w

    def available(self):
        from greencc.measure import MeterAvailability

        return MeterAvailability(True)

    def read_j(self) -> float:
        return self.total

    def describe(self) -> str:
        return "step meter"

    def work(self) -> None:
        time.sleep(0.01)
        self.total += self.joules_per_call

    def idle(self, seconds: float) -> None:
        self.total += self.idle_w * seconds


def test_measure_energy_window_idle_and_per_inference() -> None:
    meter = StepMeter(joules_per_call=0.5, idle_w=2.0)
    result = measure_energy(meter.work, meter=meter, min_window_s=0.1, idle_s=0.05,
                            warmup=2, inferences_per_call=4, sleep=meter.idle)
    assert isinstance(result, EnergyMeasurement)
    assert result.window_s >= 0.1 and result.calls >= 5
    assert result.j_per_inference == pytest.approx(0.5 / 4)
    assert result.idle_power_w == pytest.approx(2.0 * 0.05 / result.idle_window_s)
    expected_active = (result.energy_j - result.idle_power_w * result.window_s) / result.inferences
    assert result.active_j_per_inference == pytest.approx(max(expected_active, 0.0))
    data = result.to_dict()
    assert data["method"] == "rapl" and data["measured"] is True
    assert data["label"].startswith("measured (rapl")
    assert data["mj_per_inference"] == pytest.approx(125.0)
    assert EnergyMeasurement.from_dict(data) == result


def test_measure_energy_flat_counter_is_noted_not_hidden() -> None:
    meter = StepMeter(joules_per_call=0.0)
    result = measure_energy(meter.work, meter=meter, min_window_s=0.05, idle_s=0,
                            max_window_s=0.1)
    assert result.energy_j == 0 and result.window_s >= 0.1
    assert "did not advance" in result.notes[0]


def test_measure_energy_with_the_estimate_is_labelled_estimate() -> None:
    def spin() -> None:
        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:
            pass

    result = measure_energy(spin, meter=CpuTimeEstimateMeter(watts_per_core=3.0, cores=2),
                            min_window_s=0.2, idle_s=0.05)
    assert not result.measured and result.label.startswith("estimate (estimate:cpu-time×tdp")
    # One of two cores busy: load ~0.5 -> power ~ 6·(0.1 + 0.9/8) ≈ 1.3 W, idle 0.6 W.
    assert 0.5 < result.avg_power_w < 3.5
    assert result.idle_power_w == pytest.approx(0.6, rel=0.2)
    with pytest.raises(UsageError, match="min_window_s"):
        measure_energy(spin, min_window_s=0)


# ----------------------------------------------------------------------------- choice
def test_best_meter_prefers_nvml_then_rapl_then_estimate(tmp_path: Path) -> None:
    _fake_powercap(tmp_path)
    choice = best_meter(powercap_root=tmp_path, nvml=FakeNvml())
    assert isinstance(choice.meter, NvmlMeter)
    choice = best_meter("cpu", powercap_root=tmp_path, nvml=FakeNvml())
    assert isinstance(choice.meter, RaplMeter) and "measured" in choice.reason
    choice = best_meter(powercap_root=tmp_path, nvml=FakeNvml(supported=False))
    assert isinstance(choice.meter, RaplMeter) and "NVML" in choice.reason
    choice = best_meter("cpu", powercap_root=tmp_path / "absent")
    assert isinstance(choice.meter, CpuTimeEstimateMeter)
    assert "estimate" in choice.reason and "RAPL" in choice.reason
    with pytest.raises(UsageError, match="device"):
        best_meter("tpu")
