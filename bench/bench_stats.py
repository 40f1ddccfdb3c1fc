"""Small, pure helpers of the benchmark: percentiles, rates, target checks (unit-tested, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted values; NaN for no values."""
    if not values:
        return math.nan
    if not 0 <= p <= 100:
        raise ValueError("p must be within 0..100")
    s = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(s)))
    return float(s[rank - 1])


def rate(count: int, seconds: float) -> float:
    """Items per second; NaN when no time passed (nothing measurable)."""
    if seconds <= 0:
        return math.nan
    return count / seconds


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds plus the sample count."""
    return {
        "n": float(len(latencies_s)),
        "p50_ms": percentile(latencies_s, 50) * 1000,
        "p95_ms": percentile(latencies_s, 95) * 1000,
        "p99_ms": percentile(latencies_s, 99) * 1000,
        "max_ms": (max(latencies_s) * 1000) if latencies_s else math.nan,
    }


def meets(value: float, target: float, higher_is_better: bool) -> bool | None:
    """Whether a measured value meets its target; None when it was not measured (NaN)."""
    if value is None or math.isnan(value):
        return None
    return value >= target if higher_is_better else value <= target
