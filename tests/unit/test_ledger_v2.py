"""Contract v2 rules, one small hand-built scenario per row, each with its exact, hand-computed outcome.

Every scenario runs under V2 (below) unless the row overrides a value:
    levels 3, attribution window 3600 s, freeze 0 s (orders settle at completion), cap 3000 bps
    standard [1000, 500, 200]   gold [1500, 700, 300]
    products: P [2000, 800, 300] (its own rates), F [10000, 0, 0] (every cent of it is level-1 commission,
    which makes a one-cent refund spread visible), G commission = false (a gift)
    withdrawals: min 100 cents, fee 60 bps half up, fee at least 10 cents
The chain is A ← B ← C ← D: when D buys, level 1 is C, level 2 B, level 3 A.
Item amounts: (cents × bps + 5000) // 10000 per item, summed per level; the cap is on the whole order.
Times are seconds after T0 = 2026-11-11T00:00:00.000Z. Entries are (order | w:<id> | a:<id>, level,
beneficiary, kind, cents), as the spec examples key them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from schemas.events import Invalid, decode
from streams import names
from streams.engine import outcome, reference
from streams.engine.config import Program, parse
from streams.engine.ledger import Balance, Ledger, NotLoaded, State, User, seq_key
from tests.unit.test_ledger import (
    CHAIN,
    _order,
    _rec,
    at,
    cancelled,
    completed,
    iso,
    paid,
    refunded,
    signup,
    tier,
)

V2 = """
[program]
levels = 3
self_purchase = false
attribution_window_seconds = 3600
freeze_seconds = {freeze}
max_total_bps = {cap}

[tiers.standard]
rates_bps = [1000, 500, 200]
[tiers.gold]
rates_bps = [1500, 700, 300]

[campaigns.two]
levels = 2

[products."P"]
rates_bps = [2000, 800, 300]
[products."F"]
rates_bps = [10000, 0, 0]
[products."G"]
commission = false

