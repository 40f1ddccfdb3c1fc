"""Decoding raw record values: malformed input becomes Invalid with a detail naming the field."""

from __future__ import annotations

import calendar
import json
from typing import Any

import pytest

from schemas.events import Click, Invalid, Order, Signup, Tier, decode, format_ts
from streams import names

TS = "2026-11-11T00:00:00.000Z"
TS_MS = 1_794_355_200_000  # 2026-01-01 = 20454 days (56×365 + 14 leap days) → 1767225600 s; + 314 days → 1794355200 s

VALID: dict[str, dict[str, Any]] = {
    names.CLICKS: {"event_id": "c1", "ts": TS, "visitor_id": "v1", "ref": "u1"},
    names.SIGNUPS: {"event_id": "s1", "ts": TS, "user_id": "u1"},
    names.ORDERS: {
        "event_id": "o1-p",
        "ts": TS,
        "order_id": "o1",
        "type": "paid",
        "buyer_id": "b1",
        "amount_cents": 100,
    },
    names.TIERS: {"event_id": "t1", "ts": TS, "user_id": "u1", "tier": "gold"},
}
REQUIRED = {
    names.CLICKS: ["event_id", "ts", "visitor_id", "ref"],
    names.SIGNUPS: ["event_id", "ts", "user_id"],
    names.ORDERS: ["event_id", "ts", "order_id", "type", "buyer_id", "amount_cents"],
    names.TIERS: ["event_id", "ts", "user_id", "tier"],
}
SHORT = {names.CLICKS: "click", names.SIGNUPS: "signup", names.ORDERS: "order", names.TIERS: "tier"}


def raw(value: object) -> bytes:
    return json.dumps(value).encode("utf-8")


def with_(topic: str, **changes: object) -> bytes:
    return raw({**VALID[topic], **changes})


def without(topic: str, field: str) -> bytes:
    return raw({k: v for k, v in VALID[topic].items() if k != field})


def assert_invalid(result: object, field: str | None) -> Invalid:
    assert isinstance(result, Invalid), result
    assert result.detail
    if field is not None:
        assert field in result.detail, result.detail
    return result


# ---- missing required fields, per topic -----------------------------------------------------------

MISSING = [
    pytest.param(topic, field, None, id=f"{SHORT[topic]}-missing-{field}")
    for topic, fields in REQUIRED.items()
    for field in fields
] + [pytest.param(names.ORDERS, "amount_cents", "refunded", id="refunded-missing-amount_cents")]


@pytest.mark.parametrize(("topic", "field", "order_type"), MISSING)
def test_missing_required_field(topic: str, field: str, order_type: str | None) -> None:
    value = {k: v for k, v in VALID[topic].items() if k != field}
    if order_type is not None:
        value["type"] = order_type
    assert_invalid(decode(topic, raw(value)), field)


@pytest.mark.parametrize("topic", list(VALID), ids=list(SHORT.values()))
def test_valid_baseline_decodes(topic: str) -> None:
    ev = decode(topic, raw(VALID[topic]))
    assert not isinstance(ev, Invalid), ev
    assert ev.event_id == VALID[topic]["event_id"]
    assert ev.ts_ms == TS_MS


# ---- wrong values ---------------------------------------------------------------------------------

ORD, CLK, SGN, TIR = names.ORDERS, names.CLICKS, names.SIGNUPS, names.TIERS
ID129 = "x" * 129

