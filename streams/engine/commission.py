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


def split_items(
    items_cents: Sequence[int], rates_bps: Sequence[Sequence[int]], order_cents: int, max_total_bps: int
) -> list[int]:
    """Amounts for levels 1..n of an itemized order: per-item half-up cents summed, then the whole order's cap.

    rates_bps[level - 1][i] is item i's rate at that level; the cap is on order_cents, paid in level order.
    """
    left = cap_cents(order_cents, max_total_bps)
    out = []
    for level_rates in rates_bps:
        a = min(sum(level_amount(c, bps) for c, bps in zip(items_cents, level_rates, strict=True)), left)
        left -= a
        out.append(a)
    return out


def spread(refund_cents: int, left_cents: Sequence[int]) -> list[int]:
    """A refund without items spread over what each item has left, by largest remainder.

    Share of item i = floor(r × left_i / left_total); the cents still missing go one each to the items with the
    largest remainders, ties to the earlier item. Requires 0 <= r <= left_total.
    """
    total = sum(left_cents)
    if total == 0:
        return [0] * len(left_cents)
    shares = [refund_cents * left // total for left in left_cents]
    remainders = [refund_cents * left % total for left in left_cents]
    missing = refund_cents - sum(shares)
    for i in sorted(range(len(left_cents)), key=lambda i: (-remainders[i], i))[:missing]:
        shares[i] += 1
    return shares
