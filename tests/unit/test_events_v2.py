"""Contract v2 input events: order items, distributor status, adjustments, withdrawals, decoded and refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.events import Adjustment, DistributorStatus, Invalid, Item, Order, Withdrawal, decode
from streams import names

TS = "2026-11-11T00:00:00.000Z"
PAID: dict[str, Any] = {
    "event_id": "o1-p",
    "ts": TS,
    "order_id": "o1",
    "type": "paid",
    "buyer_id": "b1",
    "amount_cents": 10_000,
}
STATUS: dict[str, Any] = {"event_id": "d1", "ts": TS, "user_id": "u1", "status": "frozen"}
ADJ: dict[str, Any] = {
    "event_id": "a1",
    "ts": TS,
    "adjustment_id": "adj-1",
    "distributor_id": "u1",
    "amount_cents": 500,
    "reason": "award",
}
WD: dict[str, Any] = {
    "event_id": "w1",
    "ts": TS,
    "withdrawal_id": "wd-1",
    "distributor_id": "u1",
    "type": "requested",
    "amount_cents": 30_000,
    "channel": "alipay",
}


def raw(value: object) -> bytes:
    return json.dumps(value).encode("utf-8")


def items(*pairs: tuple[str, int]) -> list[dict[str, object]]:
    return [{"sku_id": s, "amount_cents": a} for s, a in pairs]


def refused(topic: str, value: dict[str, Any], field: str) -> Invalid:
    result = decode(topic, raw(value))
    assert isinstance(result, Invalid), result
    assert result.detail.startswith(field), result.detail
    assert result.event_id == value["event_id"]
    return result


# ---- order items ------------------------------------------------------------------------------------


def test_order_without_items_has_none() -> None:
    ev = decode(names.ORDERS, raw(PAID))
    assert isinstance(ev, Order), ev
    assert ev.items is None


@pytest.mark.parametrize("kind", ["paid", "refunded"])
def test_items_adding_up_to_the_amount_are_kept_in_order(kind: str) -> None:
    value = {**PAID, "type": kind, "items": items(("sku-123", 6_000), ("sku-gift", 0), ("sku-9", 4_000))}
    ev = decode(names.ORDERS, raw(value))
    assert isinstance(ev, Order), ev
    assert ev.items == (
        Item(sku_id="sku-123", amount_cents=6_000),
        Item(sku_id="sku-gift", amount_cents=0),
        Item(sku_id="sku-9", amount_cents=4_000),
    )
    assert ev.as_dict()["items"] == items(("sku-123", 6_000), ("sku-gift", 0), ("sku-9", 4_000))
    hash(ev)


def test_an_item_of_10_to_the_12_is_accepted() -> None:
    ev = decode(names.ORDERS, raw({**PAID, "amount_cents": 10**12, "items": items(("a", 10**12))}))
    assert isinstance(ev, Order), ev


def test_explicit_null_items_is_absent_items() -> None:
    ev = decode(names.ORDERS, raw({**PAID, "type": "completed", "items": None}))
    assert isinstance(ev, Order), ev
    assert ev.items is None


ITEMS_REFUSED = [
    pytest.param(items(("a", 6_000), ("b", 3_999)), "items:", id="sum-one-cent-short"),
    pytest.param(items(("a", 6_000), ("b", 4_001)), "items:", id="sum-one-cent-over"),
    pytest.param(items(("a", 6_000), ("a", 4_000)), "items[1].sku_id", id="sku-twice"),
    pytest.param([], "items", id="empty-list"),
    pytest.param(items(("", 10_000)), "items[0].sku_id", id="empty-sku"),
    pytest.param(items(("x" * 129, 10_000)), "items[0].sku_id", id="sku-129-chars"),
    pytest.param(items(("a", -1), ("b", 10_001)), "items[0].amount_cents", id="negative-item"),
    pytest.param(items(("a", 10**12 + 1)), "items[0].amount_cents", id="item-over-10^12"),
    pytest.param([{"sku_id": "a", "amount_cents": "10000"}], "items[0].amount_cents", id="item-amount-string"),
    pytest.param([{"sku_id": "a", "amount_cents": 10_000.0}], "items[0].amount_cents", id="item-amount-float"),
    pytest.param([{"sku_id": "a"}], "items[0].amount_cents", id="item-amount-missing"),
    pytest.param([{"amount_cents": 10_000}], "items[0].sku_id", id="item-sku-missing"),
    pytest.param([{"sku_id": 7, "amount_cents": 10_000}], "items[0].sku_id", id="item-sku-number"),
    pytest.param(["a"], "items[0]", id="item-not-object"),
    pytest.param({"sku_id": "a", "amount_cents": 10_000}, "items", id="object-not-list"),
]


@pytest.mark.parametrize(("value", "field"), ITEMS_REFUSED)
def test_bad_items_are_refused_naming_the_item(value: object, field: str) -> None:
    refused(names.ORDERS, {**PAID, "items": value}, field)


@pytest.mark.parametrize("kind", ["completed", "cancelled"])
def test_items_on_completed_or_cancelled_are_refused(kind: str) -> None:
    result = refused(names.ORDERS, {**PAID, "type": kind, "items": items(("a", 10_000))}, "items:")
    assert kind in result.detail


def test_unknown_fields_of_an_item_are_ignored() -> None:
    ev = decode(names.ORDERS, raw({**PAID, "items": [{"sku_id": "a", "amount_cents": 10_000, "name": "杯子"}]}))
    assert isinstance(ev, Order), ev


# ---- distributor status -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["active", "frozen", "revoked"])
def test_distributor_status_decodes(status: str) -> None:
    ev = decode(names.DISTRIBUTORS, raw({**STATUS, "status": status, "reason": "KYC"}))
    assert isinstance(ev, DistributorStatus), ev
    assert (ev.user_id, ev.status, ev.reason) == ("u1", status, "KYC")
    assert ev.ts_ms == 1_794_355_200_000


def test_distributor_status_reason_is_optional() -> None:
    ev = decode(names.DISTRIBUTORS, raw(STATUS))
    assert isinstance(ev, DistributorStatus), ev
    assert ev.reason is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"status": "Active"}, "status"),
        ({"status": "banned"}, "status"),
        ({"status": None}, "status"),
        ({"user_id": ""}, "user_id"),
        ({"reason": 3}, "reason"),
    ],
    ids=["status-case", "status-unknown", "status-null", "user-empty", "reason-number"],
)
def test_distributor_status_refused(change: dict[str, Any], field: str) -> None:
    refused(names.DISTRIBUTORS, {**STATUS, **change}, field)


def test_distributor_status_missing_status() -> None:
    refused(names.DISTRIBUTORS, {k: v for k, v in STATUS.items() if k != "status"}, "status")


# ---- adjustments --------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [1, -1, 500, -(10**12), 10**12], ids=["1", "-1", "500", "-10^12", "10^12"])
def test_adjustment_signed_amounts(amount: int) -> None:
    ev = decode(names.ADJUSTMENTS, raw({**ADJ, "amount_cents": amount}))
    assert isinstance(ev, Adjustment), ev
    assert (ev.adjustment_id, ev.distributor_id, ev.amount_cents, ev.reason) == ("adj-1", "u1", amount, "award")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount_cents": 0}, "amount_cents"),
        ({"amount_cents": 10**12 + 1}, "amount_cents"),
        ({"amount_cents": -(10**12) - 1}, "amount_cents"),
        ({"amount_cents": "500"}, "amount_cents"),
        ({"amount_cents": 5.0}, "amount_cents"),
        ({"amount_cents": None}, "amount_cents"),
        ({"reason": ""}, "reason"),
        ({"reason": None}, "reason"),
        ({"adjustment_id": "x" * 129}, "adjustment_id"),
        ({"distributor_id": ""}, "distributor_id"),
    ],
    ids=["zero", "over", "under", "string", "float", "null", "reason-empty", "reason-null", "id-129", "dist-empty"],
)
def test_adjustment_refused(change: dict[str, Any], field: str) -> None:
    refused(names.ADJUSTMENTS, {**ADJ, **change}, field)


@pytest.mark.parametrize("missing", ["adjustment_id", "distributor_id", "amount_cents", "reason"])
def test_adjustment_required_fields(missing: str) -> None:
    refused(names.ADJUSTMENTS, {k: v for k, v in ADJ.items() if k != missing}, missing)


# ---- withdrawals --------------------------------------------------------------------------------------


def test_withdrawal_requested() -> None:
    ev = decode(names.WITHDRAWALS, raw(WD))
    assert isinstance(ev, Withdrawal), ev
    assert (ev.withdrawal_id, ev.distributor_id, ev.type, ev.amount_cents, ev.channel) == (
        "wd-1",
        "u1",
        "requested",
        30_000,
        "alipay",
    )


@pytest.mark.parametrize("kind", ["approved", "rejected", "paid", "failed"])
def test_later_withdrawal_steps_need_no_amount_or_channel(kind: str) -> None:
    value = {k: v for k, v in WD.items() if k not in ("amount_cents", "channel")}
    ev = decode(names.WITHDRAWALS, raw({**value, "type": kind}))
    assert isinstance(ev, Withdrawal), ev
    assert (ev.type, ev.amount_cents, ev.channel) == (kind, None, None)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount_cents": None}, "amount_cents"),
        ({"amount_cents": 0}, "amount_cents"),
        ({"amount_cents": -100}, "amount_cents"),
        ({"amount_cents": 10**12 + 1}, "amount_cents"),
        ({"amount_cents": "100"}, "amount_cents"),
        ({"type": "cancelled"}, "type"),
        ({"type": "REQUESTED"}, "type"),
        ({"channel": ""}, "channel"),
        ({"channel": 1}, "channel"),
        ({"withdrawal_id": ""}, "withdrawal_id"),
    ],
    ids=[
        "null",
        "zero",
        "negative",
        "over",
        "string",
        "type-unknown",
        "type-case",
        "channel-empty",
        "channel-number",
        "id-empty",
    ],
)
def test_withdrawal_refused(change: dict[str, Any], field: str) -> None:
    refused(names.WITHDRAWALS, {**WD, **change}, field)


def test_withdrawal_requested_without_amount_is_refused() -> None:
    result = refused(names.WITHDRAWALS, {k: v for k, v in WD.items() if k != "amount_cents"}, "amount_cents")
    assert "requested" in result.detail


def test_the_worker_consumes_and_ranks_the_v2_topics_in_the_spec_tie_order() -> None:
    """Contract v2's tie order: tiers < distributors < clicks < signups < orders < adjustments < withdrawals."""
    for topic in names.V2_INPUT_TOPICS:
        assert topic in names.INPUT_TOPICS
    spec_order = [
        "fenxiao.tiers",
        "fenxiao.distributors",
        "fenxiao.clicks",
        "fenxiao.signups",
        "fenxiao.orders",
        "fenxiao.adjustments",
        "fenxiao.withdrawals",
    ]
    assert sorted(names.TOPIC_RANK, key=names.TOPIC_RANK.__getitem__) == spec_order
    assert names.V2_INPUT_TOPICS == ("fenxiao.distributors", "fenxiao.adjustments", "fenxiao.withdrawals")
