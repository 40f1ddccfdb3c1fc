"""The write API's records: what a request body becomes, and every hostile body refused with the field named."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import events
from streams import names
from streams.api import commands

# 2026-11-11T00:00:00.000Z, computed here from the calendar, not by the code under test.
NOW_MS = int(datetime(2026, 11, 11, tzinfo=UTC).timestamp()) * 1000 + 250
NOW_TS = "2026-11-11T00:00:00.250Z"


def decoded(cmd: commands.Command) -> Any:
    """The command as the worker's decoder reads it off the topic."""
    got = events.decode(cmd.topic, cmd.encoded()[1])
    assert not isinstance(got, events.Invalid), got
    return got


def test_withdrawal_request_is_the_contract_record_keyed_by_distributor() -> None:
    cmd = commands.withdrawal_request("wd-1", "u1", {"amount_cents": 5000, "channel": "alipay"}, now_ms=NOW_MS)
    assert (cmd.topic, cmd.key, cmd.id) == ("fenxiao.withdrawals", "u1", "wd-1")
    assert json.loads(cmd.encoded()[1]) == {
        "event_id": cmd.event_id,
        "ts": NOW_TS,
        "withdrawal_id": "wd-1",
        "distributor_id": "u1",
        "type": "requested",
        "amount_cents": 5000,
        "channel": "alipay",
    }
    ev = decoded(cmd)
    assert isinstance(ev, events.Withdrawal) and ev.ts_ms == NOW_MS and ev.amount_cents == 5000


def test_event_id_is_deterministic_per_key_and_kind_and_fits_the_id_rule() -> None:
    a = commands.withdrawal_request("k" * 128, "u1", {"amount_cents": 100}, now_ms=NOW_MS)
    b = commands.withdrawal_request("k" * 128, "u1", {"amount_cents": 100}, now_ms=NOW_MS + 5000)
    assert a.event_id == b.event_id and len(a.event_id) <= events.MAX_ID_LEN
    other_key = commands.withdrawal_request("k" * 127, "u1", {"amount_cents": 100}, now_ms=NOW_MS)
    approve = commands.withdrawal_transition("k" * 128, "wd", "u1", "approve", {}, now_ms=NOW_MS)
    reject = commands.withdrawal_transition("k" * 128, "wd", "u1", "reject", {}, now_ms=NOW_MS)
    assert len({a.event_id, other_key.event_id, approve.event_id, reject.event_id}) == 4


@pytest.mark.parametrize(
    ("action", "kind"), [("approve", "approved"), ("reject", "rejected"), ("paid", "paid"), ("failed", "failed")]
)
def test_each_action_is_its_withdrawal_type(action: str, kind: str) -> None:
    cmd = commands.withdrawal_transition("op-1", "wd-9", "u7", action, {"reason": "checked"}, now_ms=NOW_MS)
    ev = decoded(cmd)
    assert isinstance(ev, events.Withdrawal)
    assert (ev.type, ev.withdrawal_id, ev.distributor_id, ev.amount_cents) == (kind, "wd-9", "u7", None)
    assert (cmd.key, cmd.id) == ("u7", f"wd-9:{kind}")
    assert json.loads(cmd.encoded()[1])["reason"] == "checked"


def test_status_and_adjustment() -> None:
    s = commands.distributor_status("st-1", "u3", {"status": "frozen", "reason": "chargebacks"}, now_ms=NOW_MS)
    ev = decoded(s)
    assert isinstance(ev, events.DistributorStatus)
    assert (ev.user_id, ev.status, ev.reason) == ("u3", "frozen", "chargebacks")
    assert (s.topic, s.key, s.id) == (names.DISTRIBUTORS, "u3", s.event_id)
    a = commands.adjustment("adj-1", {"distributor_id": "u4", "amount_cents": -300, "reason": "typo"}, now_ms=NOW_MS)
    ad = decoded(a)
    assert isinstance(ad, events.Adjustment)
    assert (ad.adjustment_id, ad.distributor_id, ad.amount_cents, ad.reason) == ("adj-1", "u4", -300, "typo")
    assert (a.topic, a.key, a.id) == (names.ADJUSTMENTS, "u4", "adj-1")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "amount_cents"),
        ({"amount_cents": 0}, "amount_cents"),
        ({"amount_cents": -5}, "amount_cents"),
        ({"amount_cents": 10**12 + 1}, "amount_cents"),
        ({"amount_cents": 10**30}, "amount_cents"),
        ({"amount_cents": 50.0}, "amount_cents"),
        ({"amount_cents": "5000"}, "amount_cents"),
        ({"amount_cents": True}, "amount_cents"),
        ({"amount_cents": 5000, "channel": ""}, "channel"),
        ({"amount_cents": 5000, "channel": "c" * 129}, "channel"),
        ({"amount_cents": 5000, "channel": 7}, "channel"),
    ],
)
def test_hostile_withdrawal_bodies_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(commands.CommandError, match=field):
        commands.withdrawal_request("wd-x", "u1", body, now_ms=NOW_MS)


