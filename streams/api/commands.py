"""The write API's input records: a request body turned into one contract v2 event, validated as the worker will.

Pure: no I/O, no clock unless none is given. The API produces what these build onto the input topics, so a
command the API accepts is one the engine can decode (schemas.events is the only judge), and its event_id is
derived from the Idempotency-Key, so a retried request that is produced twice is a redelivery to the engine.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from schemas import events
from streams import names

IDEMPOTENCY_KEY: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_BODY_BYTES: Final = 16 * 1024
MAX_REASON_LEN: Final = 1000
TRANSITIONS: Final = ("approved", "rejected", "paid", "failed")
ACTIONS: Final = {"approve": "approved", "reject": "rejected", "paid": "paid", "failed": "failed"}
STATUSES: Final = ("active", "frozen", "revoked")


class CommandError(ValueError):
    """A request the API refuses with 400; the message names the field."""


@dataclass(frozen=True, slots=True)
class Command:
    """One record to produce: topic, key, the event value, and the id the API answers with."""

    topic: str
    key: str
    value: dict[str, Any]
    id: str

    @property
    def event_id(self) -> str:
        """The event's event_id (derived from the Idempotency-Key)."""
        return str(self.value["event_id"])

    def encoded(self) -> tuple[bytes, bytes]:
        """Key and value bytes as the topic carries them (compact UTF-8 JSON)."""
        return self.key.encode("utf-8"), json.dumps(self.value, separators=(",", ":"), ensure_ascii=False).encode()


