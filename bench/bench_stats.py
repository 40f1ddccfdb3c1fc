"""Small, pure helpers of the benchmark: percentiles, rates, targets, Amdahl, fan-out (unit-tested, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


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


def karp_flatt(speedup: float, workers: int) -> float:
    """Karp-Flatt's experimentally determined serial fraction e = (1/S - 1/n) / (1 - 1/n) of one measured speedup."""
    if workers < 2:
        raise ValueError("the serial fraction needs at least 2 workers")
    if speedup is None or math.isnan(speedup) or speedup <= 0:
        return math.nan
    return (1 / speedup - 1 / workers) / (1 - 1 / workers)


def amdahl_fit(speedups: Mapping[int, float]) -> float:
    """Least-squares serial fraction f of Amdahl's S(n) = 1 / (f + (1 - f) / n) over measured {n: speedup}.

    Linear in f after 1/S - 1/n = f (1 - 1/n): a fit through the origin, f = sum(x y) / sum(x^2) with
    x = 1 - 1/n and y = 1/S - 1/n. n = 1 carries no information (x = 0) and NaN speedups are left out.
    Not clamped: f > 1 says more workers made it slower (standbys), f < 0 superlinear; the projection clamps.
    """
    pts = [(1 - 1 / n, 1 / s - 1 / n) for n, s in speedups.items() if n > 1 and s and not math.isnan(s) and s > 0]
    if not pts:
        return math.nan
    return sum(x * y for x, y in pts) / sum(x * x for x, _ in pts)


def amdahl_speedup(serial_fraction: float, workers: int) -> float:
    """Amdahl's speedup of n workers for serial fraction f, f clamped to 0..1 (a projection, not a measurement)."""
    if math.isnan(serial_fraction):
        return math.nan
    f = min(1.0, max(0.0, serial_fraction))
    return 1 / (f + (1 - f) / workers)


def amdahl_projection(serial_fraction: float, workers: Sequence[int] = (8, 16, 32)) -> dict[str, float]:
    """Projected speedups {"8": s, ...} from a fitted serial fraction, keyed by str(n) as JSON keys are."""
    return {str(n): amdahl_speedup(serial_fraction, n) for n in workers}


def fanout_counts(inputs: int, outputs: int) -> list[int]:
    """How many outputs the matched baseline emits per consumed input: `outputs` spread evenly over `inputs`.

    Input i emits floor((i+1) K / N) - floor(i K / N), so every prefix is within one record of its share and
    the counts add up to exactly K.
    """
    if inputs <= 0:
        if outputs:
            raise ValueError("outputs without inputs cannot be spread")
        return []
    if outputs < 0:
        raise ValueError("outputs must be >= 0")
    return [(i + 1) * outputs // inputs - i * outputs // inputs for i in range(inputs)]


def pipeline_outputs(entries: int, bindings: int, dead_letters: int, limited_clicks: int) -> int:
    """Records the pipeline writes for a sale: every ledger entry, binding, dead letter and limited click."""
    counts = (entries, bindings, dead_letters, limited_clicks)
    if any(c < 0 for c in counts):
        raise ValueError("output counts must be >= 0")
    return sum(counts)


def cpu_ms_per_1k(usage_ns: int, order_records: int) -> float:
    """CPU milliseconds per 1,000 order records from a cpuacct.usage delta in nanoseconds; NaN without records."""
    if order_records <= 0:
        return math.nan
    return usage_ns / 1e6 / order_records * 1000


INFRASTRUCTURE = ("broker", "redis", "harness", "profiler")


def cpu_by_component(
    before: Mapping[str, int], after: Mapping[str, int], order_records: int, phase: str
) -> dict[str, float]:
    """CPU-ms per 1,000 order records over one phase: the infrastructure's groups and the phase's own.

    Groups are named `<phase>-<component>` (pipeline-worker-1, scale4-sink) or are infrastructure (broker,
    redis, harness, profiler); another phase's groups are left out. A group born during the phase counts
    from 0. The workers' sum is added as workers_total.
    """
    out: dict[str, float] = {}
    for comp, ns in after.items():
        if comp.startswith(phase + "-"):
            name = comp[len(phase) + 1 :]
        elif comp in INFRASTRUCTURE:
            name = comp
        else:
            continue
        out[name] = round(cpu_ms_per_1k(ns - before.get(comp, 0), order_records), 2)
    workers = [v for k, v in out.items() if k.startswith("worker-")]
    if workers:
        out["workers_total"] = round(sum(workers), 2)
    return out