def test_the_largest_amount_passes() -> None:
    cmd = commands.withdrawal_request("wd", "u1", {"amount_cents": 10**12}, now_ms=NOW_MS)
    assert decoded(cmd).amount_cents == 10**12


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount_cents": 100, "reason": "r"}, "distributor_id"),
        ({"distributor_id": "u1", "reason": "r"}, "amount_cents"),
        ({"distributor_id": "u1", "amount_cents": 0, "reason": "r"}, "amount_cents"),
        ({"distributor_id": "u1", "amount_cents": -(10**12) - 1, "reason": "r"}, "amount_cents"),
        ({"distributor_id": "u1", "amount_cents": 100}, "reason"),
        ({"distributor_id": "u1", "amount_cents": 100, "reason": "  "}, "reason"),
        ({"distributor_id": "u1", "amount_cents": 100, "reason": "x" * 1001}, "reason"),
        ({"distributor_id": "", "amount_cents": 100, "reason": "r"}, "distributor_id"),
        ({"distributor_id": "u" * 129, "amount_cents": 100, "reason": "r"}, "distributor_id"),
    ],
)
def test_hostile_adjustments(body: dict[str, Any], field: str) -> None:
    with pytest.raises(commands.CommandError, match=field):
        commands.adjustment("adj", body, now_ms=NOW_MS)


@pytest.mark.parametrize("status", ["paused", "", None, 1, "ACTIVE"])
def test_unknown_status_is_refused(status: Any) -> None:
    with pytest.raises(commands.CommandError, match="status: must be one of active, frozen, revoked"):
        commands.distributor_status("k", "u1", {"status": status}, now_ms=NOW_MS)


def test_unknown_action_and_long_ids() -> None:
    with pytest.raises(commands.CommandError, match="unknown action"):
        commands.withdrawal_transition("k", "wd", "u1", "approved", {}, now_ms=NOW_MS)
    with pytest.raises(commands.CommandError, match="withdrawal id must be 1-128"):
        commands.withdrawal_transition("k", "w" * 129, "u1", "approve", {}, now_ms=NOW_MS)
    with pytest.raises(commands.CommandError, match="distributor id must be 1-128"):
        commands.withdrawal_request("k", "u" * 129, {"amount_cents": 100}, now_ms=NOW_MS)


@pytest.mark.parametrize(
    "key", [None, "", "has space", "slash/es", "k" * 129, "ключ", "semi;colon", "new\nline", 'quote"']
)
def test_bad_idempotency_keys(key: str | None) -> None:
    with pytest.raises(commands.CommandError, match="Idempotency-Key"):
        commands.check_key(key)


@pytest.mark.parametrize("key", ["a", "k" * 128, "award:2026-11:earnings:1", "A.b_c-D:9"])
def test_good_idempotency_keys(key: str) -> None:
    assert commands.check_key(key) == key


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not JSON"),
        (b"NaN", "not JSON"),
        (b'{"amount_cents": NaN}', "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "body is"),
        (b'{"amount_cents": 1, "amount": 2}', "unknown field 'amount'"),
    ],
)
def test_hostile_raw_bodies(raw: bytes, message: str) -> None:
    with pytest.raises(commands.CommandError, match=message):
        commands.parse_body(raw, ("amount_cents", "channel"))


def test_empty_body_is_an_empty_object_and_the_hash_ignores_layout() -> None:
    assert commands.parse_body(b"  ", ("reason",)) == {}
    a = commands.parse_body(b'{"amount_cents": 5000, "channel": "bank"}', ("amount_cents", "channel"))
    b = commands.parse_body(b'{"channel":"bank","amount_cents":5000}', ("amount_cents", "channel"))
    assert commands.request_hash("POST", "/p", a) == commands.request_hash("POST", "/p", b)
    assert commands.request_hash("POST", "/p", a) != commands.request_hash("POST", "/q", a)
    assert commands.request_hash("POST", "/p", a) != commands.request_hash("POST", "/p", {**a, "amount_cents": 5001})
