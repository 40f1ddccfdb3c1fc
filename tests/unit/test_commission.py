"""Money math of one order, against values worked out by hand from the spec's rule 5.

Spec (Semantics, Paid, rule 5):
  amount = (amount_cents × bps + 5000) // 10000        (half up, whole cents)
  cap    = amount_cents × max_total_bps // 10000       (rounded down)
  levels are paid in order 1, 2, 3, each at most what is left of the cap.
Every expected value below is a literal; the comment shows the arithmetic.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from streams.engine.commission import cap_cents, deltas, level_amount, split, split_items, spread

MAX = 10**12  # the largest amount the contract allows

# (amount_cents, bps, expected)
LEVEL_AMOUNT = [
    pytest.param(0, 1000, 0, id="amount-0"),
    pytest.param(100, 0, 0, id="rate-0"),
    pytest.param(10000, 1000, 1000, id="exact-10pct"),
    pytest.param(5, 1000, 1, id="0.5-rounds-up"),  # 5×1000/10000 = 0.5 → 1
    pytest.param(4, 1000, 0, id="0.4-rounds-down"),  # 0.4 → 0
    pytest.param(15, 1000, 2, id="1.5-rounds-up"),  # 1.5 → 2
    pytest.param(25, 1000, 3, id="2.5-rounds-up-not-bankers"),  # 2.5 → 3 (banker's would give 2)
    pytest.param(14, 1000, 1, id="1.4-rounds-down"),  # 1.4 → 1
    pytest.param(1, 5000, 1, id="one-cent-half"),  # 0.5 → 1
    pytest.param(1, 4999, 0, id="one-cent-just-under-half"),  # 0.4999 → 0
    pytest.param(5000, 1, 1, id="1bps-half"),  # 5000×1/10000 = 0.5 → 1
    pytest.param(4999, 1, 0, id="1bps-under-half"),  # 0.4999 → 0
    pytest.param(1, 1, 0, id="1bps-one-cent"),  # 0.0001 → 0
    pytest.param(3, 3333, 1, id="0.9999-up"),  # 0.9999 → 1
    pytest.param(1, 10000, 1, id="full-rate-one-cent"),
    pytest.param(199973, 1000, 19997, id="199973x1000"),  # 19997.3 → 19997
    pytest.param(199975, 1000, 19998, id="199975x1000"),  # 19997.5 → 19998
    pytest.param(99, 1500, 15, id="99x1500"),  # 14.85 → 15
    pytest.param(12345, 777, 959, id="12345x777"),  # 9592065/10000 = 959.2065 → 959
    pytest.param(MAX, 10000, 10**12, id="max-amount-full-rate"),  # no overflow
    pytest.param(MAX, 1, 10**8, id="max-amount-1bps"),  # 10^12/10^4
    pytest.param(MAX - 1, 1, 10**8, id="max-minus-1-1bps"),  # 99999999.9999 → 100000000
    pytest.param(MAX, 3333, 333_300_000_000, id="max-amount-3333bps"),
]


@pytest.mark.parametrize(("amount", "bps", "expected"), LEVEL_AMOUNT)
def test_level_amount(amount: int, bps: int, expected: int) -> None:
    assert level_amount(amount, bps) == expected


# (amount_cents, max_total_bps, expected)
CAP = [
    pytest.param(0, 3000, 0, id="amount-0"),
    pytest.param(10000, 0, 0, id="cap-bps-0"),
    pytest.param(10000, 3000, 3000, id="exact"),
    pytest.param(9, 1000, 0, id="0.9-floors"),  # 0.9 → 0 (rounded down, not half up)
    pytest.param(19, 1000, 1, id="1.9-floors"),  # 1.9 → 1
    pytest.param(15, 1000, 1, id="1.5-floors"),  # 1.5 → 1
    pytest.param(3, 3333, 0, id="0.9999-floors"),
    pytest.param(199973, 2000, 39994, id="199973x2000"),  # 39994.6 → 39994
    pytest.param(MAX, 10000, 10**12, id="max-amount-full"),
    pytest.param(MAX, 3000, 3 * 10**11, id="max-amount-30pct"),
]


@pytest.mark.parametrize(("amount", "max_bps", "expected"), CAP)
def test_cap_cents(amount: int, max_bps: int, expected: int) -> None:
    assert cap_cents(amount, max_bps) == expected


# (amount_cents, rates_bps, max_total_bps, expected per level)
SPLIT = [
    pytest.param(10000, [1000, 500, 200], 3000, [1000, 500, 200], id="under-cap"),
    pytest.param(10000, [1000, 500, 200], 1700, [1000, 500, 200], id="exactly-at-cap"),
    # cap 2000: L1 1500, left 500 → L2 min(700, 500) = 500, left 0 → L3 0
    pytest.param(10000, [1500, 700, 300], 2000, [1500, 500, 0], id="cap-bites-level-2"),
    # cap 1200: L1 1000, left 200 → L2 min(500, 200) = 200 → L3 0
    pytest.param(10000, [1000, 500, 200], 1200, [1000, 200, 0], id="cap-bites-level-2-b"),
    # cap 1600: 1000 + 500, left 100 → L3 min(200, 100) = 100
    pytest.param(10000, [1000, 500, 200], 1600, [1000, 500, 100], id="cap-bites-level-3"),
    # cap 800: L1 min(1000, 800) = 800 → nothing left
    pytest.param(10000, [1000, 500, 200], 800, [800, 0, 0], id="cap-bites-level-1"),
    pytest.param(10000, [1000, 500, 200], 0, [0, 0, 0], id="cap-0"),
    pytest.param(0, [1000, 500, 200], 3000, [0, 0, 0], id="amount-0"),
    pytest.param(10000, [0, 500, 0], 3000, [0, 500, 0], id="rate-0-levels-not-shifted"),
    pytest.param(10000, [0, 0, 0], 3000, [0, 0, 0], id="all-rates-0"),
    pytest.param(10000, [], 3000, [], id="no-levels"),
    pytest.param(10000, [1000], 3000, [1000], id="one-level"),
    pytest.param(10000, [1000, 500], 3000, [1000, 500], id="two-levels"),
    pytest.param(MAX, [10000], 10000, [10**12], id="max-amount-full-rate"),
    pytest.param(MAX, [10000, 10000, 10000], 10000, [10**12, 0, 0], id="max-amount-cap-after-level-1"),
    pytest.param(MAX, [1000, 500, 200], 3000, [10**11, 5 * 10**10, 2 * 10**10], id="max-amount-normal"),
    # L1 = 0.5 → 1 but cap = 5×1000//10000 = 0 → 0
    pytest.param(5, [1000], 1000, [0], id="rounded-level-above-floored-cap"),
    # cap = 15×1500//10000 = 2 (2.25); L1 = 1.5 → 2; left 0
    pytest.param(15, [1000, 500, 200], 1500, [2, 0, 0], id="15c-cap-2"),
    # cap = 14×1500//10000 = 2 (2.1); L1 = 1.4 → 1; left 1; L2 = 0.7 → 1; left 0; L3 = 0.28 → 0
    pytest.param(14, [1000, 500, 200], 1500, [1, 1, 0], id="14c-cap-2"),
    # L1 14.85 → 15, L2 6.93 → 7, L3 2.97 → 3; cap = 99×2500//10000 = 24 (24.75); 15+7 = 22, left 2 → L3 2
    pytest.param(99, [1500, 700, 300], 2500, [15, 7, 2], id="rounding-pushes-over-cap"),
    # each 0.9999 → 1; cap 3×10000//10000 = 3
    pytest.param(3, [3333, 3333, 3333], 10000, [1, 1, 1], id="three-roundups-fit"),
    # cap 3×9999//10000 = 2 (2.9997)
    pytest.param(3, [3333, 3333, 3333], 9999, [1, 1, 0], id="three-roundups-capped"),
    # L1 19997.3 → 19997, L2 9998.65 → 9999, L3 3999.46 → 3999; cap 39994 (39994.6); sum 33995 fits
    pytest.param(199973, [1000, 500, 200], 2000, [19997, 9999, 3999], id="199973-basic-example"),
    # 10005: L1 1000.5 → 1001, L2 500.25 → 500, L3 200.1 → 200; cap 3001
    pytest.param(10005, [1000, 500, 200], 3000, [1001, 500, 200], id="10005"),
]


@pytest.mark.parametrize(("amount", "rates", "max_bps", "expected"), SPLIT)
def test_split(amount: int, rates: list[int], max_bps: int, expected: list[int]) -> None:
    assert split(amount, rates, max_bps) == expected


DELTAS = [
    pytest.param([1000, 500, 200], [750, 375, 150], [-250, -125, -50], id="partial-refund"),
    pytest.param([1000, 500, 200], [0, 0, 0], [-1000, -500, -200], id="full-refund"),
    pytest.param([1001, 500, 200], [1000, 500, 200], [-1, 0, 0], id="only-level-1-moves"),
    # amount 15 → 14 with rates 1000/500/200 and cap 1500 (rows 15c/14c above): L2 goes up by one
    pytest.param([2, 0, 0], [1, 1, 0], [-1, 1, 0], id="cap-redistributes"),
    pytest.param([5], [5], [0], id="unchanged"),
    pytest.param([], [], [], id="no-levels"),
]


@pytest.mark.parametrize(("before", "after", "expected"), DELTAS)
def test_deltas(before: list[int], after: list[int], expected: list[int]) -> None:
    assert deltas(before, after) == expected


def test_deltas_refuses_different_level_counts() -> None:
    with pytest.raises(ValueError):
        deltas([1, 2, 3], [1, 2])


def test_results_are_ints_never_floats() -> None:
    values = [level_amount(15, 1000), cap_cents(15, 1000), *split(15, [1000, 500], 1500), *deltas([2], [1])]
    assert all(type(v) is int for v in values)


# ---- property: split against an independent exact-rational implementation -------------------------

HALF = Fraction(1, 2)


def _half_up(q: Fraction) -> int:
    """ROUND_HALF_UP of a non-negative rational, with nothing but Fraction arithmetic."""
    whole = q.numerator // q.denominator
    return whole + 1 if q - whole >= HALF else whole


def _oracle(amount: int, rates: list[int], max_bps: int) -> list[int]:
    left = Fraction(amount) * Fraction(max_bps, 10000)
    left_cents = left.numerator // left.denominator  # the cap, rounded down
    out = []
    for bps in rates:
        own = _half_up(Fraction(amount) * Fraction(bps, 10000))
        take = own if own <= left_cents else left_cents
        left_cents -= take
        out.append(take)
    return out


def _random_amount(rng: random.Random) -> int:
    pick = rng.random()
    if pick < 0.4:
        return rng.randint(0, 100)  # where half-up and the cap's floor fight
    if pick < 0.8:
        return rng.randint(0, 1_000_000)
    if pick < 0.95:
        return rng.randint(0, MAX)
    return rng.choice([0, 1, MAX, MAX - 1])


def _random_bps(rng: random.Random) -> int:
    return rng.choice([0, 1, 5000, 9999, 10000, rng.randint(0, 10000), rng.randint(0, 2000)])


@pytest.mark.parametrize("seed", range(8))
def test_split_matches_exact_rational_oracle(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        amount = _random_amount(rng)
        rates = [_random_bps(rng) for _ in range(rng.randint(1, 3))]
        max_bps = _random_bps(rng)
        got = split(amount, rates, max_bps)
        case = (amount, rates, max_bps)
        assert got == _oracle(amount, rates, max_bps), case
        cap = Fraction(amount * max_bps, 10000)
        assert sum(got) <= cap, case
        assert all(v >= 0 for v in got), case
        for v, bps in zip(got, rates, strict=True):
            assert v <= _half_up(Fraction(amount * bps, 10000)), case
        assert level_amount(amount, rates[0]) == _half_up(Fraction(amount * rates[0], 10000)), case
        assert cap_cents(amount, max_bps) == amount * max_bps // 10000 == int(cap), case


@pytest.mark.parametrize("seed", range(4))
def test_refunds_recomputed_by_deltas_add_up(seed: int) -> None:
    """Recomputing after successive refunds: accrued + Σdeltas always equals the fresh split of what is left."""
    rng = random.Random(1000 + seed)
    for _ in range(200):
        paid = _random_amount(rng)
        rates = [_random_bps(rng) for _ in range(rng.randint(1, 3))]
        max_bps = _random_bps(rng)
        current = split(paid, rates, max_bps)
        running = list(current)
        left = paid
        while left > 0:
            refund = rng.randint(1, left)
            left -= refund
            after = split(left, rates, max_bps)
            running = [r + d for r, d in zip(running, deltas(current, after), strict=True)]
            current = after
            assert running == _oracle(left, rates, max_bps)
        assert running == [0] * len(rates)


# ---- contract v2: itemized orders ------------------------------------------------------------------------
# Level amount = Σ over items of (item_cents × bps + 5000) // 10000; cap = order_cents × max_total_bps // 10000.

# (items_cents, rates per level per item, order_cents, max_total_bps, expected per level)
SPLIT_ITEMS = [
    pytest.param([10000], [[1000], [500], [200]], 10000, 3000, [1000, 500, 200], id="one-item-is-rule-5"),
    # 15×1000 = 15000 → 2, 25×1000 = 25000 → 3: 5 (the whole 40 would give 4)
    pytest.param([15, 25], [[1000, 1000]], 40, 3000, [5], id="rounded-per-item"),
    # 3000×2000 → 600 + 5000×1000 → 500 + 2000×0 → 0 = 1100; 240 + 250 = 490; 90 + 100 = 190
    pytest.param(
        [3000, 5000, 2000],
        [[2000, 1000, 0], [800, 500, 0], [300, 200, 0]],
        10000,
        3000,
        [1100, 490, 190],
        id="product-tier-gift",
    ),
    # cap 10000×2000 // 10000 = 2000: L1 1600, L2 640 → 400, L3 240 → 0
    pytest.param([8000, 2000], [[2000, 0], [800, 0], [300, 0]], 10000, 2000, [1600, 400, 0], id="cap-in-level-order"),
    # the cap is on the order's cents, not the commissionable items: 2000×0 + ... cap 1000×1000 // 10000 = 100
    pytest.param([500, 500], [[10000, 0]], 1000, 1000, [100], id="cap-on-whole-order"),
    # each item 1 cent at 5000 bps: 0.5 → 1 per item = 3 (the whole 3 cents would give 1.5 → 2); cap 3
    pytest.param([1, 1, 1], [[5000, 5000, 5000]], 3, 10000, [3], id="half-up-each-item"),
    pytest.param([0, 0], [[1000, 1000], [500, 500]], 0, 3000, [0, 0], id="nothing-left"),
]


@pytest.mark.parametrize(("items", "rates", "order", "cap", "expected"), SPLIT_ITEMS)
def test_split_items(items: list[int], rates: list[list[int]], order: int, cap: int, expected: list[int]) -> None:
    assert split_items(items, rates, order, cap) == expected


# A refund without items: share_i = floor(r × left_i / total); missing cents to the largest remainders,
# ties to the earlier item. (refund, left per item, expected shares)
SPREAD = [
    pytest.param(0, [100, 200], [0, 0], id="nothing"),
    pytest.param(300, [100, 200], [100, 200], id="everything"),
    # 100×1 // 3 = 33 each, remainders 1, 1, 1: one missing cent → the first
    pytest.param(100, [1, 1, 1], [34, 33, 33], id="three-way-tie"),
    # 2×1 // 3 = 0 each, remainders 2, 2, 2: two missing → the first two
    pytest.param(2, [1, 1, 1], [1, 1, 0], id="two-cents-over-three"),
    # 3 over 5000, 5000: 1 each, remainders 5000, 5000 → the first
    pytest.param(3, [5000, 5000], [2, 1], id="tie-to-earlier"),
    # 5001 over 3000, 7000: 1500 rem 3000, 3500 rem 7000 → the cent to the second
    pytest.param(5001, [3000, 7000], [1500, 3501], id="largest-remainder-wins"),
    # 10 over 1, 2, 7: 10×1 // 10 = 1, 2, 7: exact
    pytest.param(10, [1, 2, 7], [1, 2, 7], id="exact"),
    # 7 over 3, 3, 4 (total 10): 21 // 10 = 2 rem 1, 2 rem 1, 28 // 10 = 2 rem 8: 1 missing → the third
    pytest.param(7, [3, 3, 4], [2, 2, 3], id="remainder-beats-order"),
    # 5 over 0, 10, 10: the emptied item takes nothing; 2 rem 10, 2 rem 10 → the first non-empty
    pytest.param(5, [0, 10, 10], [0, 3, 2], id="empty-item-takes-nothing"),
    pytest.param(0, [0, 0], [0, 0], id="all-empty"),
]


@pytest.mark.parametrize(("refund", "left", "expected"), SPREAD)
def test_spread(refund: int, left: list[int], expected: list[int]) -> None:
    assert spread(refund, left) == expected


@pytest.mark.parametrize("seed", range(5))
def test_spread_adds_up_and_never_takes_more_than_an_item_has(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        left = [rng.randint(0, 10**6) for _ in range(rng.randint(1, 6))]
        refund = rng.randint(0, sum(left))
        shares = spread(refund, left)
        assert sum(shares) == refund
        assert all(0 <= s <= left_i for s, left_i in zip(shares, left, strict=True))
        # each share is within one cent of the exact proportion
        assert all(
            abs(Fraction(s) - Fraction(refund * left_i, sum(left) or 1)) < 1
            for s, left_i in zip(shares, left, strict=True)
        )
