"""Click-spam rate limiting (issue #6): which click binds a visitor under visitor and ip limits, hand-computed.

Distributors X, Y and Z sign up before anything else; then clicks arrive and user u signs up with visitor v
(or a guest orders with visitor v). Times are seconds after T0 = 2026-11-11T00:00:00.000Z, which is a
multiple of every window used here, so with a 60 s window [0, 60) is one window and [60, 120) the next.
Each row names the inviter u gets (None: no valid click bound v) and the limited click ids with their
reason, worked out by hand from the rule: a click binds unless, in its fixed window, the visitor already has
max_per_visitor binding clicks (reason visitor_rate) or its ip already has max_per_ip (ip_rate); only binding
clicks are counted; 0 turns a dimension off.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.events import Click, decode
from streams import names
from streams.engine import reference
from streams.engine.config import ClickLimits, ConfigError, Program, parse
from streams.engine.ledger import IP_RATE, VISITOR_RATE, Ledger, NotLoaded, State, seq_key
from streams.state.referral_store import BatchRequest

T0_MS = 1_794_355_200_000  # 2026-11-11T00:00:00.000Z = 29_905_920 minutes
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

BASE = """
[program]
attribution_window_seconds = 3600
freeze_seconds = 0
[tiers.standard]
rates_bps = [1000, 500, 200]
"""


def program(clicks: str | None) -> Program:
    """The base program; clicks=None leaves [clicks] out (the defaults), else it is the section's body."""
    return parse(BASE if clicks is None else BASE + "[clicks]\n" + clicks)


def iso(sec: float) -> str:
    ms = T0_MS + round(sec * 1000)
    return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def rec(topic: str, key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"topic": topic, "key": key, "value": {k: v for k, v in value.items() if v is not None}}


def click(t: float, ref: str, visitor: str = "v", ip: str | None = None, eid: str | None = None) -> dict[str, Any]:
    value = {"event_id": eid or f"c-{visitor}-{t}", "ts": iso(t), "visitor_id": visitor, "ref": ref, "ip": ip}
    return rec(names.CLICKS, visitor, value)


def signup(t: float, user: str, visitor: str | None = None) -> dict[str, Any]:
    return rec(names.SIGNUPS, user, {"event_id": f"s-{user}", "ts": iso(t), "user_id": user, "visitor_id": visitor})


def guest_paid(t: float, visitor: str) -> dict[str, Any]:
    value = {
        "event_id": "p-o1",
        "ts": iso(t),
        "order_id": "o1",
        "type": "paid",
        "buyer_id": "guest",
        "amount_cents": 10000,
        "visitor_id": visitor,
    }
    return rec(names.ORDERS, "guest", value)


SHARERS = [signup(-100, "X"), signup(-100, "Y"), signup(-100, "Z")]


@dataclass
class Case:
    """Clicks, then u signs up with `visitor` at `at`: u's inviter and the limited clicks (id, reason)."""

    clicks: list[dict[str, Any]]
    inviter: str | None
    limited: list[tuple[str, str]] = field(default_factory=list)
    cfg: str | None = "window_seconds = 60\nmax_per_visitor = 3\nmax_per_ip = 5\n"
    at: float = 200
    visitor: str = "v"


def repeat(n: int, ref: str, start: float = 1, visitor: str = "v", ip: str | None = None) -> list[dict[str, Any]]:
    """n clicks of one visitor on ref's link, one per second from start."""
    return [click(start + i, ref, visitor, ip) for i in range(n)]


def others_on_ip(n: int, ip: str, start: float = 1, step: float = 1, ref: str = "Z") -> list[dict[str, Any]]:
    """n clicks from n different visitors behind one ip (carrier NAT), `step` seconds apart from start."""
    return [click(round(start + i * step, 3), ref, f"nat{i}", ip) for i in range(n)]


