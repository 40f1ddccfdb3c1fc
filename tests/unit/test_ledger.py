"""The spec's rules, one small hand-built scenario per row, each with its exact outcome.

Every scenario runs under PROGRAM (below) unless the row overrides a [program] value:
    levels 3, self_purchase false, attribution window 3600 s, freeze 0 s, cap 3000 bps
    standard [1000, 500, 200]   silver [1200, 600, 300]   gold [1500, 700, 300]
so an order of 10000 cents pays 1000 / 500 / 200 to a standard chain (1700 ≤ cap 3000).
Times are seconds after T0 = 2026-11-11T00:00:00.000Z.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.events import Invalid, decode
from streams import names
from streams.engine import outcome, reference
from streams.engine.config import Program, parse
from streams.engine.ledger import Ledger, Outcome, State, User, seq_key

T0_MS = 1_794_355_200_000  # 2026-11-11T00:00:00.000Z
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

PROGRAM = """
[program]
levels = {levels}
self_purchase = {self_purchase}
attribution_window_seconds = {window}
freeze_seconds = {freeze}
max_total_bps = {cap}

[tiers.standard]
rates_bps = [1000, 500, 200]
[tiers.silver]
rates_bps = [1200, 600, 300]
[tiers.gold]
rates_bps = [1500, 700, 300]