WRONG = [
    pytest.param(ORD, with_(ORD, amount_cents="100"), "amount_cents", id="amount-string"),
    pytest.param(ORD, with_(ORD, amount_cents=100.5), "amount_cents", id="amount-float"),
    pytest.param(ORD, with_(ORD, amount_cents=1e3), "amount_cents", id="amount-exponent-float"),
    pytest.param(ORD, with_(ORD, amount_cents=True), "amount_cents", id="amount-bool"),
    pytest.param(ORD, with_(ORD, amount_cents=None), "amount_cents", id="amount-null-on-paid"),
    pytest.param(ORD, with_(ORD, amount_cents=-1), "amount_cents", id="amount-negative"),
    pytest.param(ORD, with_(ORD, amount_cents=10**12 + 1), "amount_cents", id="amount-over-10^12"),
    pytest.param(ORD, with_(ORD, amount_cents=10**30), "amount_cents", id="amount-huge"),
    pytest.param(ORD, with_(ORD, type="refunded", amount_cents=-5), "amount_cents", id="refund-amount-negative"),
    pytest.param(ORD, with_(ORD, type="completed", amount_cents="x"), "amount_cents", id="completed-amount-string"),
    pytest.param(ORD, with_(ORD, type="shipped"), "type", id="unknown-order-type"),
    pytest.param(ORD, with_(ORD, type="PAID"), "type", id="order-type-wrong-case"),
    pytest.param(ORD, with_(ORD, type=None), "type", id="order-type-null"),
    pytest.param(ORD, with_(ORD, order_id=ID129), "order_id", id="order_id-129-chars"),
    pytest.param(ORD, with_(ORD, order_id=""), "order_id", id="order_id-empty"),
    pytest.param(ORD, with_(ORD, order_id=17), "order_id", id="order_id-number"),
    pytest.param(ORD, with_(ORD, buyer_id=ID129), "buyer_id", id="buyer_id-129-chars"),
    pytest.param(ORD, with_(ORD, campaign_id=ID129), "campaign_id", id="campaign_id-129-chars"),
    pytest.param(ORD, with_(ORD, ref=""), "ref", id="order-ref-empty"),
    pytest.param(ORD, with_(ORD, visitor_id=ID129), "visitor_id", id="order-visitor_id-129-chars"),
    pytest.param(SGN, with_(SGN, event_id=ID129), "event_id", id="event_id-129-chars"),
    pytest.param(SGN, with_(SGN, event_id=""), "event_id", id="event_id-empty"),
    pytest.param(SGN, with_(SGN, event_id=123), "event_id", id="event_id-number"),
    pytest.param(SGN, with_(SGN, user_id=ID129), "user_id", id="user_id-129-chars"),
    pytest.param(SGN, with_(SGN, user_id=""), "user_id", id="user_id-empty"),
    pytest.param(SGN, with_(SGN, user_id=["u1"]), "user_id", id="user_id-list"),
    pytest.param(SGN, with_(SGN, ref=ID129), "ref", id="signup-ref-129-chars"),
    pytest.param(SGN, with_(SGN, distributor="false"), "distributor", id="distributor-string"),
    pytest.param(SGN, with_(SGN, distributor=0), "distributor", id="distributor-int"),
    pytest.param(CLK, with_(CLK, ref=""), "ref", id="click-ref-empty"),
    pytest.param(CLK, with_(CLK, visitor_id=ID129), "visitor_id", id="click-visitor_id-129-chars"),
    pytest.param(CLK, with_(CLK, product_id=ID129), "product_id", id="click-product_id-129-chars"),
    pytest.param(CLK, with_(CLK, ip=12345), "ip", id="click-ip-number"),
    pytest.param(TIR, with_(TIR, tier=""), "tier", id="tier-empty"),
    pytest.param(TIR, with_(TIR, tier=3), "tier", id="tier-number"),
    pytest.param(SGN, with_(SGN, ts="2026-11-11T00:00:00.000"), "ts", id="ts-no-zone"),
    pytest.param(SGN, with_(SGN, ts="2026-11-11"), "ts", id="ts-date-only"),
    pytest.param(SGN, with_(SGN, ts="garbage"), "ts", id="ts-garbage"),
    pytest.param(SGN, with_(SGN, ts=""), "ts", id="ts-empty"),
    pytest.param(SGN, with_(SGN, ts=TS_MS), "ts", id="ts-epoch-number"),
    pytest.param(SGN, with_(SGN, ts=None), "ts", id="ts-null"),
    pytest.param(SGN, with_(SGN, ts="2026-13-01T00:00:00.000Z"), "ts", id="ts-month-13"),
    pytest.param(SGN, with_(SGN, ts="2026-02-30T00:00:00.000Z"), "ts", id="ts-feb-30"),
    pytest.param(SGN, with_(SGN, ts="2026-11-11T25:00:00.000Z"), "ts", id="ts-hour-25"),
    pytest.param(SGN, with_(SGN, ts="11/11/2026 00:00:00"), "ts", id="ts-us-format"),
    pytest.param(SGN, with_(SGN, ts=TS + " "), "ts", id="ts-trailing-space"),
    pytest.param(SGN, with_(SGN, ts=TS + "\n"), "ts", id="ts-trailing-newline"),
]