CASES: dict[str, Case] = {
    # --- per visitor (limit 3 per 60 s window) ---
    "visitor/under-limit-latest-wins": Case([*repeat(2, "X"), click(3, "Y")], "Y"),
    "visitor/4th-click-in-window-ignored": Case([*repeat(3, "X"), click(4, "Y")], "X", [("c-v-4", VISITOR_RATE)]),
    "visitor/every-later-click-ignored": Case(
        [*repeat(3, "X"), click(4, "Y"), click(5, "Z"), click(59, "Y")],
        "X",
        [("c-v-4", VISITOR_RATE), ("c-v-5", VISITOR_RATE), ("c-v-59", VISITOR_RATE)],
    ),
    "visitor/limit-0-is-off": Case(
        [*repeat(3, "X"), click(4, "Y")], "Y", cfg="window_seconds = 60\nmax_per_visitor = 0\nmax_per_ip = 5\n"
    ),
    "visitor/limit-1": Case(
        [click(1, "X"), click(2, "Y")],
        "X",
        [("c-v-2", VISITOR_RATE)],
        cfg="window_seconds = 60\nmax_per_visitor = 1\nmax_per_ip = 0\n",
    ),
    "visitor/next-window-binds-again": Case([*repeat(3, "X"), click(61, "Y")], "Y"),
    "visitor/boundary-60.000-is-next-window": Case(
        [click(57, "X"), click(58, "X"), click(59.999, "X"), click(60, "Y")], "Y"
    ),
    "visitor/boundary-59.999-is-same-window": Case(
        [click(57, "X"), click(58, "X"), click(59, "X"), click(59.999, "Y")], "X", [("c-v-59.999", VISITOR_RATE)]
    ),
    "visitor/window-is-fixed-not-sliding": Case(
        # 3 clicks in [50, 60) and 3 in [60, 70): 6 clicks within 20 s, none limited (a sliding window would)
        [*repeat(3, "X", start=50), click(60, "X"), click(61, "X"), click(62, "Y")],
        "Y",
    ),
    "visitor/limited-in-one-window-then-next-window": Case(
        [*repeat(3, "X"), click(4, "Y"), click(70, "Z")], "Z", [("c-v-4", VISITOR_RATE)]
    ),
    "visitor/other-visitors-unaffected": Case(
        [*repeat(3, "X", visitor="spam"), click(4, "Y", "spam"), click(5, "Y")], "Y", [("c-spam-4", VISITOR_RATE)]
    ),
    "visitor/window-120s": Case(
        [*repeat(3, "X"), click(100, "Y")],
        "X",
        [("c-v-100", VISITOR_RATE)],
        cfg="window_seconds = 120\nmax_per_visitor = 3\nmax_per_ip = 5\n",
    ),
    "visitor/signup-inside-the-flood": Case(
        # the signup at 3.5 sees the latest binding click before it (Y at 3); the flood after it is irrelevant
        [click(1, "X"), click(2, "X"), click(3, "Y"), click(4, "Z")],
        "Y",
        [("c-v-4", VISITOR_RATE)],
        at=3.5,
    ),
    # --- per ip (limit 5 per 60 s window) ---
    "ip/6th-binding-click-of-ip-ignored": Case(
        [*others_on_ip(5, "1.1.1.1"), click(10, "Y", ip="1.1.1.1")], None, [("c-v-10", IP_RATE)]
    ),
    "ip/falls-back-to-earlier-click": Case(
        [click(0.5, "X", ip="2.2.2.2"), *others_on_ip(5, "1.1.1.1"), click(10, "Y", ip="1.1.1.1")],
        "X",
        [("c-v-10", IP_RATE)],
    ),
    "ip/5th-still-binds": Case([*others_on_ip(4, "1.1.1.1"), click(10, "Y", ip="1.1.1.1")], "Y"),
    "ip/other-ip-unaffected": Case([*others_on_ip(5, "1.1.1.1"), click(10, "Y", ip="2.2.2.2")], "Y"),
    "ip/no-ip-only-visitor-limit": Case([*others_on_ip(5, "1.1.1.1"), click(10, "Y")], "Y"),
    "ip/empty-ip-is-no-ip": Case([*others_on_ip(5, ""), click(10, "Y", ip="")], "Y"),
    "ip/limit-0-is-off": Case(
        [*others_on_ip(5, "1.1.1.1"), click(10, "Y", ip="1.1.1.1")],
        "Y",
        cfg="window_seconds = 60\nmax_per_visitor = 3\nmax_per_ip = 0\n",
    ),
    "ip/next-window-binds-again": Case([*others_on_ip(5, "1.1.1.1"), click(60, "Y", ip="1.1.1.1")], "Y"),
    "ip/ipv6-with-colons": Case(
        [*others_on_ip(5, "2001:db8::1"), click(10, "Y", ip="2001:db8::1")], None, [("c-v-10", IP_RATE)]
    ),
    "ip/limited-clicks-do-not-count": Case(
        # nat0's 2nd..4th clicks are over its visitor limit of 1, so they do not use up the ip's 2
        [
            click(1, "X", "nat0", "1.1.1.1"),
            *repeat(3, "X", start=2, visitor="nat0", ip="1.1.1.1"),
            click(9, "Y", ip="1.1.1.1"),
        ],
        "Y",
        [("c-nat0-2", VISITOR_RATE), ("c-nat0-3", VISITOR_RATE), ("c-nat0-4", VISITOR_RATE)],
        cfg="window_seconds = 60\nmax_per_visitor = 1\nmax_per_ip = 2\n",
    ),
    "ip/ip-limited-clicks-do-not-count-for-the-visitor": Case(
        # v's first click is over the ip limit (not counted), so v still has both of its binding clicks
        [
            *others_on_ip(2, "1.1.1.1"),
            click(5, "X", ip="1.1.1.1"),
            click(6, "Y", ip="9.9.9.9"),
            click(7, "Z", ip="9.9.9.9"),
        ],
        "Z",
        [("c-v-5", IP_RATE)],
        cfg="window_seconds = 60\nmax_per_visitor = 2\nmax_per_ip = 2\n",
    ),
    "ip/both-at-limit-reason-is-visitor": Case(
        [*others_on_ip(2, "1.1.1.1"), click(5, "X", ip="8.8.8.8"), click(6, "Y", ip="1.1.1.1")],
        "X",
        [("c-v-6", VISITOR_RATE)],
        cfg="window_seconds = 60\nmax_per_visitor = 1\nmax_per_ip = 2\n",
    ),
    # --- redelivery and ordering ---
    "redelivery/not-counted-twice": Case(
        # c1 delivered 4 times is one click: X, X, Y are 3 binding clicks and Y is the latest
        [click(1, "X", eid="c1"), click(1, "X", eid="c1"), click(1, "X", eid="c1"), click(2, "X"), click(3, "Y")],
        "Y",
    ),
    "redelivery/limited-reported-once": Case(
        [*repeat(3, "X"), click(4, "Y", eid="L"), click(4, "Y", eid="L"), click(4, "Y", eid="L")],
        "X",
        [("L", VISITOR_RATE)],
    ),
    "order/same-second-clicks-by-event-id": Case(
        # at one ts the spec's order is by event_id: a, b, c bind; d is the 4th
        [click(5, "Y", eid="d"), click(5, "X", eid="c"), click(5, "X", eid="b"), click(5, "X", eid="a")],
        "X",
        [("d", VISITOR_RATE)],
    ),
    "order/lines-out-of-order": Case(
        # produced newest first: still decided in event-time order, so Y (4th at 4 s) is the limited one
        [click(4, "Y"), click(3, "X"), click(2, "X"), click(1, "X")],
        "X",
        [("c-v-4", VISITOR_RATE)],
    ),
    # --- defaults: [clicks] absent means 60 s, 10 per visitor, 300 per ip ---
    "defaults/10th-click-binds": Case([*repeat(9, "X"), click(10, "Y")], "Y", cfg=None),
    "defaults/11th-click-ignored": Case([*repeat(10, "X"), click(11, "Y")], "X", [("c-v-11", VISITOR_RATE)], cfg=None),
    "defaults/300-per-ip": Case(
        [*others_on_ip(300, "10.0.0.1", start=0.001, step=0.1), click(50, "Y", ip="10.0.0.1")],
        None,
        [("c-v-50", IP_RATE)],
        cfg=None,
    ),
    "defaults/299-per-ip-then-binds": Case(
        [*others_on_ip(299, "10.0.0.1", start=0.001, step=0.1), click(50, "Y", ip="10.0.0.1")], "Y", cfg=None
    ),
}