[campaigns.one]
levels = 1
[campaigns.two]
levels = 2
[campaigns.self]
self_purchase = true
[campaigns.noself]
self_purchase = false
[campaigns.lowcap]
max_total_bps = 1000
[campaigns.cap2000]
max_total_bps = 2000
[campaigns.goldboost.tiers.gold]
rates_bps = [2000, 100, 100]
"""


def program(
    levels: int = 3, self_purchase: bool = False, window: int = 3600, freeze: int = 0, cap: int = 3000
) -> Program:
    sp = "true" if self_purchase else "false"
    return parse(PROGRAM.format(levels=levels, self_purchase=sp, window=window, freeze=freeze, cap=cap))


def at(sec: float) -> int:
    return T0_MS + round(sec * 1000)


def iso(sec: float) -> str:
    ms = at(sec)
    dt = _EPOCH + timedelta(milliseconds=ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# ---- record builders: {"topic", "key", "value"} as on the wire ---------------------------------------


def _rec(topic: str, key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"topic": topic, "key": key, "value": {k: v for k, v in value.items() if v is not None}}


def signup(
    t: float,
    user: str,
    ref: str | None = None,
    visitor: str | None = None,
    distributor: bool | None = None,
    eid: str | None = None,
) -> dict[str, Any]:
    return _rec(
        names.SIGNUPS,
        user,
        {
            "event_id": eid or f"s-{user}",
            "ts": iso(t),
            "user_id": user,
            "ref": ref,
            "visitor_id": visitor,
            "distributor": distributor,
        },
    )


def click(t: float, visitor: str, ref: str, eid: str | None = None) -> dict[str, Any]:
    return _rec(
        names.CLICKS, visitor, {"event_id": eid or f"c-{visitor}-{t}", "ts": iso(t), "visitor_id": visitor, "ref": ref}
    )


def tier(t: float, user: str, name: str, eid: str | None = None) -> dict[str, Any]:
    return _rec(names.TIERS, user, {"event_id": eid or f"t-{user}-{t}", "ts": iso(t), "user_id": user, "tier": name})


def _order(t: float, kind: str, oid: str, buyer: str, eid: str | None, **fields: Any) -> dict[str, Any]:
    value = {
        "event_id": eid or f"{oid}-{kind}",
        "ts": iso(t),
        "order_id": oid,
        "type": kind,
        "buyer_id": buyer,
        **fields,
    }
    return _rec(names.ORDERS, buyer, value)


def paid(
    t: float,
    oid: str,
    buyer: str,
    amount: int,
    campaign: str | None = None,
    ref: str | None = None,
    visitor: str | None = None,
    eid: str | None = None,
) -> dict[str, Any]:
    return _order(t, "paid", oid, buyer, eid, amount_cents=amount, campaign_id=campaign, ref=ref, visitor_id=visitor)


def refunded(t: float, oid: str, buyer: str, amount: int, eid: str | None = None) -> dict[str, Any]:
    return _order(t, "refunded", oid, buyer, eid, amount_cents=amount)


def completed(t: float, oid: str, buyer: str, eid: str | None = None) -> dict[str, Any]:
    return _order(t, "completed", oid, buyer, eid)


def cancelled(t: float, oid: str, buyer: str, eid: str | None = None) -> dict[str, Any]:
    return _order(t, "cancelled", oid, buyer, eid)


# A ← B ← C ← D: D's level 1 is C, level 2 B, level 3 A.
CHAIN = [signup(1, "A"), signup(2, "B", ref="A"), signup(3, "C", ref="B"), signup(4, "D", ref="C")]
CHAIN_BINDINGS = [("A", None, "signup"), ("B", "A", "signup"), ("C", "B", "signup"), ("D", "C", "signup")]
# D pays 10000 on a standard chain: C 1000, B 500, A 200
D_STANDARD = [("o1", 1, "C", "accrued", 1000), ("o1", 2, "B", "accrued", 500), ("o1", 3, "A", "accrued", 200)]

Entry = tuple[str, int, str, str, int]  # order, level, beneficiary, kind, amount
Bind = tuple[str, str | None, str]  # user, inviter, source


@dataclass
class Case:
    records: list[dict[str, Any]]
    entries: list[Entry]
    bindings: list[Bind]
    dead: list[tuple[str, str]] = field(default_factory=list)  # (event_id, reason)
    cfg: dict[str, Any] = field(default_factory=dict)
    now: float = 30 * 86400.0


def acc(oid: str, level: int, who: str, amount: int) -> Entry:
    return (oid, level, who, "accrued", amount)


def rev(oid: str, level: int, who: str, amount: int) -> Entry:
    return (oid, level, who, "reversed", amount)


def stl(oid: str, level: int, who: str, amount: int) -> Entry:
    return (oid, level, who, "settled", amount)


def claw(oid: str, level: int, who: str, amount: int) -> Entry:
    return (oid, level, who, "clawed_back", amount)


AB = [signup(1, "A"), signup(2, "B", ref="A")]
AB_BINDINGS: list[Bind] = [("A", None, "signup"), ("B", "A", "signup")]

CASES: dict[str, Case] = {
    # ---- signups and the referral tree ----------------------------------------------------------------
    "signup/ref-binds": Case(AB, [], AB_BINDINGS),
    "signup/no-ref-no-click": Case([signup(1, "A")], [], [("A", None, "signup")]),
    "signup/click-at-window-start-binds": Case(
        # window [3700 − 3600, 3700] = [100, 3700] includes the click at 100
        [signup(0, "A"), click(100, "v", "A"), signup(3700, "B", visitor="v")],
        [],
        [("A", None, "signup"), ("B", "A", "click")],
    ),
    "signup/click-1ms-before-window-does-not-bind": Case(
        [signup(0, "A"), click(100, "v", "A"), signup(3700.001, "B", visitor="v")],
        [],
        [("A", None, "signup"), ("B", None, "signup")],
    ),
    "signup/click-same-ts-binds": Case(
        # input has the signup first; clicks sort before signups at the same ts
        [signup(0, "A"), signup(50, "B", visitor="v"), click(50, "v", "A")],
        [],
        [("A", None, "signup"), ("B", "A", "click")],
    ),
    "signup/click-1ms-after-signup-ignored": Case(
        [signup(0, "A"), signup(50, "B", visitor="v"), click(50.001, "v", "A")],
        [],
        [("A", None, "signup"), ("B", None, "signup")],
    ),
    "signup/latest-click-wins": Case(
        [signup(0, "A"), signup(0.5, "Y"), click(10, "v", "Y"), click(20, "v", "A"), signup(30, "B", visitor="v")],
        [],
        [("A", None, "signup"), ("Y", None, "signup"), ("B", "A", "click")],
    ),
    "signup/latest-click-invalid-no-fallback-to-older": Case(
        # the latest click names a non-distributor; the older valid click is not used
        [
            signup(0, "A"),
            signup(1, "X", distributor=False),
            click(10, "v", "A"),
            click(20, "v", "X"),
            signup(30, "B", visitor="v"),
        ],
        [],
        [("A", None, "signup"), ("X", None, "signup"), ("B", None, "signup")],
    ),
    "signup/other-visitors-click-ignored": Case(
        [signup(0, "A"), click(10, "w", "A"), signup(20, "B", visitor="v")],
        [],
        [("A", None, "signup"), ("B", None, "signup")],
    ),
    "signup/ref-to-non-distributor": Case(
        [signup(1, "A", distributor=False), signup(2, "B", ref="A")],
        [],
        [("A", None, "signup"), ("B", None, "signup")],
    ),
    "signup/non-distributor-can-be-bound": Case(
        [signup(1, "A"), signup(2, "N", ref="A", distributor=False)],
        [],
        [("A", None, "signup"), ("N", "A", "signup")],
    ),
    "signup/ref-to-non-existent-user": Case([signup(2, "B", ref="Z")], [], [("B", None, "signup")]),
    "signup/ref-to-user-who-signs-up-later": Case(
        [signup(1, "B", ref="A"), signup(2, "A")], [], [("B", None, "signup"), ("A", None, "signup")]
    ),
    "signup/ref-to-user-signing-up-same-ts-later-event-id": Case(
        # same ts and topic: s-1 (B) is applied before s-2 (A), so A does not exist yet
        [signup(5, "A", eid="s-2"), signup(5, "B", ref="A", eid="s-1")],
        [],
        [("B", None, "signup"), ("A", None, "signup")],
    ),
    "signup/ref-to-user-signing-up-same-ts-earlier-event-id": Case(
        [signup(5, "B", ref="A", eid="s-2"), signup(5, "A", eid="s-1")],
        [],
        [("A", None, "signup"), ("B", "A", "signup")],
    ),
    "signup/invalid-ref-does-not-fall-back-to-click": Case(
        [signup(0, "A"), click(10, "v", "A"), signup(20, "B", ref="Z", visitor="v")],
        [],
        [("A", None, "signup"), ("B", None, "signup")],
    ),
    "signup/non-distributor-ref-does-not-fall-back-to-click": Case(
        [signup(0, "A"), signup(1, "N", distributor=False), click(10, "v", "A"), signup(20, "B", ref="N", visitor="v")],
        [],
        [("A", None, "signup"), ("N", None, "signup"), ("B", None, "signup")],
    ),
    "signup/self-ref": Case([signup(1, "B", ref="B")], [], [("B", None, "signup")]),
    "signup/duplicate-user": Case(
        [signup(1, "A"), signup(2, "B"), signup(3, "B", ref="A", eid="s-B-again")],
        [],
        [("A", None, "signup"), ("B", None, "signup")],
        dead=[("s-B-again", "duplicate_user")],
    ),
    "signup/redelivered-is-silent": Case([*AB, signup(2, "B", ref="A")], [], AB_BINDINGS),
    "signup/redelivered-duplicate-user-dead-letters-once": Case(
        [signup(1, "A"), signup(2, "A", eid="s-A2"), signup(2, "A", eid="s-A2")],
        [],
        [("A", None, "signup")],
        dead=[("s-A2", "duplicate_user")],
    ),
    # ---- order binding (锁客) -----------------------------------------------------------------------------
    "order/binds-buyer-without-inviter-by-ref": Case(
        [signup(1, "A"), signup(2, "B"), paid(10, "o1", "B", 10000, ref="A"), paid(20, "o2", "B", 5000)],
        [acc("o1", 1, "A", 1000), acc("o2", 1, "A", 500)],
        [("A", None, "signup"), ("B", None, "signup"), ("B", "A", "order")],
    ),
    "order/binds-by-click-in-window": Case(
        [signup(1, "A"), signup(2, "B"), click(5, "v", "A"), paid(3605, "o1", "B", 10000, visitor="v")],
        [acc("o1", 1, "A", 1000)],
        [("A", None, "signup"), ("B", None, "signup"), ("B", "A", "order")],
    ),
    "order/click-outside-window-no-binding": Case(
        [signup(1, "A"), signup(2, "B"), click(5, "v", "A"), paid(3605.001, "o1", "B", 10000, visitor="v")],
        [],
        [("A", None, "signup"), ("B", None, "signup")],
    ),
    "order/invalid-ref-does-not-fall-back-to-click": Case(
        [signup(1, "A"), signup(2, "B"), click(5, "v", "A"), paid(10, "o1", "B", 10000, ref="Z", visitor="v")],
        [],
        [("A", None, "signup"), ("B", None, "signup")],
    ),
    "order/bound-buyer-is-not-rebound": Case(
        [signup(1, "A"), signup(2, "Y"), signup(3, "B", ref="A"), paid(10, "o1", "B", 10000, ref="Y")],
        [acc("o1", 1, "A", 1000)],
        [("A", None, "signup"), ("Y", None, "signup"), ("B", "A", "signup")],
    ),
    "order/binds-after-inviter-signed-up-late": Case(
        [signup(1, "B", ref="A"), signup(2, "A"), paid(10, "o1", "B", 10000, ref="A")],
        [acc("o1", 1, "A", 1000)],
        [("B", None, "signup"), ("A", None, "signup"), ("B", "A", "order")],
    ),
    "order/cycle-refused": Case(
        # B's chain contains A, so A (no inviter) cannot be bound to B
        [*AB, paid(10, "o1", "A", 10000, ref="B")],
        [],
        AB_BINDINGS,
    ),
    "order/cycle-refused-deep": Case(
        [*CHAIN, paid(10, "o1", "A", 10000, ref="D")],
        [],
        CHAIN_BINDINGS,
    ),
    "order/self-ref-refused": Case([signup(1, "B"), paid(10, "o1", "B", 10000, ref="B")], [], [("B", None, "signup")]),
    "order/binding-then-self-purchase": Case(
        # binding happens at step 2, so the new inviter is level 2 of the same order
        [signup(1, "A"), signup(2, "B"), paid(10, "o1", "B", 10000, ref="A")],
        [acc("o1", 1, "B", 1000), acc("o1", 2, "A", 500)],
        [("A", None, "signup"), ("B", None, "signup"), ("B", "A", "order")],
        cfg={"self_purchase": True},
    ),
    # ---- guests (buyers who never signed up) ------------------------------------------------------------
    "guest/ref": Case([*CHAIN, paid(10, "o1", "G", 10000, ref="C")], D_STANDARD, CHAIN_BINDINGS),
    "guest/visitor-click": Case(
        [*CHAIN, click(5, "v", "C"), paid(10, "o1", "G", 10000, visitor="v")], D_STANDARD, CHAIN_BINDINGS
    ),
    "guest/click-outside-window": Case(
        [*CHAIN, click(5, "v", "C"), paid(3605.001, "o1", "G", 10000, visitor="v")], [], CHAIN_BINDINGS
    ),
    "guest/ref-to-non-distributor": Case(
        [signup(1, "A"), signup(2, "N", ref="A", distributor=False), paid(10, "o1", "G", 10000, ref="N")],
        [],
        [("A", None, "signup"), ("N", "A", "signup")],
    ),
    "guest/ref-to-unknown-user": Case([*CHAIN, paid(10, "o1", "G", 10000, ref="Z")], [], CHAIN_BINDINGS),
    "guest/no-ref": Case([*CHAIN, paid(10, "o1", "G", 10000)], [], CHAIN_BINDINGS),
    "guest/self-purchase-on-still-uses-ref": Case(
        [*CHAIN, paid(10, "o1", "G", 10000, ref="C")], D_STANDARD, CHAIN_BINDINGS, cfg={"self_purchase": True}
    ),
    # ---- self purchase (自购返佣) ----------------------------------------------------------------------
    "self/off": Case([*CHAIN, paid(10, "o1", "D", 10000)], D_STANDARD, CHAIN_BINDINGS),
    "self/on-distributor-is-level-1": Case(
        [*CHAIN, paid(10, "o1", "D", 10000)],
        [acc("o1", 1, "D", 1000), acc("o1", 2, "C", 500), acc("o1", 3, "B", 200)],
        CHAIN_BINDINGS,
        cfg={"self_purchase": True},
    ),
    "self/on-non-distributor-buyer-inviter-is-level-1": Case(
        [*CHAIN, signup(5, "N", ref="D", distributor=False), paid(10, "o1", "N", 10000)],
        [acc("o1", 1, "D", 1000), acc("o1", 2, "C", 500), acc("o1", 3, "B", 200)],
        [*CHAIN_BINDINGS, ("N", "D", "signup")],
        cfg={"self_purchase": True},
    ),
    "self/on-buyer-without-inviter": Case(
        [signup(1, "A"), paid(10, "o1", "A", 10000)],
        [acc("o1", 1, "A", 1000)],
        [("A", None, "signup")],
        cfg={"self_purchase": True},
    ),
    "self/campaign-turns-it-on": Case(
        [*CHAIN, paid(10, "o1", "D", 10000, campaign="self")],
        [acc("o1", 1, "D", 1000), acc("o1", 2, "C", 500), acc("o1", 3, "B", 200)],
        CHAIN_BINDINGS,
    ),
    "self/campaign-turns-it-off": Case(
        [*CHAIN, paid(10, "o1", "D", 10000, campaign="noself")],
        D_STANDARD,
        CHAIN_BINDINGS,
        cfg={"self_purchase": True},
    ),
    # ---- chain length ---------------------------------------------------------------------------------
    "levels/3-fourth-ancestor-gets-nothing": Case(
        [*CHAIN, signup(5, "E", ref="D"), paid(10, "o1", "E", 10000)],
        [acc("o1", 1, "D", 1000), acc("o1", 2, "C", 500), acc("o1", 3, "B", 200)],
        [*CHAIN_BINDINGS, ("E", "D", "signup")],
    ),
    "levels/2": Case(
        [*CHAIN, paid(10, "o1", "D", 10000)],
        [acc("o1", 1, "C", 1000), acc("o1", 2, "B", 500)],
        CHAIN_BINDINGS,
        cfg={"levels": 2},
    ),
    "levels/1": Case(
        [*CHAIN, paid(10, "o1", "D", 10000)], [acc("o1", 1, "C", 1000)], CHAIN_BINDINGS, cfg={"levels": 1}
    ),
    "levels/short-chain": Case([*AB, paid(10, "o1", "B", 10000)], [acc("o1", 1, "A", 1000)], AB_BINDINGS),
    "levels/buyer-without-inviter-pays-nobody": Case(
        [signup(1, "A"), paid(10, "o1", "A", 10000)], [], [("A", None, "signup")]
    ),
    # ---- tiers -----------------------------------------------------------------------------------------
    "tiers/gold-and-silver": Case(
        # C gold L1 1500, B silver L2 600, A standard L3 200: 2300 ≤ 3000
        [tier(0, "C", "gold"), tier(0, "B", "silver"), *CHAIN, paid(10, "o1", "D", 10000)],
        [acc("o1", 1, "C", 1500), acc("o1", 2, "B", 600), acc("o1", 3, "A", 200)],
        CHAIN_BINDINGS,
    ),
    "tiers/unknown-name-is-standard": Case(
        [tier(0, "C", "platinum"), *CHAIN, paid(10, "o1", "D", 10000)], D_STANDARD, CHAIN_BINDINGS
    ),
    "tiers/buyer-tier-irrelevant-without-self-purchase": Case(
        [tier(0, "D", "gold"), *CHAIN, paid(10, "o1", "D", 10000)], D_STANDARD, CHAIN_BINDINGS
    ),
    "tiers/set-after-order-does-not-affect-it": Case(
        # o1 locks C at standard; the refund recomputes with the locked 1000 bps (5000 left → 500): −500
        [
            *CHAIN,
            paid(10, "o1", "D", 10000),
            tier(11, "C", "gold"),
            refunded(12, "o1", "D", 5000),
            paid(13, "o2", "D", 10000),
        ],
        [
            *D_STANDARD,
            rev("o1", 1, "C", -500),
            rev("o1", 2, "B", -250),
            rev("o1", 3, "A", -100),
            acc("o2", 1, "C", 1500),
            acc("o2", 2, "B", 500),
            acc("o2", 3, "A", 200),
        ],
        CHAIN_BINDINGS,
    ),
    "tiers/set-before-signup-still-applies": Case(
        [tier(0, "C", "gold"), *CHAIN, paid(10, "o1", "D", 10000)],
        [acc("o1", 1, "C", 1500), acc("o1", 2, "B", 500), acc("o1", 3, "A", 200)],
        CHAIN_BINDINGS,
    ),
    "tiers/same-ts-as-order-applies": Case(
        [*CHAIN, paid(10, "o1", "D", 10000), tier(10, "C", "gold")],
        [acc("o1", 1, "C", 1500), acc("o1", 2, "B", 500), acc("o1", 3, "A", 200)],
        CHAIN_BINDINGS,
    ),
    "tiers/latest-wins": Case(
        [*CHAIN, tier(6, "C", "silver"), tier(5, "C", "gold"), paid(10, "o1", "D", 10000)],
        [acc("o1", 1, "C", 1200), acc("o1", 2, "B", 500), acc("o1", 3, "A", 200)],
        CHAIN_BINDINGS,
    ),
    "tiers/back-to-standard": Case(
        [*CHAIN, tier(5, "C", "gold"), tier(6, "C", "standard"), paid(10, "o1", "D", 10000)],
        D_STANDARD,
        CHAIN_BINDINGS,
    ),
    # ---- campaigns -------------------------------------------------------------------------------------
    "campaign/levels-1": Case(
        [*CHAIN, paid(10, "o1", "D", 10000, campaign="one")], [acc("o1", 1, "C", 1000)], CHAIN_BINDINGS
    ),
    "campaign/levels-2": Case(
        [*CHAIN, paid(10, "o1", "D", 10000, campaign="two")],
        [acc("o1", 1, "C", 1000), acc("o1", 2, "B", 500)],
        CHAIN_BINDINGS,
    ),
    "campaign/lower-cap": Case(
        # cap 10000 × 1000 / 10000 = 1000: C takes it all
        [*CHAIN, paid(10, "o1", "D", 10000, campaign="lowcap")],
        [acc("o1", 1, "C", 1000)],
        CHAIN_BINDINGS,
    ),
    "campaign/tier-rates-override": Case(
        # goldboost: gold = [2000, 100, 100]; A is standard (not overridden) → 200. 2300 ≤ 3000
        [tier(0, "C", "gold"), tier(0, "B", "gold"), *CHAIN, paid(10, "o1", "D", 10000, campaign="goldboost")],
        [acc("o1", 1, "C", 2000), acc("o1", 2, "B", 100), acc("o1", 3, "A", 200)],
        CHAIN_BINDINGS,
    ),
    "campaign/tier-override-leaves-standard-alone": Case(
        [*CHAIN, paid(10, "o1", "D", 10000, campaign="goldboost")], D_STANDARD, CHAIN_BINDINGS
    ),
    "campaign/unknown-id-uses-base-plan": Case(
        [*CHAIN, paid(10, "o1", "D", 10000, campaign="zzz")], D_STANDARD, CHAIN_BINDINGS
    ),
    "campaign/only-that-order": Case(
        [*CHAIN, paid(10, "o1", "D", 10000, campaign="one"), paid(11, "o2", "D", 10000)],
        [acc("o1", 1, "C", 1000), acc("o2", 1, "C", 1000), acc("o2", 2, "B", 500), acc("o2", 3, "A", 200)],
        CHAIN_BINDINGS,
    ),
    # ---- the cap ---------------------------------------------------------------------------------------
    "cap/bites-level-2": Case(
        # all gold, cap 2000: C 1500, B min(700, 500) = 500, A 0
        [tier(0, "A", "gold"), tier(0, "B", "gold"), tier(0, "C", "gold"), *CHAIN, paid(10, "o1", "D", 10000)],
        [acc("o1", 1, "C", 1500), acc("o1", 2, "B", 500)],
        CHAIN_BINDINGS,
        cfg={"cap": 2000},
    ),
    "cap/bites-level-2-by-campaign": Case(
        [
            tier(0, "A", "gold"),
            tier(0, "B", "gold"),
            tier(0, "C", "gold"),
            *CHAIN,
            paid(10, "o1", "D", 10000, campaign="cap2000"),
        ],
        [acc("o1", 1, "C", 1500), acc("o1", 2, "B", 500)],
        CHAIN_BINDINGS,
    ),
    "cap/bites-level-3": Case(
        # cap 1600: 1000 + 500, A min(200, 100) = 100
        [*CHAIN, paid(10, "o1", "D", 10000)],
        [acc("o1", 1, "C", 1000), acc("o1", 2, "B", 500), acc("o1", 3, "A", 100)],
        CHAIN_BINDINGS,
        cfg={"cap": 1600},
    ),
    "cap/zero": Case([*CHAIN, paid(10, "o1", "D", 10000)], [], CHAIN_BINDINGS, cfg={"cap": 0}),
    "cap/locked-for-refunds": Case(
        # cap 1600: 1000/500/100. Refund 5000 → 5000 left: 500, 250, cap 800 leaves 50 → A min(100, 50) = 50
        [*CHAIN, paid(10, "o1", "D", 10000), refunded(11, "o1", "D", 5000)],
        [
            acc("o1", 1, "C", 1000),
            acc("o1", 2, "B", 500),
            acc("o1", 3, "A", 100),
            rev("o1", 1, "C", -500),
            rev("o1", 2, "B", -250),
            rev("o1", 3, "A", -50),
        ],
        CHAIN_BINDINGS,
        cfg={"cap": 1600},
    ),
    "amount/zero-pays-nothing": Case([*CHAIN, paid(10, "o1", "D", 0)], [], CHAIN_BINDINGS),
    "amount/half-up": Case(
        # 5 cents: C 0.5 → 1, B 0.25 → 0, A 0.1 → 0; cap 5 × 3000 // 10000 = 1
        [*CHAIN, paid(10, "o1", "D", 5)],
        [acc("o1", 1, "C", 1)],
        CHAIN_BINDINGS,
    ),
    # ---- refunds ---------------------------------------------------------------------------------------
    "refund/partial-several": Case(
        # paid 10005: C 1000.5 → 1001, B 500.25 → 500, A 200.1 → 200
        # r1 5 → 10000 left: 1000/500/200 → C −1 only (no zero entries)
        # r2 3333 → 6667 left: 666.7 → 667, 333.35 → 333, 133.34 → 133 → −333, −167, −67
        # r3 6667 → 0 left: −667, −333, −133
        [
            *CHAIN,
            paid(10, "o1", "D", 10005),
            refunded(11, "o1", "D", 5, eid="r1"),
            refunded(12, "o1", "D", 3333, eid="r2"),
            refunded(13, "o1", "D", 6667, eid="r3"),
        ],
        [
            acc("o1", 1, "C", 1001),
            acc("o1", 2, "B", 500),
            acc("o1", 3, "A", 200),
            rev("o1", 1, "C", -1),
            rev("o1", 1, "C", -333),
            rev("o1", 2, "B", -167),
            rev("o1", 3, "A", -67),
            rev("o1", 1, "C", -667),
            rev("o1", 2, "B", -333),
            rev("o1", 3, "A", -133),
        ],
        CHAIN_BINDINGS,
    ),
    "refund/full": Case(
        [*CHAIN, paid(10, "o1", "D", 10000), refunded(11, "o1", "D", 10000)],
        [*D_STANDARD, rev("o1", 1, "C", -1000), rev("o1", 2, "B", -500), rev("o1", 3, "A", -200)],
        CHAIN_BINDINGS,
    ),
    "refund/zero-cents-moves-nothing": Case(
        [*CHAIN, paid(10, "o1", "D", 10000), refunded(11, "o1", "D", 0)], D_STANDARD, CHAIN_BINDINGS
    ),
    "refund/over-refund-changes-nothing": Case(
        # 6000 → 4000 left: 400/200/80 (−600, −300, −120); 4001 > 4000 refused; 4000 then empties it
        [
            *CHAIN,
            paid(10, "o1", "D", 10000),
            refunded(11, "o1", "D", 6000, eid="r1"),
            refunded(12, "o1", "D", 4001, eid="r2"),
            refunded(13, "o1", "D", 4000, eid="r3"),
        ],
        [
            *D_STANDARD,
            rev("o1", 1, "C", -600),
            rev("o1", 2, "B", -300),
            rev("o1", 3, "A", -120),
            rev("o1", 1, "C", -400),
            rev("o1", 2, "B", -200),
            rev("o1", 3, "A", -80),
        ],
        CHAIN_BINDINGS,
        dead=[("r2", "over_refund")],
    ),
    "refund/more-than-paid-at-once": Case(
        [*CHAIN, paid(10, "o1", "D", 10000), refunded(11, "o1", "D", 10001, eid="r1")],
        D_STANDARD,
        CHAIN_BINDINGS,
        dead=[("r1", "over_refund")],
    ),
    "refund/unknown-order": Case(
        [*CHAIN, refunded(10, "o9", "D", 100, eid="r1")], [], CHAIN_BINDINGS, dead=[("r1", "unknown_order")]
    ),
    "refund/before-paid-is-unknown-order": Case(
        [*CHAIN, refunded(9, "o1", "D", 100, eid="r1"), paid(10, "o1", "D", 10000)],
        D_STANDARD,
        CHAIN_BINDINGS,
        dead=[("r1", "unknown_order")],
    ),
    "refund/differences-literally-even-upward": Case(
        # cap 1500. paid 15: cap 2 (2.25), B 1.5 → 2, nothing left for A.
        # refund 1 → 14: cap 2 (2.1), B 1.4 → 1, A 0.7 → 1 (1 left). "emit the differences": B −1, A +1
        [
            signup(1, "A"),
            signup(2, "B", ref="A"),
            signup(3, "C", ref="B"),
            paid(10, "o1", "C", 15),
            refunded(11, "o1", "C", 1),
        ],
        [acc("o1", 1, "B", 2), rev("o1", 1, "B", -1), rev("o1", 2, "A", 1)],
        [("A", None, "signup"), ("B", "A", "signup"), ("C", "B", "signup")],
        cfg={"cap": 1500},
    ),
    # ---- order life: paid / cancelled / completed --------------------------------------------------
    "order/cancel-before-paid-then-paid": Case(
        # refused at step 1, so the paid's ref binds nobody either
        [signup(1, "A"), signup(2, "B"), cancelled(5, "o1", "B"), paid(10, "o1", "B", 10000, ref="A", eid="p1")],
        [],
        [("A", None, "signup"), ("B", None, "signup")],
        dead=[("p1", "order_cancelled")],
    ),
    "order/paid-twice-different-ids": Case(
        [*CHAIN, paid(10, "o1", "D", 10000, eid="p1"), paid(11, "o1", "D", 10000, eid="p2")],
        D_STANDARD,
        CHAIN_BINDINGS,
        dead=[("p2", "order_already_paid")],
    ),
    "order/paid-twice-same-id-silent": Case(
        [*CHAIN, paid(10, "o1", "D", 10000, eid="p1"), paid(10, "o1", "D", 10000, eid="p1")],
        D_STANDARD,
        CHAIN_BINDINGS,
    ),
    "order/cancel-after-paid-reverses-what-is-left": Case(
        # refund 3000 → 7000 left: −300, −150, −60; cancel refunds the 7000 left: −700, −350, −140
        [*CHAIN, paid(10, "o1", "D", 10000), refunded(11, "o1", "D", 3000), cancelled(12, "o1", "D")],
        [
            *D_STANDARD,
            rev("o1", 1, "C", -300),
            rev("o1", 2, "B", -150),
            rev("o1", 3, "A", -60),
            rev("o1", 1, "C", -700),
            rev("o1", 2, "B", -350),
            rev("o1", 3, "A", -140),
        ],
        CHAIN_BINDINGS,
    ),
    "order/cancel-after-completion-in-freeze": Case(
        [*CHAIN, paid(10, "o1", "D", 10000), completed(11, "o1", "D"), cancelled(12, "o1", "D", eid="x1")],
        D_STANDARD,
        CHAIN_BINDINGS,
        dead=[("x1", "cannot_cancel_completed")],
        cfg={"freeze": 86400},
        now=100,
    ),
    "order/cancel-after-completion-settled": Case(
        [*CHAIN, paid(10, "o1", "D", 10000), completed(11, "o1", "D"), cancelled(12, "o1", "D", eid="x1")],
        [*D_STANDARD, stl("o1", 1, "C", 1000), stl("o1", 2, "B", 500), stl("o1", 3, "A", 200)],
        CHAIN_BINDINGS,
        dead=[("x1", "cannot_cancel_completed")],
    ),
    "order/completed-twice": Case(
        [*CHAIN, paid(10, "o1", "D", 10000), completed(11, "o1", "D", eid="k1"), completed(12, "o1", "D", eid="k2")],
        [*D_STANDARD, stl("o1", 1, "C", 1000), stl("o1", 2, "B", 500), stl("o1", 3, "A", 200)],
        CHAIN_BINDINGS,
        dead=[("k2", "duplicate_completed")],
    ),
    "order/completed-unknown": Case(
        [*CHAIN, completed(10, "o9", "D", eid="k1")], [], CHAIN_BINDINGS, dead=[("k1", "unknown_order")]
    ),
    "order/completed-redelivered-silent": Case(
        [*CHAIN, paid(10, "o1", "D", 10000), completed(11, "o1", "D", eid="k1"), completed(11, "o1", "D", eid="k1")],
        [*D_STANDARD, stl("o1", 1, "C", 1000), stl("o1", 2, "B", 500), stl("o1", 3, "A", 200)],
        CHAIN_BINDINGS,
    ),
    # ---- settlement ----------------------------------------------------------------------------------
    "settle/freeze-0-at-completion": Case(
        [*CHAIN, paid(10, "o1", "D", 10000), completed(20, "o1", "D")],
        [*D_STANDARD, stl("o1", 1, "C", 1000), stl("o1", 2, "B", 500), stl("o1", 3, "A", 200)],
        CHAIN_BINDINGS,
        now=20,
    ),
    "settle/what-is-left-after-refunds": Case(
        # refund 2500 → 7500 left: 750/375/150 (−250, −125, −50); settles 750/375/150
        [*CHAIN, paid(10, "o1", "D", 10000), refunded(15, "o1", "D", 2500), completed(20, "o1", "D")],
        [
            *D_STANDARD,
            rev("o1", 1, "C", -250),
            rev("o1", 2, "B", -125),
            rev("o1", 3, "A", -50),
            stl("o1", 1, "C", 750),
            stl("o1", 2, "B", 375),
            stl("o1", 3, "A", 150),
        ],
        CHAIN_BINDINGS,
    ),
    "settle/fully-refunded-settles-nothing": Case(
        [*CHAIN, paid(10, "o1", "D", 10000), refunded(15, "o1", "D", 10000), completed(20, "o1", "D")],
        [*D_STANDARD, rev("o1", 1, "C", -1000), rev("o1", 2, "B", -500), rev("o1", 3, "A", -200)],
        CHAIN_BINDINGS,
    ),
    "settle/freeze-refund-before-is-reversed-at-moment-is-clawed-back": Case(
        # freeze 100 s: completed at 20 → settles at 120.
        # r1 at 119.999 (before): 9000 left → 900/450/180: reversed −100, −50, −20; then settled 900/450/180
        # r2 at 120 (at the moment, so settlement comes first): 8000 left → 800/400/160: clawed_back −100, −50, −20
        [
            *CHAIN,
            paid(10, "o1", "D", 10000),
            completed(20, "o1", "D"),
            refunded(119.999, "o1", "D", 1000, eid="r1"),
            refunded(120, "o1", "D", 1000, eid="r2"),
        ],
        [
            *D_STANDARD,
            rev("o1", 1, "C", -100),
            rev("o1", 2, "B", -50),
            rev("o1", 3, "A", -20),
            stl("o1", 1, "C", 900),
            stl("o1", 2, "B", 450),
            stl("o1", 3, "A", 180),
            claw("o1", 1, "C", -100),
            claw("o1", 2, "B", -50),
            claw("o1", 3, "A", -20),
        ],
        CHAIN_BINDINGS,
        cfg={"freeze": 100},
        now=1000,
    ),
    "settle/before-a-later-event-even-if-clock-is-earlier": Case(
        # the refund at 120 sees the order settled although the clock (now) is only at 120 too
        [*CHAIN, paid(10, "o1", "D", 10000), completed(20, "o1", "D"), refunded(120, "o1", "D", 10000)],
        [
            *D_STANDARD,
            stl("o1", 1, "C", 1000),
            stl("o1", 2, "B", 500),
            stl("o1", 3, "A", 200),
            claw("o1", 1, "C", -1000),
            claw("o1", 2, "B", -500),
            claw("o1", 3, "A", -200),
        ],
        CHAIN_BINDINGS,
        cfg={"freeze": 100},
        now=120,
    ),
    "settle/clock-before-moment-pending": Case(
        [*CHAIN, paid(10, "o1", "D", 10000), completed(20, "o1", "D")],
        D_STANDARD,
        CHAIN_BINDINGS,
        cfg={"freeze": 100},
        now=119.999,
    ),
    "settle/clock-past-moment": Case(
        [*CHAIN, paid(10, "o1", "D", 10000), completed(20, "o1", "D")],
        [*D_STANDARD, stl("o1", 1, "C", 1000), stl("o1", 2, "B", 500), stl("o1", 3, "A", 200)],
        CHAIN_BINDINGS,
        cfg={"freeze": 100},
        now=120.001,
    ),
    "settle/by-a-later-event-of-another-order": Case(
        # o2 at 500 is not o1's event, but the clock has long passed o1's moment: o1 settled, o2 pending
        [*CHAIN, paid(10, "o1", "D", 10000), completed(20, "o1", "D"), paid(500, "o2", "D", 100)],
        [
            *D_STANDARD,
            stl("o1", 1, "C", 1000),
            stl("o1", 2, "B", 500),
            stl("o1", 3, "A", 200),
            acc("o2", 1, "C", 10),
            acc("o2", 2, "B", 5),
            acc("o2", 3, "A", 2),
        ],
        CHAIN_BINDINGS,
        cfg={"freeze": 100},
        now=500,
    ),
    "settle/clawback-after-settlement": Case(
        [*CHAIN, paid(10, "o1", "D", 10000), completed(20, "o1", "D"), refunded(30, "o1", "D", 10000)],
        [
            *D_STANDARD,
            stl("o1", 1, "C", 1000),
            stl("o1", 2, "B", 500),
            stl("o1", 3, "A", 200),
            claw("o1", 1, "C", -1000),
            claw("o1", 2, "B", -500),
            claw("o1", 3, "A", -200),
        ],
        CHAIN_BINDINGS,
    ),
    # ---- spec order ------------------------------------------------------------------------------------
    "order/same-ts-tiers-clicks-signups-orders": Case(
        # all at 10, input in the reverse of spec order: the tier, click and signup all count for the order
        [
            signup(1, "A"),
            paid(10, "o1", "B", 10000),
            signup(10, "B", visitor="v"),
            click(10, "v", "A"),
            tier(10, "A", "gold"),
        ],
        [acc("o1", 1, "A", 1500)],
        [("A", None, "signup"), ("B", "A", "click")],
    ),
    "order/same-ts-event-id-refund-before-paid": Case(
        [*CHAIN, paid(10, "o1", "D", 10000, eid="e2"), refunded(10, "o1", "D", 100, eid="e1")],
        D_STANDARD,
        CHAIN_BINDINGS,
        dead=[("e1", "unknown_order")],
    ),
    "order/same-ts-event-id-paid-before-refund": Case(
        # e1 paid then e2 refund 100 → 9900 left: 990/495/198
        [*CHAIN, refunded(10, "o1", "D", 100, eid="e2"), paid(10, "o1", "D", 10000, eid="e1")],
        [*D_STANDARD, rev("o1", 1, "C", -10), rev("o1", 2, "B", -5), rev("o1", 3, "A", -2)],
        CHAIN_BINDINGS,
    ),
    "order/same-ts-duplicate-user-by-event-id": Case(
        # s-1 is applied first: B has no inviter; s-2 is the duplicate
        [signup(1, "A"), signup(5, "B", ref="A", eid="s-2"), signup(5, "B", eid="s-1")],
        [],
        [("A", None, "signup"), ("B", None, "signup")],
        dead=[("s-2", "duplicate_user")],
    ),
}


@dataclass
class Result:
    entries: list[Entry]
    bindings: list[Bind]
    dead: list[tuple[str, str]]
    run: reference.ReferenceRun


def run_case(records: list[dict[str, Any]], cfg: dict[str, Any], now: float) -> Result:
    run = reference.run(records, program(**cfg), at(now))
    entries: list[Any] = sorted(
        (e["order_id"], e["level"], e["beneficiary_id"], e["kind"], e["amount_cents"]) for e in run.entries
    )
    bindings: list[Any] = [(b["user_id"], b["inviter_id"], b["source"]) for b in run.bindings]
    dead: list[Any] = sorted((d["event_id"], d["reason"]) for d in run.dead_letters)
    return Result(entries, bindings, dead, run)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_rule(case: Case) -> None:
    got = run_case(case.records, case.cfg, case.now)
    assert got.entries == sorted(case.entries)
    assert got.bindings == case.bindings
    assert got.dead == sorted(case.dead)
    ids = [e["entry_id"] for e in got.run.entries]
    assert len(ids) == len(set(ids)), "entry ids must be unique"


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_rule_is_independent_of_line_order_and_redelivery(case: Case) -> None:
    """Reversed input, every record delivered twice: the same outcome and the same entry ids."""
    first = run_case(case.records, case.cfg, case.now)
    noisy = list(reversed(case.records)) + case.records
    random.Random(len(case.records)).shuffle(noisy)
    again = run_case(noisy, case.cfg, case.now)
    assert again.entries == first.entries
    assert again.bindings == first.bindings
    assert again.dead == first.dead
    assert sorted(e["entry_id"] for e in again.run.entries) == sorted(e["entry_id"] for e in first.run.entries)


# ---- entries: fields, ids, balances ----------------------------------------------------------------


def test_entry_fields() -> None:
    records = [*CHAIN, paid(10.5, "o1", "D", 10000, campaign="zzz", eid="p1")]
    run = reference.run(records, program(), at(100))
    by_level = {e["level"]: e for e in run.entries}
    assert sorted(by_level) == [1, 2, 3]
    one = by_level[1]
    assert one["source_event_id"] == "p1"
    assert one["ts"] == "2026-11-11T00:00:10.500Z"
    assert one["order_id"] == "o1"
    assert one["buyer_id"] == "D"
    assert one["beneficiary_id"] == "C"
    assert one["kind"] == "accrued"
    assert one["amount_cents"] == 1000
    assert one["campaign_id"] == "zzz"
    assert {e["campaign_id"] for e in run.entries} == {"zzz"}
    assert set(one) >= {
        "entry_id",
        "source_event_id",
        "ts",
        "order_id",
        "buyer_id",
        "beneficiary_id",
        "level",
        "kind",
        "amount_cents",
        "campaign_id",
    }


def test_binding_fields() -> None:
    run = reference.run([signup(1, "A"), signup(2.25, "B", ref="A")], program(), at(100))
    assert run.bindings[1] == {"user_id": "B", "inviter_id": "A", "ts": "2026-11-11T00:00:02.250Z", "source": "signup"}
    assert run.bindings[0]["inviter_id"] is None


def _lifecycle() -> list[dict[str, Any]]:
    return [
        *CHAIN,
        paid(10, "o1", "D", 10000),
        refunded(12, "o1", "D", 1000, eid="r1"),
        completed(20, "o1", "D"),
        refunded(200, "o1", "D", 1000, eid="r2"),
        paid(30, "o2", "D", 5000),
        refunded(40, "o2", "D", 1000, eid="r3"),
        cancelled(50, "o2", "D"),
    ]


def test_entry_ids_unique_and_deterministic() -> None:
    records = _lifecycle()
    first = reference.run(records, program(freeze=100), at(300))
    second = reference.run(records, program(freeze=100), at(300))
    ids = [e["entry_id"] for e in first.entries]
    assert len(ids) == len(set(ids)) == 21  # o1: 3 accrued, 3 reversed, 3 settled, 3 clawed back; o2: 3+3+3
    assert [e["entry_id"] for e in second.entries] == ids
    shuffled = list(records)
    random.Random(5).shuffle(shuffled)
    third = reference.run(shuffled, program(freeze=100), at(300))
    assert sorted(e["entry_id"] for e in third.entries) == sorted(ids)
    assert {e["entry_id"]: e for e in third.entries} == {e["entry_id"]: e for e in first.entries}


def test_settled_entry_id_same_whether_clock_or_event_settles() -> None:
    """A replay may settle by the clock or by a later event of the order: the settled entries must be the same."""
    base = [*CHAIN, paid(10, "o1", "D", 10000), completed(20, "o1", "D")]
    by_clock = reference.run(base, program(freeze=100), at(500))
    by_event = reference.run([*base, refunded(500, "o1", "D", 0)], program(freeze=100), at(500))
    settled = sorted((e["entry_id"], e["amount_cents"]) for e in by_clock.entries if e["kind"] == "settled")
    assert len(settled) == 3
    assert sorted((e["entry_id"], e["amount_cents"]) for e in by_event.entries if e["kind"] == "settled") == settled


# Balances: pending = Σaccrued + Σreversed − Σsettled; available = Σsettled + Σclawed_back.
# freeze 100 s. o1 10000: accrued 1000/500/200; r1 1000 at 12 → 9000: 900/450/180 (−100/−50/−20);
#   completed 20 → settled at 120: 900/450/180; r2 1000 at 200 → 8000: 800/400/160, clawed back −100/−50/−20.
# o2 5000: accrued 500/250/100; r3 1000 → 4000: 400/200/80 (−100/−50/−20); cancelled: −400/−200/−80.
# C: pending 1000 − 100 − 900 + 500 − 100 − 400 = 0;   available 900 − 100 = 800
# B: pending  500 −  50 − 450 + 250 −  50 − 200 = 0;   available 450 −  50 = 400
# A: pending  200 −  20 − 180 + 100 −  20 −  80 = 0;   available 180 −  20 = 160
LIFECYCLE_BALANCES = {
    "A": {"available_cents": 160, "pending_cents": 0},
    "B": {"available_cents": 400, "pending_cents": 0},
    "C": {"available_cents": 800, "pending_cents": 0},
}

# Same events with the clock at 100 s and without r2 (o1 still frozen):
# C: pending 1000 − 100 + 500 − 100 − 400 = 900; B: 500 − 50 + 250 − 50 − 200 = 450; A: 200 − 20 + 100 − 20 − 80 = 180
FROZEN_BALANCES = {
    "A": {"available_cents": 0, "pending_cents": 180},
    "B": {"available_cents": 0, "pending_cents": 450},
    "C": {"available_cents": 0, "pending_cents": 900},
}


def _balances_by_formula(entries: list[dict[str, object]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for e in entries:
        b = out.setdefault(str(e["beneficiary_id"]), {"available_cents": 0, "pending_cents": 0})
        amount = int(str(e["amount_cents"]))
        if e["kind"] in ("accrued", "reversed"):
            b["pending_cents"] += amount
        if e["kind"] == "settled":
            b["pending_cents"] -= amount
        if e["kind"] in ("settled", "clawed_back"):
            b["available_cents"] += amount
    return out


@pytest.mark.parametrize(
    ("drop", "now", "expected"),
    [(None, 300, LIFECYCLE_BALANCES), ("r2", 100, FROZEN_BALANCES)],
    ids=["settled-and-clawed", "still-frozen"],
)
def test_balances(drop: str | None, now: float, expected: dict[str, dict[str, int]]) -> None:
    records = [r for r in _lifecycle() if r["value"]["event_id"] != drop]
    run = reference.run(records, program(freeze=100), at(now))
    assert _balances_by_formula(run.entries) == expected
    assert outcome.summarize(run.entries, run.bindings, run.dead_letters)["balances"] == expected


def test_ledger_state_balances_follow_the_spec_formulas() -> None:
    ledger, _ = apply_in_order(_lifecycle(), program(freeze=100))
    ledger.settle_due(at(300))
    got = {who: (b.pending, b.available) for who, b in ledger.state.balance_deltas.items()}
    assert got == {"A": (0, 160), "B": (0, 400), "C": (0, 800)}


def test_summarize_counts_a_replayed_entry_once() -> None:
    run = reference.run([*CHAIN, paid(10, "o1", "D", 10000)], program(), at(100))
    once = outcome.summarize(run.entries, run.bindings, run.dead_letters)
    twice = outcome.summarize(run.entries + run.entries, run.bindings * 2, run.dead_letters)
    assert once == twice
    assert once["totals"] == {"accrued": 1700, "reversed": 0, "settled": 0, "clawed_back": 0}
    assert once["entries"] == {"o1|1|C|accrued": 1000, "o1|2|B|accrued": 500, "o1|3|A|accrued": 200}


# ---- the Ledger directly ------------------------------------------------------------------------------


def decoded(records: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    """(seq key, event) in spec order."""
    out = []
    for r in records:
        ev = decode(r["topic"], json.dumps(r["value"]).encode("utf-8"))
        assert not isinstance(ev, Invalid), ev
        out.append((seq_key(names.TOPIC_RANK[r["topic"]], ev), ev))
    out.sort(key=lambda t: t[0])
    return out


def apply_in_order(records: list[dict[str, Any]], prog: Program) -> tuple[Ledger, list[Outcome]]:
    ledger = Ledger(prog, State())
    outs = [ledger.apply(ev, key) for key, ev in decoded(records)]
    return ledger, outs


def _shape(out: Outcome) -> tuple[Any, ...]:
    return (
        [(e.entry_id, e.beneficiary_id, e.level, e.kind, e.amount_cents) for e in out.entries],
        [(b.user_id, b.inviter_id, b.source) for b in out.bindings],
        out.rejection,
    )


REDELIVERY_SCENARIO = [
    signup(1, "A"),
    signup(2, "B", ref="A"),
    signup(3, "C"),
    signup(3.5, "C", ref="A", eid="s-C-dup"),  # duplicate_user
    tier(4, "A", "gold"),
    click(5, "v", "B"),
    paid(6, "o1", "C", 10000, visitor="v"),  # binds C to B (order), pays B 1000, A gold 700
    paid(7, "o1", "C", 10000, eid="o1-paid-again"),  # order_already_paid
    refunded(8, "o1", "C", 2000),
    refunded(9, "o1", "C", 9000, eid="o1-over"),  # over_refund
    refunded(9.5, "o9", "C", 10, eid="o9-refund"),  # unknown_order
    cancelled(10, "o2", "C"),
    paid(11, "o2", "C", 500, eid="o2-paid"),  # order_cancelled
    completed(12, "o1", "C"),
    completed(13, "o1", "C", eid="o1-completed-again"),  # duplicate_completed
    click(14, "v", "A"),
    tier(15, "A", "silver"),
    refunded(200, "o1", "C", 1000, eid="o1-late-refund"),  # after settlement (freeze 100 s): clawed back
    cancelled(210, "o1", "C", eid="o1-cancel-late"),  # cannot_cancel_completed
]


def test_redelivery_at_any_point_changes_nothing() -> None:
    """After each event, every event seen so far is delivered again: nothing moves, nothing is dead-lettered."""
    prog = program(freeze=100)
    events = decoded(REDELIVERY_SCENARIO)
    _, clean = apply_in_order(REDELIVERY_SCENARIO, prog)
    rejections = sorted(o.rejection for o in clean if o.rejection)
    assert rejections == sorted(
        [
            "duplicate_user",
            "order_already_paid",
            "over_refund",
            "unknown_order",
            "order_cancelled",
            "duplicate_completed",
            "cannot_cancel_completed",
        ]
    )
    noisy = Ledger(prog, State())
    rng = random.Random(3)
    for i, (key, ev) in enumerate(events):
        assert _shape(noisy.apply(ev, key)) == _shape(clean[i]), ev.event_id
        earlier = events[: i + 1]
        for k2, ev2 in rng.sample(earlier, len(earlier)):
            again = noisy.apply(ev2, k2)
            assert again.entries == [] and again.bindings == [] and again.rejection is None, ev2.event_id
    # the state after all that still prices a new order exactly as the clean run would:
    # C's chain is B (standard) then A (silver, the latest tier): 10000 → 1000, 600
    probe_key, probe = decoded([paid(300, "o3", "C", 10000, visitor="v")])[0]
    out = noisy.apply(probe, probe_key)
    assert [(e.beneficiary_id, e.level, e.amount_cents) for e in out.entries] == [("B", 1, 1000), ("A", 2, 600)]
    assert out.bindings == []


def test_redelivery_scenario_exact_entries() -> None:
    """The scenario above, worked by hand (freeze 100 s; the clock at 300 s).

    o1 paid 10000 by C, bound to B by the click at 6: B standard L1 1000, A gold L2 700 (1700 ≤ 3000).
    refund 2000 → 8000: 800 / 560 → −200 / −140. completed at 12 → settles at 112: 800 / 560.
    late refund 1000 at 200 → 7000: 700 / 490 → clawed back −100 / −70.
    """
    run = reference.run(REDELIVERY_SCENARIO, program(freeze=100), at(300))
    got = sorted((e["order_id"], e["level"], e["beneficiary_id"], e["kind"], e["amount_cents"]) for e in run.entries)
    assert got == sorted(
        [
            acc("o1", 1, "B", 1000),
            acc("o1", 2, "A", 700),
            rev("o1", 1, "B", -200),
            rev("o1", 2, "A", -140),
            stl("o1", 1, "B", 800),
            stl("o1", 2, "A", 560),
            claw("o1", 1, "B", -100),
            claw("o1", 2, "A", -70),
        ]
    )
    assert [(b["user_id"], b["inviter_id"], b["source"]) for b in run.bindings] == [
        ("A", None, "signup"),
        ("B", "A", "signup"),
        ("C", None, "signup"),
        ("C", "B", "order"),
    ]


def _state_with(*users: tuple[str, bool, str | None]) -> State:
    state = State()
    for i, (uid, distributor, inviter) in enumerate(users):
        state.put_user(uid, User(signup_ms=at(i), distributor=distributor, inviter=inviter, signup_event_id=f"s-{uid}"))
    return state


@pytest.mark.parametrize(
    ("self_purchase", "expected"),
    [
        # D → C (not a distributor) → B → A. C gets nothing; B stays level 2 (500), A level 3 (200).
        (False, [("B", 2, 500), ("A", 3, 200)]),
        # self purchase: D level 1 (1000), C level 2 gets nothing, B level 3 (200); A is beyond level 3
        (True, [("D", 1, 1000), ("B", 3, 200)]),
    ],
    ids=["self-purchase-off", "self-purchase-on"],
)
def test_non_distributor_in_chain_gets_nothing_levels_not_shifted(self_purchase: bool, expected: list[Any]) -> None:
    """Rule 4. Bindings only ever name distributors, so this needs a hand-built tree (as a store could hold)."""
    state = _state_with(("A", True, None), ("B", True, "A"), ("C", False, "B"), ("D", True, "C"))
    ledger = Ledger(program(self_purchase=self_purchase), state)
    key, ev = decoded([paid(10, "o1", "D", 10000)])[0]
    out = ledger.apply(ev, key)
    assert [(e.beneficiary_id, e.level, e.amount_cents) for e in out.entries] == expected
    assert {e.kind for e in out.entries} == {"accrued"}


def test_refund_of_order_with_non_distributor_level_skips_it() -> None:
    state = _state_with(("A", True, None), ("B", True, "A"), ("C", False, "B"), ("D", True, "C"))
    ledger = Ledger(program(), state)
    (k1, ev1), (k2, ev2) = decoded([paid(10, "o1", "D", 10000), refunded(11, "o1", "D", 10000)])
    ledger.apply(ev1, k1)
    out = ledger.apply(ev2, k2)
    assert [(e.beneficiary_id, e.level, e.kind, e.amount_cents) for e in out.entries] == [
        ("B", 2, "reversed", -500),
        ("A", 3, "reversed", -200),
    ]
