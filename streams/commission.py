"""Money math of one order: per-level amounts, half-up cents and the cap. Integers only."""

from __future__ import annotations

from collections.abc import Sequence

BPS = 10_000


def level_amount(amount_cents: int, bps: int) -> int:
    """One level's commission, rounded half up to whole cents."""
    return (amount_cents * bps + BPS // 2) // BPS


def cap_cents(amount_cents: int, max_total_bps: int) -> int:
    """The most all levels of one order may earn together (rounded down)."""
    return amount_cents * max_total_bps // BPS


def split(amount_cents: int, rates_bps: Sequence[int], max_total_bps: int) -> list[int]:
    """Amounts for levels 1..n; each level takes at most what is left of the cap, in level order."""
    left = cap_cents(amount_cents, max_total_bps)
    out = []
    for bps in rates_bps:
        a = min(level_amount(amount_cents, bps), left)
        left -= a
        out.append(a)
    return out


def deltas(before: Sequence[int], after: Sequence[int]) -> list[int]:
    """Per-level change when an order's amounts are recomputed (after a refund)."""
    return [a - b for b, a in zip(before, after, strict=True)]