@pytest.mark.parametrize(("topic", "value", "field"), WRONG)
def test_wrong_value_is_invalid_naming_the_field(topic: str, value: bytes, field: str) -> None:
    assert_invalid(decode(topic, value), field)


NOT_AN_OBJECT = [
    pytest.param(b"{not json", id="not-json"),
    pytest.param(b"", id="empty-bytes"),
    pytest.param(b'{"event_id": "s1", "ts": ', id="truncated-json"),
    pytest.param(b"\x80\x81\xfe\xff\x00\x13garbage", id="binary-garbage"),
    pytest.param(bytes(range(256)), id="all-bytes"),
    pytest.param(b"[1, 2]", id="json-array"),
    pytest.param(b'"a string"', id="json-string"),
    pytest.param(b"42", id="json-number"),
    pytest.param(b"null", id="json-null"),
    pytest.param(b"true", id="json-true"),
    pytest.param(None, id="null-record-value"),
]


@pytest.mark.parametrize("topic", list(VALID), ids=list(SHORT.values()))
@pytest.mark.parametrize("value", NOT_AN_OBJECT)
def test_not_an_object_is_invalid(topic: str, value: bytes | None) -> None:
    result = assert_invalid(decode(topic, value), None)
    assert result.event_id is None


def test_readable_event_id_and_ts_are_kept_for_the_dead_letter() -> None:
    result = assert_invalid(decode(SGN, without(SGN, "user_id")), "user_id")
    assert result.event_id == "s1"
    assert result.ts == TS


def test_unreadable_event_id_is_not_kept() -> None:
    result = assert_invalid(decode(SGN, with_(SGN, event_id=ID129)), "event_id")
    assert result.event_id is None


def test_unknown_topic_is_invalid() -> None:
    assert_invalid(decode("fenxiao.commissions", raw(VALID[SGN])), None)


# ---- accepted ------------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", list(VALID), ids=list(SHORT.values()))
def test_unknown_extra_fields_are_ignored(topic: str) -> None:
    value = {**VALID[topic], "producer_version": "9.9", "nested": {"a": [1, 2]}, "amount_yuan": 1.5, "flag": None}
    ev = decode(topic, raw(value))
    assert not isinstance(ev, Invalid), ev
    assert ev.event_id == VALID[topic]["event_id"]


@pytest.mark.parametrize(
    ("topic", "extra"),
    [(names.CLICKS, 1.5), (names.SIGNUPS, None), (names.ORDERS, "2026-11-11"), (names.TIERS, "soon")],
    ids=["click-float", "signup-null", "order-date-string", "tier-word"],
)
def test_unknown_extra_field_named_ts_ms_is_ignored(topic: str, extra: object) -> None:
    """`ts_ms` is not a contract field, so a producer adding it must not get the event dead-lettered.

    The decoder keeps the parsed time in a model field named ts_ms, which makes it validate a producer's
    `ts_ms` instead of ignoring it (schemas/events.py, _Event.ts_ms).
    """
    ev = decode(topic, raw({**VALID[topic], "ts_ms": extra}))
    assert not isinstance(ev, Invalid), ev
    assert ev.ts_ms == TS_MS


