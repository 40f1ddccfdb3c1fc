"""Bytes other producers send (issue #12): each case of docs/decisions.md "Decoding records from other producers"."""

from __future__ import annotations

import calendar
import json
from pathlib import Path
from typing import Any

import pytest

from schemas.events import Invalid, Order, Signup, decode
from streams import names
from streams.engine import config, outcome, reference

TS = "2026-11-11T00:00:00.000Z"
TS_MS = 1_794_355_200_000  # 2026-11-11T00:00:00Z, hand-checked in tests/unit/test_events.py
SIGNUP = {"event_id": "s1", "ts": TS, "user_id": "u1"}
ORDER = {"event_id": "o1-p", "ts": TS, "order_id": "o1", "type": "paid", "buyer_id": "b1", "amount_cents": 100}
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def raw(value: object) -> bytes:
    return json.dumps(value).encode("utf-8")


def ts_ms_of(ts: str) -> int:
    ev = decode(names.SIGNUPS, raw({**SIGNUP, "ts": ts}))
    assert isinstance(ev, Signup), ev
    return ev.ts_ms


def refused(value: bytes | str, topic: str = names.SIGNUPS) -> Invalid:
    ev = decode(topic, value)
    assert isinstance(ev, Invalid), ev
    return ev


# ---- framing: BOM, whitespace, trailing data --------------------------------------------------------


def test_utf8_bom_before_the_json_is_ignored() -> None:
    ev = decode(names.SIGNUPS, b"\xef\xbb\xbf" + raw(SIGNUP))
    assert isinstance(ev, Signup), ev
    assert ev.user_id == "u1"


def test_bom_in_a_str_value_is_ignored_too() -> None:
    ev = decode(names.SIGNUPS, "\ufeff" + json.dumps(SIGNUP))
    assert isinstance(ev, Signup), ev


def test_two_boms_are_not_json() -> None:
    assert refused(b"\xef\xbb\xbf\xef\xbb\xbf" + raw(SIGNUP)).detail.startswith("not JSON")


@pytest.mark.parametrize(
    "framing",
    [(b"", b"\n"), (b"", b"\r\n"), (b"  ", b"  "), (b"\n\t", b"\n\n"), (b"\xef\xbb\xbf ", b"\n")],
    ids=["trailing-newline", "trailing-crlf", "spaces-around", "tabs-newlines", "bom-and-space"],
)
def test_whitespace_around_the_json_is_accepted(framing: tuple[bytes, bytes]) -> None:
    before, after = framing
    ev = decode(names.ORDERS, before + raw(ORDER) + after)
    assert isinstance(ev, Order), ev
    assert ev.amount_cents == 100


@pytest.mark.parametrize(
    "tail", [b" {}", b"\n" + json.dumps(SIGNUP).encode(), b"x", b"\x00"], ids=["object", "second-line", "x", "nul"]
)
def test_anything_after_the_object_is_refused(tail: bytes) -> None:
    result = refused(raw(SIGNUP) + tail)
    assert "trailing" in result.detail, result.detail


# ---- keys --------------------------------------------------------------------------------------------


def test_a_null_key_changes_nothing_the_value_decides() -> None:
    """The engine reads only the value: the basic example with every key null reaches its expected.json."""
    d = FIXTURES / "basic"
    records = [json.loads(line) for line in (d / "events.jsonl").read_text(encoding="utf-8").splitlines() if line]
    keyless = [{**r, "key": None} for r in records]
    run = reference.run(keyless, config.load(d / "fenxiao.toml"), 1_796_169_600_000)
    expected = json.loads((d / "expected.json").read_text(encoding="utf-8"))
    assert outcome.summarize(run.entries, run.bindings, run.dead_letters) == expected


