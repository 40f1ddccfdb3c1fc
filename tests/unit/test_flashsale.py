"""The flash-sale generator: deterministic, in the spec's apply order, and shaped like a real 双11 sale."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streams.ops import flashsale

START = datetime(2026, 11, 11, tzinfo=UTC)

# The contract's input table (shared/spec/README.md), written out here rather than taken from the generator.
ORDER_OF_TOPIC = {"fenxiao.tiers": 0, "fenxiao.clicks": 1, "fenxiao.signups": 2, "fenxiao.orders": 3}
KEY_FIELD = {
    "fenxiao.clicks": "visitor_id",
    "fenxiao.signups": "user_id",
    "fenxiao.orders": "buyer_id",
    "fenxiao.tiers": "user_id",
}
REQUIRED: dict[str, dict[str, type]] = {
    "fenxiao.clicks": {"visitor_id": str, "ref": str},
    "fenxiao.signups": {"user_id": str},
    "fenxiao.orders": {"order_id": str, "type": str, "buyer_id": str},
    "fenxiao.tiers": {"user_id": str, "tier": str},
}
OPTIONAL: dict[str, dict[str, type]] = {
    "fenxiao.clicks": {"campaign_id": str, "product_id": str, "ip": str, "user_agent": str},
    "fenxiao.signups": {"ref": str, "visitor_id": str, "distributor": bool},
    "fenxiao.orders": {"amount_cents": int, "campaign_id": str, "ref": str, "visitor_id": str},
    "fenxiao.tiers": {},
}
ID_FIELDS = {"event_id", "visitor_id", "ref", "user_id", "order_id", "buyer_id", "campaign_id", "product_id"}
ORDER_TYPES = {"paid", "refunded", "completed", "cancelled"}
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def ts_ms(ts: str) -> int:
    """Epoch ms of a contract timestamp."""
    return int(datetime.fromisoformat(ts).timestamp() * 1000)


def sale(users: int = 400, orders: int = 4000, seed: int = 42, **shape: Any) -> list[dict[str, Any]]:
    """A small sale, all in memory."""
    return list(flashsale.generate(users, orders, seed, START, 1800, shape=flashsale.Shape(**shape)))


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    """One sale shared by the read-only tests of this module."""
    return sale()


def by_order(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Order events grouped per order_id, in output order."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["topic"] == "fenxiao.orders":
            out[r["value"]["order_id"]].append(r["value"])
    return out


def test_same_seed_same_records_other_seed_other_records() -> None:
    assert sale(seed=7) == sale(seed=7)
    assert sale(seed=7) != sale(seed=8)


def test_records_come_in_the_specs_apply_order(records: list[dict[str, Any]]) -> None:
    keys = [(ts_ms(r["value"]["ts"]), ORDER_OF_TOPIC[r["topic"]], r["value"]["event_id"]) for r in records]
    assert keys == sorted(keys)


def test_every_value_has_exactly_the_spec_fields_with_the_right_types(records: list[dict[str, Any]]) -> None:
    assert {r["topic"] for r in records} == set(ORDER_OF_TOPIC)
    for r in records:
        topic, v = r["topic"], r["value"]
        assert set(r) == {"topic", "key", "value"}
        assert r["key"] == v[KEY_FIELD[topic]], r
        assert isinstance(v["event_id"], str) and isinstance(v["ts"], str) and TS_RE.match(v["ts"]), r
        for name, typ in REQUIRED[topic].items():
            assert type(v.get(name)) is typ, (name, r)
        allowed = {"event_id", "ts", *REQUIRED[topic], *OPTIONAL[topic]}
        assert set(v) <= allowed, r
        for name, typ in OPTIONAL[topic].items():
            if name in v:
                assert type(v[name]) is typ, (name, r)
        for name in ID_FIELDS & set(v):
            assert 0 < len(v[name]) <= 128, (name, r)
        if topic == "fenxiao.orders":
            assert v["type"] in ORDER_TYPES
            if v["type"] in ("paid", "refunded"):
                assert type(v["amount_cents"]) is int and 0 <= v["amount_cents"] <= 10**12, r


def test_event_ids_are_unique(records: list[dict[str, Any]]) -> None:
    ids = Counter(r["value"]["event_id"] for r in records)
    assert ids.most_common(1)[0][1] == 1


def test_order_lifecycles_are_consistent(records: list[dict[str, Any]]) -> None:
    orders = by_order(records)
    assert len(orders) == 4000
    over = 0
    for events in orders.values():
        times = [ts_ms(e["ts"]) for e in events]
        assert times == sorted(set(times)), events  # strictly after each other
        assert len({e["buyer_id"] for e in events}) == 1
        types = [e["type"] for e in events]
        assert types[0] in ("paid", "cancelled"), events
        if types[0] == "cancelled":
            assert types[1:] in ([], ["paid"]), events  # at most a payment racing the cancel
            continue
        assert types.count("paid") == 1 and types.count("completed") <= 1
        assert not ("completed" in types and "cancelled" in types), events
        if "cancelled" in types:
            assert types[-1] == "cancelled"
        paid = events[0]["amount_cents"]
        refunded = sum(e["amount_cents"] for e in events if e["type"] == "refunded")
        over += refunded > paid
    assert over <= len(orders) * 0.01


def test_over_refunds_are_a_configurable_fraction() -> None:
    def over_refunded(share: float) -> int:
        n = 0
        for events in by_order(sale(users=100, orders=3000, over_refund_share=share)).values():
            paid = sum(e["amount_cents"] for e in events if e["type"] == "paid")
            n += sum(e["amount_cents"] for e in events if e["type"] == "refunded") > paid
        return n

    assert over_refunded(0.0) == 0
    assert 90 <= over_refunded(0.05) <= 210  # 5% of 3000, give or take


def test_the_mix_has_every_kind_of_event(records: list[dict[str, Any]]) -> None:
    values = [r["value"] for r in records]
    orders = [v for v in values if "order_id" in v]
    paid = [v for v in orders if v["type"] == "paid"]
    signups = [v for v in values if "user_id" in v and "tier" not in v]
    assert sum(v["buyer_id"].startswith("g") for v in paid) > 0.05 * len(paid)  # guests
    assert sum(v.get("campaign_id") == "d11" for v in paid) > 0.4 * len(paid)
    assert any("visitor_id" in v for v in paid) and any("ref" in v for v in paid)
    assert any("ref" in v for v in signups) and any("visitor_id" in v and "ref" not in v for v in signups)
    assert any(v.get("distributor") is False for v in signups)
    assert {v["tier"] for v in values if "tier" in v} == {"silver", "gold"}
    completed = {v["order_id"] for v in orders if v["type"] == "completed"}
    assert len(completed) > 0.7 * len(paid)  # most paid orders complete
    per_order = by_order(records)
    kinds: Counter[str] = Counter()
    for events in per_order.values():
        types = [e["type"] for e in events]
        paid_amount = events[0].get("amount_cents", 0) if types[0] == "paid" else 0
        refunds = [e["amount_cents"] for e in events if e["type"] == "refunded"]
        kinds["cancelled_unpaid"] += types[0] == "cancelled"
        kinds["cancelled_paid"] += types[0] == "paid" and "cancelled" in types
        kinds["full_refund"] += bool(refunds) and sum(refunds) == paid_amount
        kinds["partial_refund"] += bool(refunds) and sum(refunds) < paid_amount
        kinds["refund_after_completion"] += "completed" in types and types[-1] == "refunded"
    assert all(kinds[k] > 10 for k in kinds), kinds


def test_people_exist_before_they_are_referred_to(records: list[dict[str, Any]]) -> None:
    signed_up: dict[str, tuple[int, bool]] = {}
    guests: set[str] = set()
    clicks: dict[str, int] = {}
    for r in records:
        v, t = r["value"], ts_ms(r["value"]["ts"])
        if r["topic"] == "fenxiao.signups":
            assert v["user_id"] not in signed_up and v["user_id"] not in guests
            if "ref" in v:
                assert v["ref"] in signed_up and signed_up[v["ref"]][1], v  # an earlier distributor
            if "visitor_id" in v and v["visitor_id"] in clicks:
                assert clicks[v["visitor_id"]] < t
            signed_up[v["user_id"]] = (t, v.get("distributor", True))
        elif r["topic"] == "fenxiao.clicks":
            assert v["ref"] in signed_up and signed_up[v["ref"]][0] < t, v
            clicks[v["visitor_id"]] = t
        elif r["topic"] == "fenxiao.orders":
            buyer = v["buyer_id"]
            if buyer.startswith("u"):
                assert buyer in signed_up and signed_up[buyer][0] < t, v
            else:
                guests.add(buyer)
            if "ref" in v:
                assert v["ref"] in signed_up and v["ref"] != buyer
            if "visitor_id" in v:
                assert clicks[v["visitor_id"]] < t
        elif r["topic"] == "fenxiao.tiers":
            assert signed_up[v["user_id"]][0] < t
    assert guests and not guests & set(signed_up)


def test_teams_are_heavy_tailed() -> None:
    recruits: Counter[str] = Counter()
    latest_click: dict[str, str] = {}
    distributors = 0
    for r in flashsale.generate(20_000, 0, 3, START, 3600):
        v = r["value"]
        if r["topic"] == "fenxiao.clicks":
            latest_click[v["visitor_id"]] = v["ref"]
        elif r["topic"] == "fenxiao.signups":
            distributors += v.get("distributor", True)
            inviter = v.get("ref") or latest_click.get(v.get("visitor_id", ""))
            if inviter:
                recruits[inviter] += 1
    teams = sorted(recruits.values(), reverse=True)
    top = teams[: max(1, len(teams) // 100)]
    assert sum(top) >= 0.25 * sum(teams), teams[:20]  # the top 1% of recruiters bring a quarter or more
    assert len(teams) <= 0.5 * distributors  # most distributors recruit nobody
    assert teams[0] >= 50 * (sum(teams) / len(teams))


def test_orders_arrive_as_a_wall_that_decays() -> None:
    paid_at = [
        ts_ms(r["value"]["ts"])
        for r in flashsale.generate(200, 5000, 9, START, 3600)
        if r["value"].get("type") == "paid"
    ]
    start = int(START.timestamp() * 1000)
    assert min(paid_at) >= start and max(paid_at) <= start + 3_600_000
    tenths = Counter(min(9, (t - start) // 360_000) for t in paid_at)
    assert tenths[0] > tenths[1] > tenths[3] > tenths[9]
    assert tenths[0] > 0.3 * len(paid_at)  # the opening minutes carry the sale


def test_it_streams_rather_than_building_the_sale_first() -> None:
    t0 = time.perf_counter()
    first = list(itertools.islice(flashsale.generate(1000, 1_000_000, 1, START, 3600), 100))
    assert len(first) == 100
    assert time.perf_counter() - t0 < 5.0


def test_write_jsonl_writes_one_compact_record_per_line(tmp_path: Path) -> None:
    recs = sale(users=30, orders=100)
    path = tmp_path / "sale.jsonl"
    assert flashsale.write_jsonl(path, recs) == len(recs)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == recs
    assert lines[0] == json.dumps(recs[0], separators=(",", ":"), ensure_ascii=False)


def test_edge_sizes() -> None:
    assert sale(users=0, orders=0) == []
    only_guests = sale(users=0, orders=50)
    assert all(r["value"]["buyer_id"].startswith("g") for r in only_guests if r["topic"] == "fenxiao.orders")
    assert {r["topic"] for r in sale(users=50, orders=0)} <= {"fenxiao.signups", "fenxiao.clicks", "fenxiao.tiers"}
    with pytest.raises(ValueError):
        list(flashsale.generate(1, 1, 1, START, 0))
