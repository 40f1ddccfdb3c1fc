"""The benchmark's percentile and rate helpers (the benchmark's results themselves are never asserted)."""

from __future__ import annotations

import math

import pytest

from bench.bench_stats import latency_summary, meets, percentile, rate


def test_percentile_nearest_rank() -> None:
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 100) == 5.0
    assert percentile(xs, 0) == 1.0
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([7.0], 95) == 7.0


def test_percentile_empty_and_bad_p() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_rate() -> None:
    assert rate(1000, 2.0) == 500.0
    assert math.isnan(rate(10, 0.0))


def test_latency_summary_in_ms() -> None:
    s = latency_summary([0.010, 0.020, 0.030, 0.040])
    assert s["n"] == 4
    assert s["p50_ms"] == pytest.approx(20.0)
    assert s["p99_ms"] == pytest.approx(40.0)
    assert s["max_ms"] == pytest.approx(40.0)


def test_meets() -> None:
    assert meets(60.0, 50.0, higher_is_better=True) is True
    assert meets(300.0, 250.0, higher_is_better=False) is False
    assert meets(math.nan, 1.0, higher_is_better=True) is None