def check_key(raw: str | None) -> str:
    """The Idempotency-Key header, or CommandError saying what a valid one looks like."""
    if raw is None or raw == "":
        raise CommandError("missing Idempotency-Key header: send one unique key per request (1-128 of A-Za-z0-9._:-)")
    if not IDEMPOTENCY_KEY.fullmatch(raw):
        raise CommandError("Idempotency-Key must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return raw


def check_id(what: str, raw: str) -> str:
    """A path id under the contract's id rules (non-empty, at most 128 characters)."""
    if not 0 < len(raw) <= events.MAX_ID_LEN:
        raise CommandError(f"{what} must be 1-{events.MAX_ID_LEN} characters, got {len(raw)}")
    return raw


def parse_body(raw: bytes, allowed: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object body (empty = {}), strict JSON (no NaN), with no field outside `allowed`."""
    if len(raw) > MAX_BODY_BYTES:
        raise CommandError(f"body is {len(raw)} bytes; at most {MAX_BODY_BYTES}")
    if not raw.strip():
        return {}
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as e:
        raise CommandError(f"body is not JSON: {e}") from None
    except RecursionError:
        raise CommandError("body is not JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise CommandError(f"body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise CommandError(f"unknown field {unknown[0]!r}: this endpoint takes {', '.join(allowed) or 'no fields'}")
    return body


def canonical(body: dict[str, Any]) -> str:
    """The body in one canonical JSON text, so whitespace and key order do not make a different request."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_hash(method: str, path: str, body: dict[str, Any]) -> str:
    """What an Idempotency-Key is bound to: method, path and canonical body."""
    return hashlib.sha256(f"{method}\n{path}\n{canonical(body)}".encode()).hexdigest()


def event_id_for(kind: str, key: str) -> str:
    """Deterministic event_id of the command `kind` made with Idempotency-Key `key` (fits the 128-char id rule)."""
    return "api-" + hashlib.sha256(f"{kind}\n{key}".encode()).hexdigest()[:40]


def _now_ts(now_ms: int | None) -> str:
    return events.format_ts(now_ms if now_ms is not None else time.time_ns() // 1_000_000)


def _reason(body: dict[str, Any], required: bool) -> str | None:
    reason = body.get("reason")
    if reason is None:
        if required:
            raise CommandError("reason: required (a non-empty text saying why, kept in the audit)")
        return None
    if not isinstance(reason, str) or not reason.strip():
        raise CommandError("reason: must be a non-empty string")
    if len(reason) > MAX_REASON_LEN:
        raise CommandError(f"reason: at most {MAX_REASON_LEN} characters, got {len(reason)}")
    return reason


def _validated(topic: str, key: str, value: dict[str, Any], id_: str) -> Command:
    """The command if schemas.events decodes its value exactly as the worker will; CommandError otherwise."""
    cmd = Command(topic, key, value, id_)
    got = events.decode(topic, cmd.encoded()[1])
    if isinstance(got, events.Invalid):
        raise CommandError(got.detail)
    return cmd


def withdrawal_request(key: str, distributor_id: str, body: dict[str, Any], now_ms: int | None = None) -> Command:
    """`requested`: withdrawal_id = the Idempotency-Key; amount_cents a positive integer, channel optional."""
    check_id("distributor id", distributor_id)
    if "amount_cents" not in body:
        raise CommandError("amount_cents: required (a positive whole number of cents)")
    value: dict[str, Any] = {
        "event_id": event_id_for("withdrawal.requested", key),
        "ts": _now_ts(now_ms),
        "withdrawal_id": key,
        "distributor_id": distributor_id,
        "type": "requested",
        "amount_cents": body["amount_cents"],
    }
    if body.get("channel") is not None:
        value["channel"] = body["channel"]
    return _validated(names.WITHDRAWALS, distributor_id, value, key)


def withdrawal_transition(
    key: str, withdrawal_id: str, distributor_id: str, action: str, body: dict[str, Any], now_ms: int | None = None
) -> Command:
    """approve / reject / paid / failed of a known withdrawal; the reason (optional) rides along as an extra field."""
    check_id("withdrawal id", withdrawal_id)
    kind = ACTIONS.get(action)
    if kind is None:
        raise CommandError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    value: dict[str, Any] = {
        "event_id": event_id_for(f"withdrawal.{kind}", key),
        "ts": _now_ts(now_ms),
        "withdrawal_id": withdrawal_id,
        "distributor_id": distributor_id,
        "type": kind,
    }
    reason = _reason(body, required=False)
    if reason is not None:
        value["reason"] = reason
    return _validated(names.WITHDRAWALS, distributor_id, value, f"{withdrawal_id}:{kind}")


def distributor_status(key: str, user_id: str, body: dict[str, Any], now_ms: int | None = None) -> Command:
    """active / frozen / revoked for a user; answered with the event_id (the status has no id of its own)."""
    check_id("distributor id", user_id)
    status = body.get("status")
    if status not in STATUSES:
        raise CommandError(f"status: must be one of {', '.join(STATUSES)}, got {status!r}")
    value: dict[str, Any] = {
        "event_id": event_id_for("distributor.status", key),
        "ts": _now_ts(now_ms),
        "user_id": user_id,
        "status": status,
    }
    reason = _reason(body, required=False)
    if reason is not None:
        value["reason"] = reason
    return _validated(names.DISTRIBUTORS, user_id, value, str(value["event_id"]))


def adjustment(key: str, body: dict[str, Any], now_ms: int | None = None) -> Command:
    """A signed, non-zero credit or debit with a reason; adjustment_id = the Idempotency-Key."""
    who = body.get("distributor_id")
    if not isinstance(who, str):
        raise CommandError("distributor_id: required (the distributor's user_id)")
    check_id("distributor_id", who)
    if "amount_cents" not in body:
        raise CommandError("amount_cents: required (signed whole cents, not 0)")
    value: dict[str, Any] = {
        "event_id": event_id_for("adjustment", key),
        "ts": _now_ts(now_ms),
        "adjustment_id": key,
        "distributor_id": who,
        "amount_cents": body["amount_cents"],
        "reason": _reason(body, required=True),
    }
    return _validated(names.ADJUSTMENTS, who, value, key)