[withdrawals]
min_cents = {min}
fee_bps = {fee}
fee_min_cents = {fee_min}
"""


def program(freeze: int = 0, cap: int = 3000, min: int = 100, fee: int = 60, fee_min: int = 10) -> Program:
    return parse(V2.format(freeze=freeze, cap=cap, min=min, fee=fee, fee_min=fee_min))


# ---- record builders for the v2 topics ----------------------------------------------------------------


def items_paid(
    t: float, oid: str, buyer: str, items: list[tuple[str, int]], campaign: str | None = None, eid: str | None = None
) -> dict[str, Any]:
    lines = [{"sku_id": s, "amount_cents": c} for s, c in items]
    total = sum(c for _, c in items)
    return _order(t, "paid", oid, buyer, eid, amount_cents=total, items=lines, campaign_id=campaign)


def items_refunded(t: float, oid: str, buyer: str, items: list[tuple[str, int]], eid: str) -> dict[str, Any]:
    lines = [{"sku_id": s, "amount_cents": c} for s, c in items]
    return _order(t, "refunded", oid, buyer, eid, amount_cents=sum(c for _, c in items), items=lines)


def status(t: float, user: str, st: str, eid: str | None = None) -> dict[str, Any]:
    value = {"event_id": eid or f"d-{user}-{st}-{t}", "ts": iso(t), "user_id": user, "status": st}
    return _rec(names.DISTRIBUTORS, user, value)


def adjust(t: float, adj: str, who: str, amount: int, reason: str = "award", eid: str | None = None) -> dict[str, Any]:
    value = {
        "event_id": eid or f"a-{adj}",
        "ts": iso(t),
        "adjustment_id": adj,
        "distributor_id": who,
        "amount_cents": amount,
        "reason": reason,
    }
    return _rec(names.ADJUSTMENTS, who, value)


def wd(
    t: float,
    wid: str,
    who: str,
    typ: str,
    amount: int | None = None,
    eid: str | None = None,
    channel: str | None = None,
) -> dict[str, Any]:
    value = {
        "event_id": eid or f"w-{wid}-{typ}",
        "ts": iso(t),
        "withdrawal_id": wid,
        "distributor_id": who,
        "type": typ,
        "amount_cents": amount,
        "channel": channel,
    }
    return _rec(names.WITHDRAWALS, who, value)


Entry = tuple[str, int, str, str, int]


def e(group: str, level: int, who: str, kind: str, amount: int) -> Entry:
    return (group, level, who, kind, amount)


@dataclass
class Case:
    records: list[dict[str, Any]]
    entries: list[Entry]
    dead: list[tuple[str, str]] = field(default_factory=list)  # (event_id, reason)
    balances: dict[str, tuple[int, int, int, int]] | None = None  # who -> (pending, available, reserved, withdrawn)
    cfg: dict[str, Any] = field(default_factory=dict)
    now: float = 30 * 86400.0


# D pays o1 = P 3000 + X 5000 + G 2000 = 10000 (X is not a configured product: tier rate)
#   level 1 C: P 3000×2000 → 600, X 5000×1000 → 500, G 0 → 1100
#   level 2 B: P 3000×800 → 240,  X 5000×500 → 250,  G 0 → 490
#   level 3 A: P 3000×300 → 90,   X 5000×200 → 100,  G 0 → 190;  cap 10000×3000 // 10000 = 3000, not reached
MIXED = items_paid(10, "o1", "D", [("P", 3000), ("X", 5000), ("G", 2000)], eid="p1")
MIXED_ACCRUED = [e("o1", 1, "C", "accrued", 1100), e("o1", 2, "B", "accrued", 490), e("o1", 3, "A", "accrued", 190)]

# D pays o1 = F 5000 + X 5000 = 10000 under cap 10000 bps (so the cap never cuts)
#   level 1 C: F 5000×10000 → 5000, X 5000×1000 → 500 → 5500; level 2 B: X 5000×500 → 250; level 3 A: X ×200 → 100
TIE = items_paid(10, "o1", "D", [("F", 5000), ("X", 5000)], eid="p1")
TIE_ACCRUED = [e("o1", 1, "C", "accrued", 5500), e("o1", 2, "B", "accrued", 250), e("o1", 3, "A", "accrued", 100)]

# C earns 1000 on a settled order: D pays 10000 (no items), completed at once (freeze 0)
#   C 10000×1000 → 1000, B ×500 → 500, A ×200 → 200
C_SETTLED = [*CHAIN, paid(10, "o1", "D", 10000, eid="p1"), completed(11, "o1", "D", eid="k1")]
C_SETTLED_ENTRIES = [
    e("o1", 1, "C", "accrued", 1000),
    e("o1", 2, "B", "accrued", 500),
    e("o1", 3, "A", "accrued", 200),
    e("o1", 1, "C", "settled", 1000),
    e("o1", 2, "B", "settled", 500),
    e("o1", 3, "A", "settled", 200),
]

# A has 10000 available from an award.
A_FUNDED = [signup(1, "A"), adjust(2, "aw", "A", 10000)]
A_AWARD = e("a:aw", 0, "A", "adjusted", 10000)

CASES: dict[str, Case] = {
    # ---- order items ------------------------------------------------------------------------------------
    "items/product-tier-and-gift": Case([*CHAIN, MIXED], MIXED_ACCRUED),
    "items/per-item-half-up-rounding": Case(
        # X 15 + Y 25 = 40, both at tier rates; per item, then summed (the whole order would give 4 / 2 / 1):
        #   L1: 15×1000 = 15000 +5000 → 2;  25×1000 = 25000 +5000 → 3;  = 5
        #   L2: 15×500 = 7500 +5000 → 1;    25×500 = 12500 +5000 → 1;   = 2
        #   L3: 15×200 = 3000 +5000 → 0;    25×200 = 5000 +5000 → 1;    = 1   (cap 40×3000 // 10000 = 12)
        [*CHAIN, items_paid(10, "o1", "D", [("X", 15), ("Y", 25)])],
        [e("o1", 1, "C", "accrued", 5), e("o1", 2, "B", "accrued", 2), e("o1", 3, "A", "accrued", 1)],
    ),
    "items/cap-on-the-whole-order-levels-in-order": Case(
        # P 8000 + G 2000 = 10000, cap 2000 bps → 10000×2000 // 10000 = 2000 (the gift counts in the cap base)
        #   L1 P 8000×2000 → 1600 (left 400); L2 P 8000×800 → 640, capped to 400 (left 0); L3 P ×300 → 240 → 0
        [*CHAIN, items_paid(10, "o1", "D", [("P", 8000), ("G", 2000)])],
        [e("o1", 1, "C", "accrued", 1600), e("o1", 2, "B", "accrued", 400)],
        cfg={"cap": 2000},
    ),
    "items/product-rate-over-gold-tier": Case(
        # C is gold; P 1000 + X 1000:
        #   L1 C: P 1000×2000 → 200 (product over tier), X 1000×1500 → 150 = 350
        #   L2 B: P ×800 → 80, X ×500 → 50 = 130;  L3 A: P ×300 → 30, X ×200 → 20 = 50   (cap 600)
        [*CHAIN, tier(5, "C", "gold"), items_paid(10, "o1", "D", [("P", 1000), ("X", 1000)])],
        [e("o1", 1, "C", "accrued", 350), e("o1", 2, "B", "accrued", 130), e("o1", 3, "A", "accrued", 50)],
    ),
    "items/all-gift-pays-nothing": Case([*CHAIN, items_paid(10, "o1", "D", [("G", 9999)])], []),
    "items/campaign-with-two-levels-uses-two-product-rates": Case(
        # campaign two: levels 2; P 1000: C ×2000 → 200, B ×800 → 80, A nothing
        [*CHAIN, items_paid(10, "o1", "D", [("P", 1000)], campaign="two")],
        [e("o1", 1, "C", "accrued", 200), e("o1", 2, "B", "accrued", 80)],
    ),
    "items/redelivered-paid-is-silent": Case([*CHAIN, MIXED, MIXED], MIXED_ACCRUED),
    # ---- refunds of itemized orders -----------------------------------------------------------------------
    "refund/named-items": Case(
        # refund P 1000 + X 1500 = 2500; left P 2000, X 3500, G 2000 (order 7500, cap 2250):
        #   L1: P 2000×2000 → 400 + X 3500×1000 → 350 = 750;  1100 → 750: −350
        #   L2: P ×800 → 160 + X ×500 → 175 = 335;          490 → 335:  −155
        #   L3: P ×300 → 60 + X ×200 → 70 = 130;            190 → 130:  −60
        [*CHAIN, MIXED, items_refunded(20, "o1", "D", [("P", 1000), ("X", 1500)], eid="r1")],
        [
            *MIXED_ACCRUED,
            e("o1", 1, "C", "reversed", -350),
            e("o1", 2, "B", "reversed", -155),
            e("o1", 3, "A", "reversed", -60),
        ],
    ),
    "refund/gift-only-changes-nothing-under-the-cap": Case(
        # refund G 1500: items P 3000, X 5000 unchanged → 1100 / 490 / 190; cap (10000 − 1500)×3000 // 10000 = 2550
        [*CHAIN, MIXED, items_refunded(20, "o1", "D", [("G", 1500)], eid="r1")],
        MIXED_ACCRUED,
    ),
    "refund/gift-lowers-the-cap-on-what-is-left": Case(
        # P 8000 + G 2000 under cap 2000 bps: C 1600, B 400 (capped). Refund G 2000: left 8000, cap 1600:
        #   L1 P 8000×2000 → 1600 (left 0); L2 640 → 0: B −400
        [
            *CHAIN,
            items_paid(10, "o1", "D", [("P", 8000), ("G", 2000)]),
            items_refunded(20, "o1", "D", [("G", 2000)], eid="r1"),
        ],
        [e("o1", 1, "C", "accrued", 1600), e("o1", 2, "B", "accrued", 400), e("o1", 2, "B", "reversed", -400)],
        cfg={"cap": 2000},
    ),
    "refund/sku-not-in-order": Case(
        [*CHAIN, MIXED, items_refunded(20, "o1", "D", [("Q", 100)], eid="r1")],
        MIXED_ACCRUED,
        dead=[("r1", "over_refund")],
    ),
    "refund/more-than-the-item-has-left": Case(
        # G 2000: refund 1500 (fine, nothing changes), then 600 more of G (500 left) → over_refund
        [
            *CHAIN,
            MIXED,
            items_refunded(20, "o1", "D", [("G", 1500)], eid="r1"),
            items_refunded(21, "o1", "D", [("G", 600)], eid="r2"),
        ],
        MIXED_ACCRUED,
        dead=[("r2", "over_refund")],
    ),
    "refund/items-on-an-order-paid-without-items": Case(
        [*CHAIN, paid(10, "o1", "D", 10000), items_refunded(20, "o1", "D", [("X", 100)], eid="r1")],
        [e("o1", 1, "C", "accrued", 1000), e("o1", 2, "B", "accrued", 500), e("o1", 3, "A", "accrued", 200)],
        dead=[("r1", "over_refund")],
    ),
    "refund/over-refund-leaves-items-untouched": Case(
        # refund 10001 of 10000 → over_refund; then a full refund still reverses everything
        [*CHAIN, MIXED, refunded(20, "o1", "D", 10001, eid="r1"), refunded(21, "o1", "D", 10000, eid="r2")],
        [
            *MIXED_ACCRUED,
            e("o1", 1, "C", "reversed", -1100),
            e("o1", 2, "B", "reversed", -490),
            e("o1", 3, "A", "reversed", -190),
        ],
        dead=[("r1", "over_refund")],
    ),
    "refund/spread-tie-goes-to-the-earlier-item": Case(
        # refund 3 over F 5000, X 5000: 3×5000 // 10000 = 1 each, remainders 5000 = 5000 → the missing cent to F
        #   left F 4998, X 4999: L1 4998 + (4999×1000 + 5000) // 10000 = 4998 + 500 = 5498: 5500 → 5498: −2
        #   (had X taken it: 4999 + 500 = 5499: −1)
        #   L2 X 4999×500 = 2499500 + 5000 → 250: no change; L3 X 4999×200 = 999800 + 5000 → 100: no change
        [*CHAIN, TIE, refunded(20, "o1", "D", 3, eid="r1")],
        [*TIE_ACCRUED, e("o1", 1, "C", "reversed", -2)],
        cfg={"cap": 10000},
    ),
    "refund/spread-largest-remainder": Case(
        # F 3000 + X 7000; refund 5001: F 5001×3000 = 15003000 → 1500 rem 3000; X 5001×7000 = 35007000 → 3500
        #   rem 7000; one cent missing → X (larger remainder): F 1500, X 3501 refunded; left F 1500, X 3499
        #   L1: before F 3000 + X 700 = 3700; after 1500 + (3499000 + 5000) // 10000 = 1500 + 350 = 1850: −1850
        #       (had F taken it: 1499 + 350 = 1849: −1851)
        #   L2: X 7000×500 → 350; 3499×500 = 1749500 + 5000 → 175: −175
        #   L3: X 7000×200 → 140; 3499×200 = 699800 + 5000 → 70: −70
        [*CHAIN, items_paid(10, "o1", "D", [("F", 3000), ("X", 7000)]), refunded(20, "o1", "D", 5001, eid="r1")],
        [
            e("o1", 1, "C", "accrued", 3700),
            e("o1", 2, "B", "accrued", 350),
            e("o1", 3, "A", "accrued", 140),
            e("o1", 1, "C", "reversed", -1850),
            e("o1", 2, "B", "reversed", -175),
            e("o1", 3, "A", "reversed", -70),
        ],
        cfg={"cap": 10000},
    ),
    "refund/spread-after-a-named-refund-uses-what-is-left": Case(
        # F 5000 + X 5000; refund X 4000 by name: left F 5000, X 1000
        #   L1 5000 + 1000×1000 → 100 = 5100: −400; L2 1000×500 → 50: −200; L3 1000×200 → 20: −80
        # then 600 spread over left 5000 / 1000 (total 6000): F 600×5000 // 6000 = 500, X 100, no remainders
        #   left F 4500, X 900: L1 4500 + 900×1000 → 90 = 4590: −510; L2 900×500 → 45: −5; L3 900×200 → 18: −2
        [
            *CHAIN,
            TIE,
            items_refunded(20, "o1", "D", [("X", 4000)], eid="r1"),
            refunded(21, "o1", "D", 600, eid="r2"),
        ],
        [
            *TIE_ACCRUED,
            e("o1", 1, "C", "reversed", -400),
            e("o1", 1, "C", "reversed", -510),
            e("o1", 2, "B", "reversed", -200),
            e("o1", 2, "B", "reversed", -5),
            e("o1", 3, "A", "reversed", -80),
            e("o1", 3, "A", "reversed", -2),
        ],
        cfg={"cap": 10000},
    ),
    "refund/item-rates-locked-at-paid": Case(
        # C is standard when D pays X 10000 (C 1000); C turns gold after; refund 5000 recomputes at the locked
        # 1000 bps: 5000×1000 → 500: −500 (gold would give 750: −250)
        [
            *CHAIN,
            items_paid(10, "o1", "D", [("X", 10000)]),
            tier(11, "C", "gold"),
            refunded(12, "o1", "D", 5000, eid="r1"),
        ],
        [
            e("o1", 1, "C", "accrued", 1000),
            e("o1", 2, "B", "accrued", 500),
            e("o1", 3, "A", "accrued", 200),
            e("o1", 1, "C", "reversed", -500),
            e("o1", 2, "B", "reversed", -250),
            e("o1", 3, "A", "reversed", -100),
        ],
    ),
    "refund/cancel-itemized-takes-everything-back": Case(
        [*CHAIN, MIXED, items_refunded(20, "o1", "D", [("X", 1000)], eid="r1"), cancelled(30, "o1", "D", eid="x1")],
        # r1: X left 4000: L1 600 + 400 = 1000: −100; L2 240 + 200 = 440: −50; L3 90 + 80 = 170: −20
        # x1: everything left goes: −1000, −440, −170
        [
            *MIXED_ACCRUED,
            e("o1", 1, "C", "reversed", -100),
            e("o1", 1, "C", "reversed", -1000),
            e("o1", 2, "B", "reversed", -50),
            e("o1", 2, "B", "reversed", -440),
            e("o1", 3, "A", "reversed", -20),
            e("o1", 3, "A", "reversed", -170),
        ],
    ),
    "refund/itemized-after-settlement-claws-back": Case(
        [
            *CHAIN,
            MIXED,
            completed(15, "o1", "D", eid="k1"),
            items_refunded(20, "o1", "D", [("P", 1000), ("X", 1500)], eid="r1"),
        ],
        # as refund/named-items, after settlement: −350 / −155 / −60 clawed back
        [
            *MIXED_ACCRUED,
            e("o1", 1, "C", "settled", 1100),
            e("o1", 2, "B", "settled", 490),
            e("o1", 3, "A", "settled", 190),
            e("o1", 1, "C", "clawed_back", -350),
            e("o1", 2, "B", "clawed_back", -155),
            e("o1", 3, "A", "clawed_back", -60),
        ],
        balances={"A": (0, 130, 0, 0), "B": (0, 335, 0, 0), "C": (0, 750, 0, 0)},
    ),
    # ---- distributor status -----------------------------------------------------------------------------
    "status/unknown-user": Case([status(5, "ghost", "frozen", eid="d1")], [], dead=[("d1", "unknown_user")]),
    "status/before-signup-is-unknown-user": Case(
        [status(5, "A", "active", eid="d1"), signup(6, "A")], [], dead=[("d1", "unknown_user")]
    ),
    "status/revoked-gets-nothing-levels-not-shifted": Case(
        # B revoked: C 1000, B nothing, A 200 (not moved up to level 2)
        [*CHAIN, status(5, "B", "revoked"), paid(10, "o1", "D", 10000)],
        [e("o1", 1, "C", "accrued", 1000), e("o1", 3, "A", "accrued", 200)],
    ),
    "status/revoked-gets-no-product-rate-either": Case(
        # P 10000: C 2000, B (revoked) 0, A 10000×300 → 300
        [*CHAIN, status(5, "B", "revoked"), items_paid(10, "o1", "D", [("P", 10000)])],
        [e("o1", 1, "C", "accrued", 2000), e("o1", 3, "A", "accrued", 300)],
    ),
    "status/revoked-same-ts-as-paid-applies-first": Case(
        # distributors sort before orders at the same ts
        [*CHAIN, paid(10, "o1", "D", 10000), status(10, "C", "revoked")],
        [e("o1", 2, "B", "accrued", 500), e("o1", 3, "A", "accrued", 200)],
    ),
    "status/revoked-after-paid-keeps-the-locked-order": Case(
        # C revoked after o1 was paid: the refund still recomputes C's locked level: 1000 → 500
        [*CHAIN, paid(10, "o1", "D", 10000), status(11, "C", "revoked"), refunded(12, "o1", "D", 5000, eid="r1")],
        [
            e("o1", 1, "C", "accrued", 1000),
            e("o1", 2, "B", "accrued", 500),
            e("o1", 3, "A", "accrued", 200),
            e("o1", 1, "C", "reversed", -500),
            e("o1", 2, "B", "reversed", -250),
            e("o1", 3, "A", "reversed", -100),
        ],
    ),
    "status/revoked-cannot-become-an-inviter": Case(
        # B's signup ref A is not valid: B has no inviter, so B's order pays nobody
        [signup(1, "A"), status(2, "A", "revoked"), signup(3, "B", ref="A"), paid(10, "o1", "B", 10000)],
        [],
    ),
    "status/active-approves-a-non-distributor": Case(
        # N signed up as a non-distributor; approved, it can be an inviter and earns 10000×1000 → 1000
        [
            signup(1, "N", distributor=False),
            status(2, "N", "active"),
            signup(3, "B", ref="N"),
            paid(10, "o1", "B", 10000),
        ],
        [e("o1", 1, "N", "accrued", 1000)],
    ),
    "status/active-restores-a-revoked-distributor": Case(
        [*CHAIN, status(5, "C", "revoked"), status(6, "C", "active"), paid(10, "o1", "D", 10000)],
        [e("o1", 1, "C", "accrued", 1000), e("o1", 2, "B", "accrued", 500), e("o1", 3, "A", "accrued", 200)],
    ),
    "status/frozen-keeps-earning": Case(
        [*CHAIN, status(5, "C", "frozen"), paid(10, "o1", "D", 10000)],
        [e("o1", 1, "C", "accrued", 1000), e("o1", 2, "B", "accrued", 500), e("o1", 3, "A", "accrued", 200)],
    ),
    # ---- adjustments ------------------------------------------------------------------------------------
    "adjust/credit-and-debit-on-available": Case(
        [signup(1, "A"), adjust(2, "aw", "A", 500), adjust(3, "fix", "A", -200, reason="correction")],
        [e("a:aw", 0, "A", "adjusted", 500), e("a:fix", 0, "A", "adjusted", -200)],
        balances={"A": (0, 300, 0, 0)},  # 500 − 200
    ),
    "adjust/debit-may-go-negative": Case(
        [signup(1, "A"), adjust(2, "fix", "A", -700)],
        [e("a:fix", 0, "A", "adjusted", -700)],
        balances={"A": (0, -700, 0, 0)},
    ),
    "adjust/unknown-user": Case([adjust(2, "aw", "ghost", 500, eid="a1")], [], dead=[("a1", "unknown_user")]),
    "adjust/duplicate-adjustment": Case(
        [signup(1, "A"), adjust(2, "aw", "A", 500, eid="a1"), adjust(3, "aw", "A", 500, eid="a2")],
        [e("a:aw", 0, "A", "adjusted", 500)],
        dead=[("a2", "duplicate_adjustment")],
    ),
    "adjust/duplicate-id-for-another-user": Case(
        [signup(1, "A"), signup(1, "B"), adjust(2, "aw", "A", 500, eid="a1"), adjust(3, "aw", "B", 500, eid="a2")],
        [e("a:aw", 0, "A", "adjusted", 500)],
        dead=[("a2", "duplicate_adjustment")],
    ),
    "adjust/non-distributor-and-revoked-can-be-adjusted": Case(
        [
            signup(1, "N", distributor=False),
            adjust(2, "n1", "N", 300),
            signup(3, "R"),
            status(4, "R", "revoked"),
            adjust(5, "r1", "R", 400),
        ],
        [e("a:n1", 0, "N", "adjusted", 300), e("a:r1", 0, "R", "adjusted", 400)],
    ),
    # ---- withdrawals: the happy paths -----------------------------------------------------------------------
    "withdraw/requested-approved-paid": Case(
        # fee 5000×60 = 300000 + 5000 → 30 (≥ 10); held then withdrawn out of reserved
        [*A_FUNDED, wd(3, "w1", "A", "requested", 5000), wd(4, "w1", "A", "approved"), wd(5, "w1", "A", "paid")],
        [A_AWARD, e("w:w1", 0, "A", "held", -5000), e("w:w1", 0, "A", "withdrawn", -5000)],
        balances={"A": (0, 5000, 0, 5000)},  # available 10000 − 5000
    ),
    "withdraw/requested-only-is-reserved": Case(
        [*A_FUNDED, wd(3, "w1", "A", "requested", 4000)],
        [A_AWARD, e("w:w1", 0, "A", "held", -4000)],
        balances={"A": (0, 6000, 4000, 0)},
    ),
    "withdraw/approved-is-still-reserved": Case(
        [*A_FUNDED, wd(3, "w1", "A", "requested", 4000), wd(4, "w1", "A", "approved")],
        [A_AWARD, e("w:w1", 0, "A", "held", -4000)],
        balances={"A": (0, 6000, 4000, 0)},
    ),
    "withdraw/rejected-from-requested-releases": Case(
        [*A_FUNDED, wd(3, "w1", "A", "requested", 4000), wd(4, "w1", "A", "rejected")],
        [A_AWARD, e("w:w1", 0, "A", "held", -4000), e("w:w1", 0, "A", "released", 4000)],
        balances={"A": (0, 10000, 0, 0)},
    ),
    "withdraw/rejected-from-approved-releases": Case(
        [*A_FUNDED, wd(3, "w1", "A", "requested", 4000), wd(4, "w1", "A", "approved"), wd(5, "w1", "A", "rejected")],
        [A_AWARD, e("w:w1", 0, "A", "held", -4000), e("w:w1", 0, "A", "released", 4000)],
        balances={"A": (0, 10000, 0, 0)},
    ),
    "withdraw/failed-from-approved-releases": Case(
        [*A_FUNDED, wd(3, "w1", "A", "requested", 4000), wd(4, "w1", "A", "approved"), wd(5, "w1", "A", "failed")],
        [A_AWARD, e("w:w1", 0, "A", "held", -4000), e("w:w1", 0, "A", "released", 4000)],
        balances={"A": (0, 10000, 0, 0)},
    ),
    "withdraw/released-money-can-be-requested-again": Case(
        [
            *A_FUNDED,
            wd(3, "w1", "A", "requested", 10000),
            wd(4, "w1", "A", "rejected"),
            wd(5, "w2", "A", "requested", 10000),
        ],
        [
            A_AWARD,
            e("w:w1", 0, "A", "held", -10000),
            e("w:w1", 0, "A", "released", 10000),
            e("w:w2", 0, "A", "held", -10000),
        ],
        balances={"A": (0, 0, 10000, 0)},
    ),
    "withdraw/exactly-the-minimum-and-exactly-available": Case(
        # min 100; 10000 available: 100 then 9900 (= what is left) both pass
        [*A_FUNDED, wd(3, "w1", "A", "requested", 100), wd(4, "w2", "A", "requested", 9900)],
        [A_AWARD, e("w:w1", 0, "A", "held", -100), e("w:w2", 0, "A", "held", -9900)],
        balances={"A": (0, 0, 10000, 0)},
    ),
    # ---- withdrawals: every refusal, in the spec's order -------------------------------------------------------
    "withdraw/unknown-user": Case(
        [wd(3, "w1", "ghost", "requested", 500, eid="q1")], [], dead=[("q1", "unknown_user")]
    ),
    "withdraw/never-approved-is-not-a-distributor": Case(
        # checked before the balance: N has 1000 but is not a distributor
        [signup(1, "N", distributor=False), adjust(2, "n1", "N", 1000), wd(3, "w1", "N", "requested", 500, eid="q1")],
        [e("a:n1", 0, "N", "adjusted", 1000)],
        dead=[("q1", "not_a_distributor")],
    ),
    "withdraw/revoked-is-not-a-distributor": Case(
        [*A_FUNDED, status(3, "A", "revoked"), wd(4, "w1", "A", "requested", 500, eid="q1")],
        [A_AWARD],
        dead=[("q1", "not_a_distributor")],
    ),
    "withdraw/revoked-and-frozen-is-not-a-distributor-first": Case(
        [*A_FUNDED, status(3, "A", "frozen"), status(4, "A", "revoked"), wd(5, "w1", "A", "requested", 500, eid="q1")],
        [A_AWARD],
        dead=[("q1", "not_a_distributor")],
    ),
    "withdraw/frozen-refused-until-active": Case(
        [
            *A_FUNDED,
            status(3, "A", "frozen"),
            wd(4, "w1", "A", "requested", 500, eid="q1"),
            status(5, "A", "active"),
            wd(6, "w1", "A", "requested", 500, eid="q2"),
        ],
        # the refused request left no withdrawal behind: the same id is a new request once A is active
        [A_AWARD, e("w:w1", 0, "A", "held", -500)],
        dead=[("q1", "distributor_frozen")],
        balances={"A": (0, 9500, 500, 0)},
    ),
    "withdraw/frozen-checked-before-duplicate-and-minimum": Case(
        [
            *A_FUNDED,
            wd(3, "w1", "A", "requested", 500),
            status(4, "A", "frozen"),
            wd(5, "w1", "A", "requested", 50, eid="q2"),
        ],
        [A_AWARD, e("w:w1", 0, "A", "held", -500)],
        dead=[("q2", "distributor_frozen")],
    ),
    "withdraw/frozen-can-still-be-paid-out": Case(
        # the freeze refuses requests only; an approved request already made is paid
        [
            *A_FUNDED,
            wd(3, "w1", "A", "requested", 500),
            wd(4, "w1", "A", "approved"),
            status(5, "A", "frozen"),
            wd(6, "w1", "A", "paid"),
        ],
        [A_AWARD, e("w:w1", 0, "A", "held", -500), e("w:w1", 0, "A", "withdrawn", -500)],
    ),
    "withdraw/duplicate-withdrawal-before-minimum": Case(
        [*A_FUNDED, wd(3, "w1", "A", "requested", 500), wd(4, "w1", "A", "requested", 50, eid="q2")],
        [A_AWARD, e("w:w1", 0, "A", "held", -500)],
        dead=[("q2", "duplicate_withdrawal")],
    ),
    "withdraw/duplicate-withdrawal-after-it-was-paid": Case(
        [
            *A_FUNDED,
            wd(3, "w1", "A", "requested", 500),
            wd(4, "w1", "A", "approved"),
            wd(5, "w1", "A", "paid"),
            wd(6, "w1", "A", "requested", 500, eid="q2"),
        ],
        [A_AWARD, e("w:w1", 0, "A", "held", -500), e("w:w1", 0, "A", "withdrawn", -500)],
        dead=[("q2", "duplicate_withdrawal")],
    ),
    "withdraw/below-minimum-before-balance": Case(
        # 99 < min 100 (and A has nothing: below_minimum is checked first)
        [signup(1, "A"), wd(3, "w1", "A", "requested", 99, eid="q1")],
        [],
        dead=[("q1", "below_minimum")],
    ),
    "withdraw/below-a-configured-minimum": Case(
        [*A_FUNDED, wd(3, "w1", "A", "requested", 4999, eid="q1"), wd(4, "w2", "A", "requested", 5000)],
        [A_AWARD, e("w:w2", 0, "A", "held", -5000)],
        dead=[("q1", "below_minimum")],
        cfg={"min": 5000},
    ),
    "withdraw/insufficient-balance-by-one-cent": Case(
        [*A_FUNDED, wd(3, "w1", "A", "requested", 10001, eid="q1")],
        [A_AWARD],
        dead=[("q1", "insufficient_balance")],
    ),
    "withdraw/held-money-is-not-available": Case(
        [*A_FUNDED, wd(3, "w1", "A", "requested", 6000), wd(4, "w2", "A", "requested", 4001, eid="q2")],
        [A_AWARD, e("w:w1", 0, "A", "held", -6000)],
        dead=[("q2", "insufficient_balance")],
    ),
    "withdraw/pending-is-not-available": Case(
        # C earned 1000 but o1 is not completed: pending 1000, available 0
        [*CHAIN, paid(10, "o1", "D", 10000), wd(20, "w1", "C", "requested", 1000, eid="q1")],
        [e("o1", 1, "C", "accrued", 1000), e("o1", 2, "B", "accrued", 500), e("o1", 3, "A", "accrued", 200)],
        dead=[("q1", "insufficient_balance")],
    ),
    "withdraw/a-debit-lowers-what-is-available": Case(
        [*A_FUNDED, adjust(3, "fix", "A", -2000), wd(4, "w1", "A", "requested", 8001, eid="q1")],
        [A_AWARD, e("a:fix", 0, "A", "adjusted", -2000)],
        dead=[("q1", "insufficient_balance")],
    ),
    # ---- withdrawals: invalid transitions -----------------------------------------------------------------------
    "withdraw/approve-unknown-id": Case(
        [*A_FUNDED, wd(3, "nope", "A", "approved", eid="t1")], [A_AWARD], dead=[("t1", "invalid_transition")]
    ),
    "withdraw/paid-unknown-id-of-unknown-user": Case(
        [wd(3, "nope", "ghost", "paid", eid="t1")], [], dead=[("t1", "invalid_transition")]
    ),
    "withdraw/approve-a-refused-request": Case(
        # a request refused (below minimum) leaves nothing to approve
        [*A_FUNDED, wd(3, "w1", "A", "requested", 50, eid="q1"), wd(4, "w1", "A", "approved", eid="t1")],
        [A_AWARD],
        dead=[("q1", "below_minimum"), ("t1", "invalid_transition")],
    ),
    "withdraw/another-distributor-cannot-move-it": Case(
        [
            *A_FUNDED,
            signup(2, "B"),
            wd(3, "w1", "A", "requested", 500),
            wd(4, "w1", "B", "approved", eid="t1"),
            wd(5, "w1", "B", "rejected", eid="t2"),
        ],
        [A_AWARD, e("w:w1", 0, "A", "held", -500)],
        dead=[("t1", "invalid_transition"), ("t2", "invalid_transition")],
    ),
    "withdraw/paid-from-requested": Case(
        [*A_FUNDED, wd(3, "w1", "A", "requested", 500), wd(4, "w1", "A", "paid", eid="t1")],
        [A_AWARD, e("w:w1", 0, "A", "held", -500)],
        dead=[("t1", "invalid_transition")],
    ),
    "withdraw/failed-from-requested": Case(
        [*A_FUNDED, wd(3, "w1", "A", "requested", 500), wd(4, "w1", "A", "failed", eid="t1")],
        [A_AWARD, e("w:w1", 0, "A", "held", -500)],
        dead=[("t1", "invalid_transition")],
    ),
    "withdraw/approved-twice": Case(
        [
            *A_FUNDED,
            wd(3, "w1", "A", "requested", 500),
            wd(4, "w1", "A", "approved"),
            wd(5, "w1", "A", "approved", eid="t1"),
        ],
        [A_AWARD, e("w:w1", 0, "A", "held", -500)],
        dead=[("t1", "invalid_transition")],
    ),
    "withdraw/nothing-moves-after-paid": Case(
        [
            *A_FUNDED,
            wd(3, "w1", "A", "requested", 500),
            wd(4, "w1", "A", "approved"),
            wd(5, "w1", "A", "paid"),
            wd(6, "w1", "A", "paid", eid="t1"),
            wd(7, "w1", "A", "rejected", eid="t2"),
            wd(8, "w1", "A", "failed", eid="t3"),
            wd(9, "w1", "A", "approved", eid="t4"),
        ],
        [A_AWARD, e("w:w1", 0, "A", "held", -500), e("w:w1", 0, "A", "withdrawn", -500)],
        dead=[
            ("t1", "invalid_transition"),
            ("t2", "invalid_transition"),
            ("t3", "invalid_transition"),
            ("t4", "invalid_transition"),
        ],
    ),
    "withdraw/nothing-moves-after-rejected": Case(
        [
            *A_FUNDED,
            wd(3, "w1", "A", "requested", 500),
            wd(4, "w1", "A", "rejected"),
            wd(5, "w1", "A", "approved", eid="t1"),
            wd(6, "w1", "A", "rejected", eid="t2"),
        ],
        [A_AWARD, e("w:w1", 0, "A", "held", -500), e("w:w1", 0, "A", "released", 500)],
        dead=[("t1", "invalid_transition"), ("t2", "invalid_transition")],
    ),
    "withdraw/failed-cannot-be-paid": Case(
        [
            *A_FUNDED,
            wd(3, "w1", "A", "requested", 500),
            wd(4, "w1", "A", "approved"),
            wd(5, "w1", "A", "failed"),
            wd(6, "w1", "A", "paid", eid="t1"),
        ],
        [A_AWARD, e("w:w1", 0, "A", "held", -500), e("w:w1", 0, "A", "released", 500)],
        dead=[("t1", "invalid_transition")],
    ),
    # ---- settlement is global; money racing money ----------------------------------------------------------------
    "settle/withdrawal-at-the-settle-ts-sees-the-settlement": Case(
        # freeze 100 s: o1 completed at 20 settles at 120; C's request at 120 sees C's 1000 available
        [
            *CHAIN,
            paid(10, "o1", "D", 10000),
            completed(20, "o1", "D", eid="k1"),
            wd(120, "w1", "C", "requested", 1000),
        ],
        [
            e("o1", 1, "C", "accrued", 1000),
            e("o1", 2, "B", "accrued", 500),
            e("o1", 3, "A", "accrued", 200),
            e("o1", 1, "C", "settled", 1000),
            e("o1", 2, "B", "settled", 500),
            e("o1", 3, "A", "settled", 200),
            e("w:w1", 0, "C", "held", -1000),
        ],
        balances={"A": (0, 200, 0, 0), "B": (0, 500, 0, 0), "C": (0, 0, 1000, 0)},
        cfg={"freeze": 100},
    ),
    "settle/withdrawal-1ms-before-the-settle-ts-does-not": Case(
        [
            *CHAIN,
            paid(10, "o1", "D", 10000),
            completed(20, "o1", "D", eid="k1"),
            wd(119.999, "w1", "C", "requested", 1000, eid="q1"),
        ],
        C_SETTLED_ENTRIES,
        dead=[("q1", "insufficient_balance")],
        balances={"A": (0, 200, 0, 0), "B": (0, 500, 0, 0), "C": (0, 1000, 0, 0)},
        cfg={"freeze": 100},
    ),
    "settle/adjustment-at-the-same-ts-comes-before-the-withdrawal": Case(
        # adjustments sort before withdrawals at one ts, whatever the event ids
        [signup(1, "A"), wd(5, "w1", "A", "requested", 1000, eid="0-first"), adjust(5, "aw", "A", 1000, eid="z-last")],
        [e("a:aw", 0, "A", "adjusted", 1000), e("w:w1", 0, "A", "held", -1000)],
    ),
    "race/withdrawn-then-clawed-back-goes-negative": Case(
        # C withdraws its settled 1000, then D refunds everything: C's available is clawed back to −1000 and a
        # new request is refused; the payout stands
        [
            *C_SETTLED,
            wd(12, "w1", "C", "requested", 1000),
            wd(13, "w1", "C", "approved"),
            wd(14, "w1", "C", "paid"),
            refunded(15, "o1", "D", 10000, eid="r1"),
            wd(16, "w2", "C", "requested", 100, eid="q2"),
        ],
        [
            *C_SETTLED_ENTRIES,
            e("w:w1", 0, "C", "held", -1000),
            e("w:w1", 0, "C", "withdrawn", -1000),
            e("o1", 1, "C", "clawed_back", -1000),
            e("o1", 2, "B", "clawed_back", -500),
            e("o1", 3, "A", "clawed_back", -200),
        ],
        dead=[("q2", "insufficient_balance")],
        balances={"A": (0, 0, 0, 0), "B": (0, 0, 0, 0), "C": (0, -1000, 0, 1000)},
    ),
    "race/clawback-while-reserved-leaves-the-reservation": Case(
        # C requests its 1000 (reserved), D refunds half: available 0 − 500 = −500; rejection releases 1000 → 500
        [
            *C_SETTLED,
            wd(12, "w1", "C", "requested", 1000),
            refunded(13, "o1", "D", 5000, eid="r1"),
            wd(14, "w1", "C", "rejected"),
        ],
        [
            *C_SETTLED_ENTRIES,
            e("w:w1", 0, "C", "held", -1000),
            e("o1", 1, "C", "clawed_back", -500),
            e("o1", 2, "B", "clawed_back", -250),
            e("o1", 3, "A", "clawed_back", -100),
            e("w:w1", 0, "C", "released", 1000),
        ],
        balances={"A": (0, 100, 0, 0), "B": (0, 250, 0, 0), "C": (0, 500, 0, 0)},
    ),
}


@dataclass
class Result:
    entries: list[Entry]
    dead: list[tuple[str, str]]
    run: reference.ReferenceRun


def _group(rec: dict[str, object]) -> str:
    if rec["order_id"] is not None:
        return str(rec["order_id"])
    if "withdrawal_id" in rec:
        return f"w:{rec['withdrawal_id']}"
    return f"a:{rec['adjustment_id']}"


def run_case(case: Case, records: list[dict[str, Any]] | None = None) -> Result:
    run = reference.run(case.records if records is None else records, program(**case.cfg), at(case.now))
    entries: list[Entry] = sorted(
        (_group(r), int(str(r["level"])), str(r["beneficiary_id"]), str(r["kind"]), int(str(r["amount_cents"])))
        for r in run.entries
    )
    dead = sorted((str(d["event_id"]), str(d["reason"])) for d in run.dead_letters)
    return Result(entries, dead, run)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_rule(case: Case) -> None:
    got = run_case(case)
    assert got.entries == sorted(case.entries)
    assert got.dead == sorted(case.dead)
    ids = [r["entry_id"] for r in got.run.entries]
    assert len(ids) == len(set(ids)), "entry ids must be unique"
    if case.balances is not None:
        summary = outcome.summarize(got.run.entries, got.run.bindings, got.run.dead_letters, v2=True)
        balances = {
            who: (b["pending_cents"], b["available_cents"], b["reserved_cents"], b["withdrawn_cents"])
            for who, b in summary["balances"].items()
        }
        assert balances == case.balances


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_rule_is_independent_of_line_order_and_redelivery(case: Case) -> None:
    """Reversed input, every record delivered twice: the same entries, ids and dead letters."""
    first = run_case(case)
    noisy = list(reversed(case.records)) + case.records
    random.Random(len(case.records)).shuffle(noisy)
    again = run_case(case, noisy)
    assert again.entries == first.entries
    assert again.dead == first.dead
    assert sorted(r["entry_id"] for r in again.run.entries) == sorted(r["entry_id"] for r in first.run.entries)


# ---- fees ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "amount", "fee", "payout"),
    [
        ({}, 5000, 30, 4970),  # 5000×60 = 300000 + 5000 → 30 ≥ min 10
        ({}, 1000, 10, 990),  # 1000×60 = 60000 + 5000 → 6, raised to the minimum 10
        ({}, 1750, 11, 1739),  # 1750×60 = 105000 + 5000 → 11
        ({"fee_min": 0}, 1250, 8, 1242),  # 1250×60 = 75000 → 7.5, half up → 8
        ({"fee_min": 0}, 1249, 7, 1242),  # 1249×60 = 74940 + 5000 = 79940 → 7
        ({"fee_min": 500}, 200, 200, 0),  # minimum 500 > amount: the fee is at most the amount
        ({"fee": 0, "fee_min": 0}, 100, 0, 100),  # no fee
        ({"fee": 10000, "fee_min": 0}, 777, 777, 0),  # 100 %
    ],
    ids=["rate", "minimum", "rate-above-minimum", "half-up", "below-half", "at-most-amount", "no-fee", "all"],
)
def test_withdrawn_entry_carries_fee_and_payout(cfg: dict[str, Any], amount: int, fee: int, payout: int) -> None:
    records = [
        signup(1, "A"),
        adjust(2, "aw", "A", 100000),
        wd(3, "w1", "A", "requested", amount, eid="q1", channel="alipay"),
        wd(4, "w1", "A", "approved", eid="q2"),
        wd(5, "w1", "A", "paid", eid="q3"),
    ]
    run = reference.run(records, program(**cfg), at(100))
    (withdrawn,) = [r for r in run.entries if r["kind"] == "withdrawn"]
    assert withdrawn["amount_cents"] == -amount
    assert withdrawn["fee_cents"] == fee
    assert withdrawn["payout_cents"] == payout
    (held,) = [r for r in run.entries if r["kind"] == "held"]
    assert "fee_cents" not in held and "payout_cents" not in held


# ---- entry fields of the new kinds ------------------------------------------------------------------------------


def test_v2_entry_fields() -> None:
    records = [
        signup(1, "A"),
        adjust(2.5, "aw", "A", 10000, reason="November award", eid="a1"),
        wd(3, "w1", "A", "requested", 5000, eid="q1"),
        wd(4, "w1", "A", "approved", eid="q2"),
        wd(5, "w1", "A", "paid", eid="q3"),
        wd(6, "w2", "A", "requested", 200, eid="q4"),
        wd(7, "w2", "A", "rejected", eid="q5"),
    ]
    run = reference.run(records, program(), at(100))
    by_id = {r["entry_id"]: r for r in run.entries}
    assert sorted(by_id) == ["a1:0:adjusted", "q1:0:held", "q3:0:withdrawn", "q4:0:held", "q5:0:released"]
    common = {"order_id": None, "buyer_id": None, "campaign_id": None, "level": 0, "beneficiary_id": "A"}
    assert by_id["a1:0:adjusted"] == {
        "entry_id": "a1:0:adjusted",
        "source_event_id": "a1",
        "ts": "2026-11-11T00:00:02.500Z",
        "kind": "adjusted",
        "amount_cents": 10000,
        "adjustment_id": "aw",
        "reason": "November award",
        **common,
    }
    assert by_id["q1:0:held"] == {
        "entry_id": "q1:0:held",
        "source_event_id": "q1",
        "ts": "2026-11-11T00:00:03.000Z",
        "kind": "held",
        "amount_cents": -5000,
        "withdrawal_id": "w1",
        **common,
    }
    # 5000×60 = 300000 + 5000 → fee 30, payout 4970
    assert by_id["q3:0:withdrawn"] == {
        "entry_id": "q3:0:withdrawn",
        "source_event_id": "q3",
        "ts": "2026-11-11T00:00:05.000Z",
        "kind": "withdrawn",
        "amount_cents": -5000,
        "withdrawal_id": "w1",
        "fee_cents": 30,
        "payout_cents": 4970,
        **common,
    }
    assert by_id["q5:0:released"]["amount_cents"] == 200
    assert by_id["q5:0:released"]["withdrawal_id"] == "w2"


def test_v1_entry_record_has_exactly_the_v1_fields() -> None:
    run = reference.run([*CHAIN, paid(10, "o1", "D", 10000, eid="p1")], program(), at(100))
    v1 = ["entry_id", "source_event_id", "ts", "order_id", "buyer_id", "beneficiary_id", "level", "kind"]
    for rec in run.entries:
        assert list(rec) == [*v1, "amount_cents", "campaign_id"]
    itemized = reference.run([*CHAIN, MIXED], program(), at(100))
    for rec in itemized.entries:
        assert list(rec) == [*v1, "amount_cents", "campaign_id"]


# ---- the engine's state: absolute balances and the per-item terms -------------------------------------------


def decoded(records: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    out = []
    for r in records:
        ev = decode(r["topic"], json.dumps(r["value"]).encode("utf-8"))
        assert not isinstance(ev, Invalid), ev
        out.append((seq_key(names.TOPIC_RANK_V2[r["topic"]], ev), ev))
    out.sort(key=lambda t: t[0])
    return out


def test_state_holds_absolute_balances_of_all_four() -> None:
    case = CASES["race/clawback-while-reserved-leaves-the-reservation"]
    ledger = Ledger(program(), State())
    for key, ev in decoded(case.records):
        ledger.step(ev, key)
    got = {who: (b.pending, b.available, b.reserved, b.withdrawn) for who, b in ledger.state.balances.items()}
    assert got == case.balances
    assert ledger.state.dirty_balances == {"A", "B", "C"}
    # deltas of a fresh State equal the absolutes; lifetime earned is commission only: C 1000 − 500
    assert ledger.state.balance_deltas["C"].available == 500
    assert ledger.state.balance_deltas["C"].earned == 500
    assert ledger.state.balance_deltas["C"].reserved == 0


def test_adjustments_and_withdrawals_do_not_count_as_earned() -> None:
    ledger = Ledger(program(), State())
    for key, ev in decoded(
        [*A_FUNDED, wd(3, "w1", "A", "requested", 4000), wd(4, "w1", "A", "approved"), wd(5, "w1", "A", "paid")]
    ):
        ledger.step(ev, key)
    a = ledger.state.balances["A"]
    assert (a.pending, a.available, a.reserved, a.withdrawn, a.earned) == (0, 6000, 0, 4000, 0)


def _partial(balance: Balance | None) -> State:
    """The slice a store would load for A's request w1: the user, the (absent) withdrawal, the dead-letter check."""
    s = State(complete=False)
    s.users["A"] = User(0, True, None, "s-A")
    s.withdrawals["w1"] = None
    s.dead_checked.add("w-w1-requested")
    if balance is not None:
        s.balances["A"] = balance
    return s