def outcome(records: list[dict[str, Any]], cfg: str | None) -> tuple[str | None, list[tuple[str, str]]]:
    """u's inviter and the limited (event id, reason) pairs of a reference run."""
    run = reference.run(records, program(cfg), T0_MS + 10**9)
    inviter = {b["user_id"]: b["inviter_id"] for b in run.bindings}.get("u")
    limited = sorted((str(c["event_id"]), str(c["reason"])) for c in run.limited_clicks)
    return inviter, limited


def scenario(case: Case) -> list[dict[str, Any]]:
    return [*SHARERS, *case.clicks, signup(case.at, "u", case.visitor)]


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_which_click_binds(case: Case) -> None:
    inviter, limited = outcome(scenario(case), case.cfg)
    assert inviter == case.inviter
    assert limited == sorted(case.limited)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_line_order_and_redelivery_change_nothing(case: Case) -> None:
    """Shuffled input with every record delivered twice: the same binding and the same limited clicks, once each."""
    records = scenario(case)
    noisy = records + list(reversed(records))
    random.Random(len(records)).shuffle(noisy)
    assert outcome(noisy, case.cfg) == (case.inviter, sorted(case.limited))


@pytest.mark.parametrize(
    ("cfg", "beneficiary"),
    [("window_seconds = 60\nmax_per_visitor = 3\n", "X"), ("window_seconds = 60\nmax_per_visitor = 0\n", "Y")],
    ids=["limited-click-pays-nobody", "limit-off-the-flood-wins"],
)
def test_guest_order_is_attributed_to_the_last_binding_click(cfg: str, beneficiary: str) -> None:
    records = [*SHARERS, *repeat(3, "X"), click(4, "Y"), guest_paid(30, "v")]
    run = reference.run(records, program(cfg), T0_MS + 10**9)
    assert [(e["beneficiary_id"], e["level"], e["amount_cents"]) for e in run.entries] == [(beneficiary, 1, 1000)]