def test_duplicate_keys_the_last_one_counts() -> None:
    """As Python's json, JavaScript, Go and Jackson by default; JSON Schema validators see the same value."""
    text = raw(ORDER)[:-1] + b', "amount_cents": 250, "buyer_id": "b2"}'
    ev = decode(names.ORDERS, text)
    assert isinstance(ev, Order), ev
    assert (ev.amount_cents, ev.buyer_id) == (250, "b2")


def test_duplicate_key_whose_last_value_is_bad_is_refused() -> None:
    text = raw(ORDER)[:-1] + b', "amount_cents": -1}'
    assert "amount_cents" in refused(text, names.ORDERS).detail


# ---- timestamps --------------------------------------------------------------------------------------


def _utc(y: int, mo: int, d: int, h: int, mi: int, s: int, ms: int = 0) -> int:
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * 1000 + ms


TS_ACCEPTED = [
    pytest.param("2026-11-11T08:00:00.000+08:00", TS_MS, id="plus-8-is-utc-midnight"),
    pytest.param("2026-11-11T08:30:00.000+08:30", TS_MS, id="plus-8-30"),
    pytest.param("2026-11-10T19:00:00.000-05:00", TS_MS, id="minus-5-previous-day"),
    pytest.param("2026-11-11T00:00:00.000-00:00", TS_MS, id="minus-zero-is-utc"),
    pytest.param("2026-11-11T00:00:00.000+00:00", TS_MS, id="plus-zero"),
    pytest.param("2026-01-01T07:59:59.999+08:00", _utc(2025, 12, 31, 23, 59, 59, 999), id="offset-crosses-year"),
    pytest.param("2024-03-01T05:00:00.000+08:00", _utc(2024, 2, 29, 21, 0, 0), id="offset-into-leap-day"),
    pytest.param("2026-11-11T00:00:00.000z", TS_MS, id="lower-case-z"),
    pytest.param("2026-11-11t00:00:00.000Z", TS_MS, id="lower-case-t"),
    pytest.param("2026-11-11T00:00:00Z", TS_MS, id="no-fraction"),
    pytest.param("2026-11-11T00:00:07Z", TS_MS + 7000, id="no-fraction-seconds"),
    pytest.param("2026-11-11T00:00:00.5Z", TS_MS + 500, id="one-digit"),
    pytest.param("2026-11-11T00:00:00.25Z", TS_MS + 250, id="two-digits"),
    pytest.param("2026-11-11T00:00:00.1239Z", TS_MS + 123, id="four-digits-truncated"),
    pytest.param("2026-11-11T00:00:00.999999Z", TS_MS + 999, id="micros-truncated-not-rounded"),
    pytest.param("2026-11-11T00:00:00.123456789Z", TS_MS + 123, id="nanos"),
    pytest.param("2026-11-11T08:00:00.999999+08:00", TS_MS + 999, id="micros-with-offset"),
    pytest.param("2024-02-29T12:00:00.000Z", _utc(2024, 2, 29, 12, 0, 0), id="leap-day"),
    pytest.param("2000-02-29T00:00:00.000Z", _utc(2000, 2, 29, 0, 0, 0), id="leap-day-400"),
    pytest.param("1969-12-31T23:59:59.999Z", -1, id="before-epoch"),
    pytest.param("1900-01-01T00:00:00.000Z", _utc(1900, 1, 1, 0, 0, 0), id="first-year"),
    pytest.param("2299-12-31T23:59:59.999Z", _utc(2299, 12, 31, 23, 59, 59, 999), id="last-year"),
]


@pytest.mark.parametrize(("ts", "expected"), TS_ACCEPTED)
def test_ts_accepted_is_the_true_utc_instant(ts: str, expected: int) -> None:
    assert ts_ms_of(ts) == expected


def test_the_event_keeps_the_producers_ts_text_and_as_dict_gives_the_canonical_utc_form() -> None:
    ev = decode(names.SIGNUPS, raw({**SIGNUP, "ts": "2026-11-11T08:00:00.5+08:00"}))
    assert isinstance(ev, Signup), ev
    assert ev.ts == "2026-11-11T08:00:00.5+08:00"
    assert ev.as_dict() == {
        "event_id": "s1",
        "ts": "2026-11-11T00:00:00.500Z",
        "user_id": "u1",
        "ref": None,
        "visitor_id": None,
        "distributor": True,
    }