def test_partial_state_checks_the_loaded_balance() -> None:
    ((key, ev),) = decoded([wd(3, "w1", "A", "requested", 500)])
    state = _partial(Balance(available=500))
    out = Ledger(program(), state).apply(ev, key)
    assert [(x.kind, x.amount_cents) for x in out.entries] == [("held", -500)]
    assert (state.balances["A"].available, state.balances["A"].reserved) == (0, 500)
    assert (state.balance_deltas["A"].available, state.balance_deltas["A"].reserved) == (-500, 500)
    too_much = _partial(Balance(available=499))
    assert Ledger(program(), too_much).apply(ev, key).rejection == "insufficient_balance"


def test_partial_state_without_the_requesters_balance_refuses_to_guess() -> None:
    """A store that loads only a batch's slice must load the requester's balance; the engine says so loudly."""
    ((key, ev),) = decoded([wd(3, "w1", "A", "requested", 500)])
    with pytest.raises(NotLoaded):
        Ledger(program(), _partial(None)).apply(ev, key)


def test_partial_state_entries_for_unloaded_balances_only_change_deltas() -> None:
    ((key, ev),) = decoded([adjust(2, "aw", "A", 700)])
    state = _partial(None)
    state.adjustments["aw"] = None
    state.dead_checked.add("a-aw")
    Ledger(program(), state).apply(ev, key)
    assert state.balances == {}
    assert state.balance_deltas["A"].available == 700