def test_extra_integer_ts_ms_does_not_override_ts() -> None:
    ev = decode(SGN, with_(SGN, ts_ms=5))
    assert not isinstance(ev, Invalid)
    assert ev.ts_ms == TS_MS


@pytest.mark.parametrize(
    ("amount", "expected"),
    [(10**12, 10**12), (0, 0), (1, 1)],
    ids=["exactly-10^12", "zero", "one"],
)
@pytest.mark.parametrize("kind", ["paid", "refunded"])
def test_amount_bounds_accepted(kind: str, amount: int, expected: int) -> None:
    ev = decode(ORD, with_(ORD, type=kind, amount_cents=amount))
    assert isinstance(ev, Order), ev
    assert ev.amount_cents == expected
    assert ev.type == kind


@pytest.mark.parametrize("kind", ["completed", "cancelled"])
def test_amount_optional_on_completed_and_cancelled(kind: str) -> None:
    value = {k: v for k, v in VALID[ORD].items() if k != "amount_cents"}
    ev = decode(ORD, raw({**value, "type": kind}))
    assert isinstance(ev, Order), ev
    assert ev.type == kind
    assert ev.amount_cents is None
    with_amount = decode(ORD, raw({**value, "type": kind, "amount_cents": 700}))
    assert isinstance(with_amount, Order)
    assert with_amount.amount_cents == 700


def test_id_of_128_chars_is_accepted() -> None:
    ev = decode(SGN, with_(SGN, event_id="e" * 128, user_id="u" * 128, ref="r" * 128))
    assert isinstance(ev, Signup), ev
    assert len(ev.event_id) == len(ev.user_id) == 128


def test_click_fields() -> None:
    ev = decode(CLK, with_(CLK, campaign_id="d11", product_id="p9", ip="203.0.113.9", user_agent="Mozilla/5.0"))
    assert isinstance(ev, Click), ev
    assert (ev.visitor_id, ev.ref, ev.campaign_id, ev.product_id) == ("v1", "u1", "d11", "p9")


def test_signup_defaults_and_options() -> None:
    plain = decode(SGN, raw(VALID[SGN]))
    assert isinstance(plain, Signup)
    assert (plain.ref, plain.visitor_id, plain.distributor) == (None, None, True)
    full = decode(SGN, with_(SGN, ref="u0", visitor_id="v1", distributor=False))
    assert isinstance(full, Signup)
    assert (full.ref, full.visitor_id, full.distributor) == ("u0", "v1", False)


def test_order_fields() -> None:
    ev = decode(ORD, with_(ORD, campaign_id="d11", ref="u0", visitor_id="v1"))
    assert isinstance(ev, Order), ev
    assert (ev.order_id, ev.type, ev.buyer_id, ev.amount_cents) == ("o1", "paid", "b1", 100)
    assert (ev.campaign_id, ev.ref, ev.visitor_id) == ("d11", "u0", "v1")


def test_tier_fields() -> None:
    ev = decode(TIR, raw(VALID[TIR]))
    assert isinstance(ev, Tier), ev
    assert (ev.user_id, ev.tier) == ("u1", "gold")


def test_decode_accepts_str_and_utf8() -> None:
    value = {**VALID[SGN], "user_id": "用户-1"}
    ev = decode(SGN, json.dumps(value, ensure_ascii=False))
    assert isinstance(ev, Signup), ev
    assert ev.user_id == "用户-1"
    ev2 = decode(SGN, json.dumps(value, ensure_ascii=False).encode("utf-8"))
    assert isinstance(ev2, Signup)
    assert ev2.user_id == "用户-1"


# ---- ts → epoch milliseconds ---------------------------------------------------------------------


def _ms(y: int, mo: int, d: int, h: int, mi: int, s: int, ms: int) -> int:
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * 1000 + ms