TS_REFUSED = [
    pytest.param("2026-11-11T00:00:00.1234567890Z", id="ten-fraction-digits"),
    pytest.param("2026-11-11T00:00:00.Z", id="dot-without-digits"),
    pytest.param("2026-11-11 00:00:00.000Z", id="space-separator"),
    pytest.param("2026-11-11T00:00:00.000+0800", id="offset-without-colon"),
    pytest.param("2026-11-11T00:00:00.000+08", id="offset-hours-only"),
    pytest.param("2026-11-11T00:00:00.000+24:00", id="offset-24h"),
    pytest.param("2026-11-11T00:00:00.000+08:60", id="offset-60-minutes"),
    pytest.param("2026-11-11T00:00:00.000 Z", id="space-before-z"),
    pytest.param("2026-11-11T00:00:00,000Z", id="comma-fraction"),
    pytest.param("2026-11-11T23:59:60.000Z", id="leap-second"),
    pytest.param("2026-02-29T00:00:00.000Z", id="feb-29-not-leap"),
    pytest.param("1900-02-29T00:00:00.000Z", id="feb-29-1900-not-leap"),
    pytest.param("2026-04-31T00:00:00.000Z", id="april-31"),
    pytest.param("2026-11-11T00:00:00.000UTC", id="zone-name"),
    pytest.param("2026-11-11T00:00:00.000", id="no-zone"),
    pytest.param("20261111T000000Z", id="basic-format"),
    pytest.param("2026-11-11T00:00Z", id="no-seconds"),
    pytest.param("１９９９-11-11T00:00:00.000Z", id="fullwidth-digits"),
    pytest.param("٢٠٢٦-11-11T00:00:00.000Z", id="arabic-indic-digits"),
    pytest.param("1899-12-31T23:59:59.999Z", id="before-1900"),
    pytest.param("2300-01-01T00:00:00.000Z", id="after-2299"),
    pytest.param("9999-12-31T23:59:59.999-23:59", id="year-9999-past-datetime"),
    pytest.param("0000-01-01T00:00:00.000Z", id="year-0"),
    pytest.param("+2026-11-11T00:00:00.000Z", id="signed-year"),
]


@pytest.mark.parametrize("ts", TS_REFUSED)
def test_ts_refused_names_ts_and_the_expected_form(ts: str) -> None:
    result = refused(raw({**SIGNUP, "ts": ts}))
    assert result.detail.startswith("ts: "), result.detail
    assert "2026-11-11T00:00:00.000Z" in result.detail
    assert result.event_id == "s1"


# ---- JSON that is not JSON, or not UTF-8 ------------------------------------------------------------

NOT_JSON_TOKENS = [
    pytest.param(b'{"event_id": "s1", "ts": "%s", "user_id": "u1", "score": NaN}', id="nan-extra"),
    pytest.param(b'{"event_id": "s1", "ts": "%s", "user_id": "u1", "score": Infinity}', id="infinity-extra"),
    pytest.param(b'{"event_id": "s1", "ts": "%s", "user_id": "u1", "score": -Infinity}', id="minus-infinity"),
    pytest.param(
        b'{"event_id": "o1", "ts": "%s", "order_id": "o1", "type": "paid", "buyer_id": "b", "amount_cents": NaN}',
        id="nan-amount",
    ),
    pytest.param(b"{'event_id': 's1', 'ts': '%s', 'user_id': 'u1'}", id="single-quotes"),
    pytest.param(b'{"event_id": "s1", "ts": "%s", "user_id": "u1",}', id="trailing-comma"),
    pytest.param(b'{"event_id": "s1", "ts": "%s", "user_id": "u1" /* c */}', id="comment"),
]