def test_itemized_order_state_keeps_items_and_locked_item_rates() -> None:
    ledger = Ledger(program(), State())
    for key, ev in decoded([*CHAIN, MIXED, items_refunded(20, "o1", "D", [("P", 1000), ("X", 1500)], eid="r1")]):
        ledger.step(ev, key)
    o = ledger.state.orders["o1"]
    assert o is not None
    assert o.item_skus == ["P", "X", "G"]
    assert o.item_cents == [3000, 5000, 2000]
    assert o.item_refunded_cents == [1000, 1500, 0]
    # level 1 C standard: P own 2000, X tier 1000, G 0; level 2: 800 / 500 / 0; level 3: 300 / 200 / 0
    assert o.item_rates_bps == [[2000, 1000, 0], [800, 500, 0], [300, 200, 0]]
    assert o.amounts == [750, 335, 130]
    assert (o.paid_cents, o.refunded_cents) == (10000, 2500)


def _raw_order(t: float, eid: str, typ: str, amount: int, items: list[tuple[str, int]]) -> dict[str, Any]:
    lines = [{"sku_id": s, "amount_cents": c} for s, c in items]
    return _order(t, typ, "o1", "D", eid, amount_cents=amount, items=lines)


@pytest.mark.parametrize(
    "bad",
    [
        _raw_order(10, "p1", "paid", 10000, [("P", 3000), ("X", 6999)]),  # 9999 ≠ 10000
        _raw_order(10, "p1", "paid", 10000, [("P", 5000), ("P", 5000)]),  # sku twice
        _raw_order(10, "p1", "paid", 0, []),  # empty list
    ],
    ids=["paid-items-do-not-add-up", "paid-sku-twice", "paid-items-empty"],
)
def test_bad_items_are_invalid_events_and_move_nothing(bad: dict[str, Any]) -> None:
    run = reference.run([*CHAIN, bad], program(), at(100))
    assert run.entries == []
    assert [(d["event_id"], d["reason"]) for d in run.dead_letters] == [("p1", "invalid_event")]