def test_limited_click_record() -> None:
    records = [
        *SHARERS,
        *repeat(3, "X"),
        rec(
            names.CLICKS,
            "v",
            {
                "event_id": "spam-4",
                "ts": iso(4.25),
                "visitor_id": "v",
                "ref": "Y",
                "campaign_id": "d11",
                "product_id": "p1",
                "ip": "1.2.3.4",
                "user_agent": "curl",
            },
        ),
    ]
    run = reference.run(records, program("max_per_visitor = 3\n"), T0_MS + 10**9)
    assert run.limited_clicks == [
        {
            "event_id": "spam-4",
            "visitor_id": "v",
            "ip": "1.2.3.4",
            "ref": "Y",
            "campaign_id": "d11",
            "ts": "2026-11-11T00:00:04.250Z",
            "reason": "visitor_rate",
        }
    ]
    assert run.dead_letters == [], "a limited click is valid input, not a dead letter"
    assert run.entries == []


def _click_event(t: float, ip: str | None, visitor: str = "v") -> Click:
    value = {"event_id": f"e{t}", "ts": iso(t), "visitor_id": visitor, "ref": "X", "ip": ip}
    ev = decode(names.CLICKS, json.dumps({k: v for k, v in value.items() if v is not None}))
    assert isinstance(ev, Click), ev
    return ev


def test_batch_request_loads_the_ip_windows_the_rule_reads() -> None:
    events = [_click_event(1, "1.1.1.1"), _click_event(61, "1.1.1.1"), _click_event(2, None), _click_event(3, "")]
    minute = T0_MS // 60_000
    req = BatchRequest.for_events(events, ClickLimits(60_000, 10, 300))
    assert req.ip_windows == {(minute, "1.1.1.1"), (minute + 1, "1.1.1.1")}
    assert req.visitors == {"v"}
    assert BatchRequest.for_events(events, ClickLimits(60_000, 10, 0)).ip_windows == set()
    assert BatchRequest.for_events(events).ip_windows == set()