@pytest.mark.parametrize("template", NOT_JSON_TOKENS)
def test_nan_infinity_and_other_non_json_are_refused(template: bytes) -> None:
    value = template.replace(b"%s", TS.encode())
    topic = names.ORDERS if b"order_id" in value else names.SIGNUPS
    result = refused(value, topic)
    assert result.detail.startswith("not JSON"), result.detail


INVALID_UTF8 = [
    pytest.param(b'{"event_id": "s1", "ts": "' + TS.encode() + b'", "user_id": "u\xff1"}', id="in-a-field"),
    pytest.param(
        b'{"event_id": "s1", "ts": "' + TS.encode() + b'", "user_id": "u1", "note": "\xc3("}', id="in-an-ignored-extra"
    ),
    pytest.param(b'{"event_id": "s1", "ts": "' + TS.encode() + b'", "user_id": "\xed\xa0\x80"}', id="surrogate"),
    pytest.param(b'{"event_id": "s1", "ts": "' + TS.encode() + b'", "user_id": "\xc0\xaf"}', id="overlong"),
    pytest.param("\ufeff".encode("utf-16") + json.dumps(SIGNUP).encode("utf-16-le"), id="utf-16"),
]


@pytest.mark.parametrize("value", INVALID_UTF8)
def test_invalid_utf8_anywhere_is_refused(value: bytes) -> None:
    result = refused(value)
    assert result.detail.startswith(("not UTF-8", "not JSON")), result.detail


def test_invalid_utf8_detail_gives_the_byte_position() -> None:
    value = b'{"event_id": "s1", "user_id": "u\xff1"}'
    assert refused(value).detail == "not UTF-8: invalid start byte at byte 32"
    assert value[32:33] == b"\xff"


def test_lone_surrogate_in_a_str_value_is_refused() -> None:
    value = json.dumps({**SIGNUP, "user_id": "\ud800"}, ensure_ascii=False)
    assert refused(value).detail.startswith("not UTF-8")


def test_escaped_non_ascii_and_raw_utf8_decode_alike() -> None:
    a = decode(names.SIGNUPS, json.dumps({**SIGNUP, "user_id": "用户"}, ensure_ascii=True))
    b = decode(names.SIGNUPS, json.dumps({**SIGNUP, "user_id": "用户"}, ensure_ascii=False).encode("utf-8"))
    assert isinstance(a, Signup) and isinstance(b, Signup)
    assert a.user_id == b.user_id == "用户"


TOP_LEVEL = [
    pytest.param(b"[]", "array", id="array"),
    pytest.param(b'"{}"', "str", id="string"),
    pytest.param(b"3.5", "float", id="float"),
    pytest.param(b"7", "int", id="int"),
    pytest.param(b"false", "bool", id="bool"),
    pytest.param(b"null", "null", id="null"),
]


@pytest.mark.parametrize(("value", "kind"), TOP_LEVEL)
def test_top_level_non_object_is_refused_saying_what_it_got(value: bytes, kind: str) -> None:
    assert refused(value).detail == f"value must be a JSON object, got {kind}"


def test_deeply_nested_json_is_refused_not_raised() -> None:
    """json.loads raised RecursionError here and took the worker's batch with it; now it is a dead letter."""
    value = raw(SIGNUP)[:-1] + b', "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    result: Any = decode(names.SIGNUPS, value)
    assert isinstance(result, Invalid), result
    assert result.detail == "not JSON: nested too deeply to decode"


def test_huge_integer_in_an_ignored_extra_is_fine_but_not_in_amount() -> None:
    ev = decode(names.ORDERS, raw(ORDER)[:-1] + b', "big": ' + b"9" * 5000 + b"}")
    assert isinstance(ev, Order), ev
    bad = decode(names.ORDERS, raw({**ORDER, "amount_cents": 10**40}))
    assert isinstance(bad, Invalid)
    assert bad.detail.startswith("amount_cents: "), bad.detail