TS_CASES = [
    pytest.param("2026-11-11T00:00:00.000Z", 1_794_355_200_000, id="d11-literal"),
    pytest.param("1970-01-01T00:00:00.000Z", 0, id="epoch"),
    pytest.param("1970-01-01T00:00:00.001Z", 1, id="epoch+1ms"),
    pytest.param("2026-11-10T23:59:59.999Z", 1_794_355_199_999, id="1ms-before-d11"),
    pytest.param("2000-02-29T12:34:56.789Z", 951_827_696_789, id="leap-day-literal"),
    pytest.param("2024-12-31T23:59:59.999Z", _ms(2024, 12, 31, 23, 59, 59, 999), id="year-end"),
    pytest.param("2026-11-11T00:03:00.224Z", _ms(2026, 11, 11, 0, 3, 0, 224), id="basic-example-ts"),
]


@pytest.mark.parametrize(("ts", "expected"), TS_CASES)
def test_ts_to_epoch_ms(ts: str, expected: int) -> None:
    ev = decode(SGN, with_(SGN, ts=ts))
    assert isinstance(ev, Signup), ev
    assert ev.ts_ms == expected


def test_ts_literal_matches_calendar() -> None:
    assert _ms(2026, 11, 11, 0, 0, 0, 0) == TS_MS == 1_794_355_200_000
    assert _ms(2000, 2, 29, 12, 34, 56, 789) == 951_827_696_789


@pytest.mark.parametrize(
    "ts", ["2026-11-11T08:00:00.000+08:00", "2026-11-10T19:00:00.000-05:00"], ids=["plus-8", "minus-5"]
)
def test_ts_with_offset_if_accepted_is_the_same_instant(ts: str) -> None:
    """The contract says UTC; an explicit offset may be refused, but if accepted it must mean the same instant."""
    ev = decode(SGN, with_(SGN, ts=ts))
    if not isinstance(ev, Invalid):
        assert ev.ts_ms == TS_MS


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (TS_MS, TS),
        (0, "1970-01-01T00:00:00.000Z"),
        (951_827_696_789, "2000-02-29T12:34:56.789Z"),
        (TS_MS - 1, "2026-11-10T23:59:59.999Z"),
    ],
    ids=["d11", "epoch", "leap-day", "1ms-before"],
)
def test_format_ts_canonical(ms: int, text: str) -> None:
    assert format_ts(ms) == text


# ---- events are values ---------------------------------------------------------------------------

AS_DICT_KEYS = {
    names.CLICKS: ["event_id", "ts", "visitor_id", "ref", "campaign_id", "product_id", "ip", "user_agent"],
    names.SIGNUPS: ["event_id", "ts", "user_id", "ref", "visitor_id", "distributor"],
    names.ORDERS: [
        "event_id",
        "ts",
        "order_id",
        "type",
        "buyer_id",
        "amount_cents",
        "campaign_id",
        "ref",
        "visitor_id",
        "items",
    ],
    names.TIERS: ["event_id", "ts", "user_id", "tier"],
}


@pytest.mark.parametrize("topic", list(VALID), ids=list(SHORT.values()))
def test_events_are_frozen_and_hashable(topic: str) -> None:
    ev = decode(topic, raw(VALID[topic]))
    again = decode(topic, raw({**VALID[topic], "extra": 1}))
    assert not isinstance(ev, Invalid) and not isinstance(again, Invalid)
    assert ev == again and hash(ev) == hash(again) and len({ev, again}) == 1
    with pytest.raises(AttributeError):
        ev.event_id = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ev.ts_ms = 0  # type: ignore[misc]
    assert ev.event_id == VALID[topic]["event_id"] and ev.ts_ms == TS_MS


@pytest.mark.parametrize("topic", list(VALID), ids=list(SHORT.values()))
def test_as_dict_has_every_field_and_no_extras(topic: str) -> None:
    ev = decode(topic, raw({**VALID[topic], "producer_version": "9"}))
    assert not isinstance(ev, Invalid), ev
    row = ev.as_dict()
    assert list(row) == AS_DICT_KEYS[topic]
    assert {k: row[k] for k in VALID[topic]} == VALID[topic]