def test_ip_count_outside_the_loaded_slice_is_a_store_bug() -> None:
    """On a partial state (as loaded from Redis) an unloaded per-ip count raises instead of reading as 0."""
    state = State(complete=False)
    state.clicks["v"] = None
    ev = _click_event(1, "1.1.1.1")
    ledger = Ledger(program("max_per_ip = 2\n"), state)
    with pytest.raises(NotLoaded):
        ledger.apply(ev, seq_key(names.TOPIC_RANK[names.CLICKS], ev))
    state.ip_clicks[(T0_MS // 60_000, "1.1.1.1")] = 2
    out = ledger.apply(ev, seq_key(names.TOPIC_RANK[names.CLICKS], ev))
    assert out.limited is not None and out.limited.reason == IP_RATE
    assert state.dirty_clicks == set() and state.dirty_ip_clicks == set(), "a limited click writes no state"


def test_counts_carry_across_batches_through_the_stored_state() -> None:
    """Batches see only what the previous one stored: the visitor's window count and the ip count carry over."""
    limits = "window_seconds = 60\nmax_per_visitor = 2\nmax_per_ip = 3\n"
    stored_clicks: dict[str, Any] = {}
    stored_ips: dict[tuple[int, str], int] = {}
    limited = []
    batches = [
        [_click_event(1, "1.1.1.1")],
        [_click_event(2, "1.1.1.1"), _click_event(3, "1.1.1.1", "w")],
        [_click_event(4, "1.1.1.1", "w2"), _click_event(5, "2.2.2.2")],
    ]
    for batch in batches:
        state = State(complete=False)
        req = BatchRequest.for_events(batch, program(limits).clicks)
        for v in req.visitors:
            state.clicks[v] = stored_clicks.get(v)
        for k in req.ip_windows:
            state.ip_clicks[k] = stored_ips.get(k, 0)
        ledger = Ledger(program(limits), state)
        for ev in batch:
            out = ledger.apply(ev, seq_key(names.TOPIC_RANK[names.CLICKS], ev))
            if out.limited is not None:
                limited.append((out.limited.event_id, out.limited.reason))
        stored_clicks.update({v: state.clicks[v] for v in state.dirty_clicks})
        stored_ips.update({k: state.ip_clicks[k] for k in state.dirty_ip_clicks})
    # v: e1, e2 bind (2 = limit); e5 is v's 3rd -> visitor_rate. ip 1.1.1.1: e1, e2, e3 bind (3 = limit); e4 -> ip_rate
    assert limited == [("e4", IP_RATE), ("e5", VISITOR_RATE)]
    assert stored_ips == {(T0_MS // 60_000, "1.1.1.1"): 3}
    assert stored_clicks["v"].count == 2 and stored_clicks["v"].window == T0_MS // 60_000


# ---- config ---------------------------------------------------------------------------------------------------------


def test_defaults_when_the_section_is_absent() -> None:
    assert program(None).clicks == ClickLimits(window_ms=60_000, max_per_visitor=10, max_per_ip=300)


def test_section_values_resolve() -> None:
    got = program("window_seconds = 300\nmax_per_visitor = 0\nmax_per_ip = 1000\n").clicks
    assert got == ClickLimits(window_ms=300_000, max_per_visitor=0, max_per_ip=1000)


def test_partial_section_keeps_other_defaults() -> None:
    assert program("max_per_ip = 0\n").clicks == ClickLimits(window_ms=60_000, max_per_visitor=10, max_per_ip=0)


@pytest.mark.parametrize(
    ("body", "must_mention"),
    [
        ("max_per_visitor = -1\n", ["clicks.max_per_visitor", "greater than or equal to 0"]),
        ("max_per_ip = -5\n", ["clicks.max_per_ip", "greater than or equal to 0"]),
        ("window_seconds = 0\n", ["clicks.window_seconds", "greater than or equal to 1"]),
        ("window_seconds = 86401\n", ["clicks.window_seconds", "less than or equal to 86400"]),
        ("max_per_visitor = 2.5\n", ["clicks.max_per_visitor", "integer"]),
        ('max_per_ip = "300"\n', ["clicks.max_per_ip", "integer"]),
        ("max_per_visitor = true\n", ["clicks.max_per_visitor", "integer"]),
        ("max_per_user = 3\n", ["clicks.max_per_user", "unknown key"]),
    ],
    ids=[
        "visitor-negative",
        "ip-negative",
        "window-0",
        "window-over-a-day",
        "visitor-float",
        "ip-string",
        "visitor-bool",
        "unknown-key",
    ],
)
def test_bad_clicks_section_is_refused_naming_the_key(body: str, must_mention: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        program(body)
    for text in must_mention:
        assert text in str(info.value), str(info.value)


def test_clicks_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match="clicks"):
        parse("clicks = 10\n" + BASE)
