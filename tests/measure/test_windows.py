"""Energy windows: agreement with measure_energy, nesting, threads, labels, export."""

from __future__ import annotations

import csv
import io
import json
import threading
import time

import numpy as np
import pytest

import greencc as gc
from greencc.errors import UsageError
from greencc.measure.carbon import CarbonFactors
from greencc.measure.energy import (
    MEASURED_METHODS,
    CpuTimeEstimateMeter,
    best_meter,
    measure_energy,
)
from greencc.measure.windows import WindowMonitor
from tests.helpers import ConstantPowerRapl


def _work() -> None:
    sum(i * i for i in range(20_000))  # one core, CPU-bound


def _per_call_j(monitor: WindowMonitor, calls: int, work) -> float:
    with monitor.window("work") as w:
        for _ in range(calls):
            work()
    return w.energy_j / calls


@pytest.mark.parametrize("meter_kind", ["cpu-estimate", "rapl"])
def test_window_agrees_with_measure_energy_on_the_same_work(meter_kind):
    meter = CpuTimeEstimateMeter() if meter_kind == "cpu-estimate" else ConstantPowerRapl()
    work = _work if meter_kind == "cpu-estimate" else (lambda: time.sleep(0.005))
    monitor = WindowMonitor(meter)
    references, windows = [], []
    for _ in range(3):  # interleaved, so a busy neighbour disturbs both alike
        reference = measure_energy(work, meter=meter, idle_s=0, min_window_s=0.25)
        references.append(reference.j_per_inference)
        windows.append(_per_call_j(monitor, reference.calls, work))
    # measure_energy's own noise: the spread of its three figures (at least 15%).
    spread = max(0.15, (max(references) - min(references)) / float(np.median(references)))
    assert float(np.median(windows)) == pytest.approx(float(np.median(references)), rel=2 * spread)


def test_label_says_estimated_without_a_counter_and_matches_best_meter():
    monitor = WindowMonitor(CpuTimeEstimateMeter())
    with monitor.window("x") as w:
        _work()
    assert not w.measured
    assert w.label.startswith("estimated (estimate:cpu-time×tdp")
    default = WindowMonitor()
    assert default.measured == (best_meter().meter.method in MEASURED_METHODS)


def test_a_rapl_counter_makes_windows_measured():
    monitor = WindowMonitor(ConstantPowerRapl())
    with monitor.window("sleep") as w:
        time.sleep(0.2)
    assert w.measured and w.label.startswith("measured (rapl")
    assert w.energy_j == pytest.approx(10.0 * w.duration_s, rel=0.05)
    assert w.avg_power_w == pytest.approx(10.0, rel=0.05)


def test_carbon_follows_the_factors():
    monitor = WindowMonitor(ConstantPowerRapl(), factors=CarbonFactors.of(720.0))
    with monitor.window("x") as w:
        time.sleep(0.1)
    assert w.g_co2e == pytest.approx(w.energy_j / 3.6e6 * 720.0)


def test_windows_nest_and_name_their_parent():
    monitor = WindowMonitor(ConstantPowerRapl())
    monitor.begin_window("outer")
    time.sleep(0.05)
    with monitor.window("inner") as inner:
        time.sleep(0.05)
    outer = monitor.end_window("outer")
    assert inner.parent == "outer" and outer.parent is None
    assert outer.energy_j > inner.energy_j > 0
    assert outer.duration_s > inner.duration_s
    assert monitor.open_windows() == []


def test_begin_twice_and_end_unknown_are_errors():
    monitor = WindowMonitor(ConstantPowerRapl())
    monitor.begin_window("a")
    with pytest.raises(UsageError, match="already open"):
        monitor.begin_window("a")
    monitor.end_window("a")
    with pytest.raises(UsageError, match="not open"):
        monitor.end_window("a")


def test_threads_share_one_name_and_every_window_is_counted():
    monitor = WindowMonitor(ConstantPowerRapl())
    barrier = threading.Barrier(4)

    def serve_one() -> None:
        barrier.wait()
        for _ in range(5):
            with monitor.window("request"):
                time.sleep(0.01)

    threads = [threading.Thread(target=serve_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals = monitor.totals()["request"]
    assert totals.count == 20 and len(monitor.records()) == 20
    assert totals.energy_j == pytest.approx(sum(r.energy_j for r in monitor.records()))
    assert {r.parent for r in monitor.records()} == {None}


def test_records_export_to_csv_json_and_prometheus():
    monitor = WindowMonitor(ConstantPowerRapl())
    for name in ("a", "b", "a"):
        with monitor.window(name):
            time.sleep(0.01)
    rows = list(csv.DictReader(io.StringIO(monitor.to_csv())))
    assert [r["name"] for r in rows] == ["a", "b", "a"] and rows[0]["method"] == "rapl"
    assert float(rows[0]["energy_j"]) > 0
    records = json.loads(monitor.to_json())
    assert records[1]["name"] == "b" and records[1]["measured"] is True
    prometheus = pytest.importorskip("prometheus_client")
    registry = prometheus.CollectorRegistry()
    registry.register(monitor.prometheus_collector())
    text = prometheus.generate_latest(registry).decode()
    assert 'greencc_windows_total{method="rapl",name="a"} 2.0' in text
    assert "greencc_window_energy_joules_total" in text


def test_the_public_api_opens_windows_on_the_shared_monitor():
    with gc.energy_window("api") as w:
        _work()
    gc.begin_window("api-manual")
    _work()
    manual = gc.end_window("api-manual")
    assert w.energy_j > 0 and manual.energy_j > 0
    assert manual.method == best_meter().meter.method
