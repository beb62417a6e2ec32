"""The latency harness: statistics on a fake clock, warm-up, repeats and min_time_s."""

from __future__ import annotations

import numpy as np
import pytest

import greencc as gc
from greencc.measure import latency
from greencc.measure.latency import LatencyStats, measure_latency


class FakeClock:
    """A perf_counter_ns stand-in that only advances when the fake workload runs."""

    def __init__(self, durations_ms: list[float]) -> None:
        self.now_ns = 0
        self.durations_ms = list(durations_ms)
        self.calls = 0

    def __call__(self) -> int:
        return self.now_ns

    def work(self) -> None:
        self.now_ns += int(self.durations_ms[self.calls % len(self.durations_ms)] * 1e6)
        self.calls += 1


@pytest.fixture
def clock(monkeypatch):
    def install(durations_ms):
        fake = FakeClock(durations_ms)
        monkeypatch.setattr(latency, "perf_counter_ns", fake)
        return fake

    return install


def test_statistics_of_known_durations(clock):
    # Two warm-up calls are slow (1000 ms) and must not count.
    timed = [4.0, 1.0, 3.0, 2.0, 10.0, 5.0, 6.0, 8.0, 7.0, 9.0]
    fake = clock([1000.0, 1000.0, *timed])
    stats = measure_latency(fake.work, warmup=2, repeats=10, threads=3)
    assert fake.calls == 12
    expected = np.percentile(timed, [10, 25, 50, 75, 90])
    assert stats.median_ms == pytest.approx(5.5)
    assert stats.mean_ms == pytest.approx(5.5)
    assert stats.p10_ms == pytest.approx(expected[0]) == pytest.approx(1.9)
    assert stats.p90_ms == pytest.approx(expected[4]) == pytest.approx(9.1)
    assert stats.iqr_ms == pytest.approx(expected[3] - expected[1]) == pytest.approx(4.5)
    assert (stats.min_ms, stats.max_ms) == (pytest.approx(1.0), pytest.approx(10.0))
    assert (stats.repeats, stats.warmup, stats.threads) == (10, 2, 3)


def test_min_time_extends_the_repeats(clock):
    fake = clock([2.0])
    stats = measure_latency(fake.work, warmup=0, repeats=3, min_time_s=0.05)
    assert stats.repeats == 25  # 25 calls of 2 ms reach 50 ms
    assert fake.calls == 25
    fake = clock([2.0])
    assert measure_latency(fake.work, warmup=0, repeats=30, min_time_s=0.05).repeats == 30


def test_to_dict_and_text():
    stats = LatencyStats.from_samples([1.0, 2.0, 3.0], warmup=1, threads=2)
    assert stats.to_dict() == {
        "median_ms": 2.0, "mean_ms": 2.0, "p10_ms": 1.2, "p90_ms": pytest.approx(2.8),
        "min_ms": 1.0, "max_ms": 3.0, "iqr_ms": 1.0, "repeats": 3, "warmup": 1, "threads": 2,
    }
    assert "median 2.000 ms" in str(stats) and "2 threads" in str(stats)


def test_real_clock_counts_calls():
    calls = []
    stats = measure_latency(lambda: calls.append(1), warmup=3, repeats=5)
    assert len(calls) == 8 and stats.repeats == 5 and stats.threads is None
    assert 0 <= stats.min_ms <= stats.median_ms <= stats.max_ms


@pytest.mark.parametrize(
    "kwargs",
    [{"repeats": 0}, {"warmup": -1}, {"min_time_s": -1.0}, {"min_time_s": float("nan")}, {"repeats": 2.5}],
)
def test_bad_arguments_raise_usage_error(kwargs):
    with pytest.raises(gc.UsageError):
        measure_latency(lambda: None, **kwargs)


def test_no_samples_is_a_usage_error():
    with pytest.raises(gc.UsageError, match="no latency samples"):
        LatencyStats.from_samples([])