def test_refund_items_that_do_not_add_up_are_invalid_and_the_order_is_untouched() -> None:
    bad = _raw_order(20, "r1", "refunded", 2500, [("P", 1000), ("X", 1000)])  # 2000 ≠ 2500
    run = run_case(Case([*CHAIN, MIXED, bad, refunded(30, "o1", "D", 10000, eid="r2")], []))
    assert run.dead == [("r1", "invalid_event")]
    # the full refund afterwards takes back exactly what was accrued: nothing was refunded by r1
    assert run.entries == sorted(
        [
            *MIXED_ACCRUED,
            e("o1", 1, "C", "reversed", -1100),
            e("o1", 2, "B", "reversed", -490),
            e("o1", 3, "A", "reversed", -190),
        ]
    )


@pytest.mark.parametrize(
    "later",
    [
        tier(120, "A", "gold"),
        status(120, "A", "frozen"),
        signup(120, "Z"),
        paid(120, "o2", "A", 100),
        adjust(120, "aw", "A", 100),
        wd(120, "w1", "C", "requested", 1000),
    ],
    ids=["tiers", "distributors", "signups", "orders", "adjustments", "withdrawals"],
)
def test_an_event_of_any_topic_at_the_settle_ts_comes_after_the_settlement(later: dict[str, Any]) -> None:
    # freeze 100 s: o1 completed at 20 settles at 120: C 1000, B 500, A 200 settle before the event at 120
    records = [*CHAIN, paid(10, "o1", "D", 10000), completed(20, "o1", "D", eid="k1")]
    ledger = Ledger(program(freeze=100), State())
    for key, ev in decoded(records):
        assert [x.kind for x in ledger.step(ev, key).entries if x.kind == "settled"] == []
    ((key, ev),) = decoded([later])
    out = ledger.step(ev, key)
    settled = [(x.beneficiary_id, x.amount_cents) for x in out.entries if x.kind == "settled"]
    assert settled == [("C", 1000), ("B", 500), ("A", 200)]
    assert [x.kind for x in out.entries][:3] == ["settled", "settled", "settled"]
    assert all(x.entry_id.startswith("k1:") and x.ts_ms == at(120) for x in out.entries[:3])
