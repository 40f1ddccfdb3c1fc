"""Input events of the contract, and the one place where raw Kafka bytes are decoded and validated.

One msgspec decoder per topic parses and validates a record in one pass (strict types, bounds, required
fields); `__post_init__` adds the cross-field rules and the event time in epoch milliseconds. What each
rule means for other producers' bytes (BOM, offsets, NaN, duplicate keys, ...) is in docs/decisions.md,
"Decoding records from other producers". schemas/publish.py turns these same types into JSON Schemas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Final, Literal

import msgspec

from streams import names

MAX_AMOUNT_CENTS: Final = 10**12
MAX_ID_LEN: Final = 128

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LEN)]
Cents = Annotated[int, msgspec.Meta(ge=0, le=MAX_AMOUNT_CENTS)]
SignedCents = Annotated[int, msgspec.Meta(ge=-MAX_AMOUNT_CENTS, le=MAX_AMOUNT_CENTS)]
PositiveCents = Annotated[int, msgspec.Meta(ge=1, le=MAX_AMOUNT_CENTS)]
Text = Annotated[str, msgspec.Meta(min_length=1)]

# RFC 3339 date-time (section 5.6) with the calendar checked in the pattern itself (month lengths, Feb 29
# only in leap years, no leap second), so the published JSON Schema refuses exactly what the decoder
# refuses. Years 1900-2299: what ClickHouse's DateTime64 stores, and format_ts never overflows.
# `$(?!\n)`: Python's `$` also matches before a final newline, ECMA-262's does not.
_YEAR = r"(?:19[0-9]{2}|2[0-2][0-9]{2})"
_LEAP_YEAR = r"(?:19(?:0[48]|[2468][048]|[13579][26])|2[0-2](?:0[48]|[2468][048]|[13579][26])|2000)"
_DATE = (
    rf"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    rf"|{_LEAP_YEAR}-02-29)"
)
_TIME = r"[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?"
_ZONE = r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
TS_PATTERN: Final = rf"^{_DATE}{_TIME}{_ZONE}$(?!\n)"
TS_HINT: Final = (
    "must be an RFC 3339 date-time with a zone, like 2026-11-11T00:00:00.000Z "
    "(a real date in 1900-2299, seconds 00-59, at most 9 fractional digits)"
)
_TS_MATCH = re.compile(TS_PATTERN).match
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@lru_cache(maxsize=4096)
def _day_ms(day: str) -> int:
    """Epoch ms of a YYYY-MM-DD midnight UTC; cached because a stream's events share a handful of days."""
    return (date(int(day[:4]), int(day[5:7]), int(day[8:10])).toordinal() - _EPOCH_ORDINAL) * 86_400_000


@lru_cache(maxsize=8192)
def _second_ms(prefix: str) -> int:
    """Epoch ms of a valid YYYY-MM-DDTHH:MM:SS in UTC, cached: a stream's events share their seconds."""
    if _TS_MATCH(prefix + "Z") is None:
        raise ValueError(f"ts: {TS_HINT}")
    return (
        _day_ms(prefix[:10]) + int(prefix[11:13]) * 3_600_000 + int(prefix[14:16]) * 60_000 + int(prefix[17:19]) * 1000
    )


def parse_ts_ms(value: str) -> int:
    """RFC 3339 with a zone to the true UTC instant in epoch ms (finer digits truncated); else ValueError."""
    if len(value) == 24 and value[19] == "." and value[23] in "Zz" and value.isascii() and value[20:23].isdigit():
        return _second_ms(value[:19]) + int(value[20:23])  # the contract's own form, most of the traffic
    if _TS_MATCH(value) is None:
        raise ValueError(f"ts: {TS_HINT}")
    ms = _second_ms(value[:19])
    last = value[-1]
    end = len(value) - 1 if last in "Zz" else len(value) - 6
    if value[19] == ".":
        ms += int(value[20:end][:3].ljust(3, "0"))
    if end != len(value) - 1:
        offset_ms = int(value[end + 1 : end + 3]) * 3_600_000 + int(value[end + 4 : end + 6]) * 60_000
        ms += -offset_ms if value[end] == "+" else offset_ms
    return ms


@lru_cache(maxsize=4096)
def format_ts(ms: int) -> str:
    """Epoch ms to the contract's canonical form, 2026-11-11T00:00:00.000Z; cached, as an event's entries share it."""
    return f"{_second_str(ms // 1000)}.{ms % 1000:03d}Z"


@lru_cache(maxsize=8192)
def _second_str(second: int) -> str:
    """YYYY-MM-DDTHH:MM:SS of an epoch second, cached: every entry of an event, and its neighbours, share it."""
    return f"{datetime.fromtimestamp(second, tz=UTC):%Y-%m-%dT%H:%M:%S}"


class _Event(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """Fields every event has; unknown extra fields are ignored, as the contract allows."""

    event_id: Id
    ts: str

    topic: ClassVar[str]

    def __post_init__(self) -> None:
        # Not a field: a producer's own `ts_ms` key stays an ignored extra, and the event stays frozen.
        self.__dict__["_ts_ms"] = parse_ts_ms(self.ts)

    @property
    def ts_ms(self) -> int:
        """The event time in epoch milliseconds, computed once at decode."""
        ms: int = self.__dict__["_ts_ms"]
        return ms

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain JSON-ready dict (ts in canonical UTC form), for the ClickHouse sink."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        out["ts"] = format_ts(self.ts_ms)
        return out


class Click(_Event, frozen=True, kw_only=True):
    """A visitor opened a distributor's share link."""

    topic: ClassVar[str] = names.CLICKS
    visitor_id: Id
    ref: Id
    campaign_id: Id | None = None
    product_id: Id | None = None
    ip: str | None = None
    user_agent: str | None = None


class Signup(_Event, frozen=True, kw_only=True):
    """A new user; a distributor unless distributor is false."""

    topic: ClassVar[str] = names.SIGNUPS
    user_id: Id
    ref: Id | None = None
    visitor_id: Id | None = None
    distributor: bool = True


OrderType = Literal["paid", "refunded", "completed", "cancelled"]
AMOUNT_REQUIRED_ON: Final = ("paid", "refunded")


class Item(msgspec.Struct, frozen=True, kw_only=True):
    """One product line of an order (contract v2): its SKU and the cents of the order it accounts for."""

    sku_id: Id
    amount_cents: Cents


Items = Annotated[tuple[Item, ...], msgspec.Meta(min_length=1)]


class Order(_Event, frozen=True, kw_only=True):
    """One step of an order's life; all steps of one order share the buyer key."""

    topic: ClassVar[str] = names.ORDERS
    order_id: Id
    type: OrderType
    buyer_id: Id
    amount_cents: Cents | None = None
    campaign_id: Id | None = None
    ref: Id | None = None
    visitor_id: Id | None = None
    items: Items | None = None

    def __post_init__(self) -> None:
        _Event.__post_init__(self)  # not super(): this runs per record, and super() costs a microsecond here
        if self.type in AMOUNT_REQUIRED_ON:
            if self.amount_cents is None:
                raise ValueError(f"amount_cents: required on a {self.type} order")
            if self.items is not None:
                _check_items(self.items, self.amount_cents)
        elif self.items is not None:
            raise ValueError(f"items: only on paid and refunded orders, not on a {self.type} one")

    def as_dict(self) -> dict[str, Any]:
        """As _Event.as_dict, with items a list of plain dicts as in the JSON it came from."""
        out = super().as_dict()
        if out["items"] is not None:
            out["items"] = list(out["items"])
        return out


def _check_items(items: tuple[Item, ...], amount_cents: int) -> None:
    """Items name each SKU once and account for the order's amount exactly, or the order is refused."""
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.sku_id in seen:
            raise ValueError(f"items[{i}].sku_id: {item.sku_id!r} appears twice; each sku_id once per order")
        seen.add(item.sku_id)
    total = sum(item.amount_cents for item in items)
    if total != amount_cents:
        raise ValueError(f"items: amounts add up to {total}, not to the order's amount_cents {amount_cents}")


class Tier(_Event, frozen=True, kw_only=True):
    """An operator (or the tier evaluator) moved a user to another tier."""

    topic: ClassVar[str] = names.TIERS
    user_id: Id
    tier: Id


DistributorState = Literal["active", "frozen", "revoked"]


class DistributorStatus(_Event, frozen=True, kw_only=True):
    """Contract v2: an operator approved, froze or revoked a distributor."""

    topic: ClassVar[str] = names.DISTRIBUTORS
    user_id: Id
    status: DistributorState
    reason: str | None = None


class Adjustment(_Event, frozen=True, kw_only=True):
    """Contract v2: an operator's manual credit (+) or debit (-) on a distributor's available balance."""

    topic: ClassVar[str] = names.ADJUSTMENTS
    adjustment_id: Id
    distributor_id: Id
    amount_cents: SignedCents
    reason: Text

    def __post_init__(self) -> None:
        _Event.__post_init__(self)
        if self.amount_cents == 0:
            raise ValueError("amount_cents: must not be 0 (an adjustment moves money)")


WithdrawalType = Literal["requested", "approved", "rejected", "paid", "failed"]


class Withdrawal(_Event, frozen=True, kw_only=True):
    """Contract v2: one step of a withdrawal (提现); the amount is named when it is requested."""

    topic: ClassVar[str] = names.WITHDRAWALS
    withdrawal_id: Id
    distributor_id: Id
    type: WithdrawalType
    amount_cents: PositiveCents | None = None
    channel: Id | None = None

    def __post_init__(self) -> None:
        _Event.__post_init__(self)
        if self.type == "requested" and self.amount_cents is None:
            raise ValueError("amount_cents: required on a requested withdrawal")


Event = Click | Signup | Order | Tier | DistributorStatus | Adjustment | Withdrawal

MODEL_BY_TOPIC: dict[str, type[_Event]] = {
    cls.topic: cls for cls in (Tier, Click, Signup, Order, DistributorStatus, Adjustment, Withdrawal)
}
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {t: msgspec.json.Decoder(cls) for t, cls in MODEL_BY_TOPIC.items()}


@dataclass(frozen=True, slots=True)
class Invalid:
    """A record that cannot be an event: why, and whatever id could be read."""

    detail: str
    event_id: str | None
    ts: str | None


class _Ids(msgspec.Struct):
    """Whatever event_id and ts a refused object carries, read only to label its dead letter."""

    event_id: Any = None
    ts: Any = None


_IDS = msgspec.json.Decoder(_Ids)
_BOM = b"\xef\xbb\xbf"
_AT = " - at `$"
_MISSING = "Object missing required field `"


def _detail(e: msgspec.ValidationError) -> str:
    """msgspec's message with the field first ("amount_cents: Expected `int`..."), as dead letters show it."""
    msg = str(e)
    where = ""
    if _AT in msg:
        msg, _, path = msg.partition(_AT)
        where = path.rstrip("`").lstrip(".")
    if msg.startswith(_MISSING):
        field = msg[len(_MISSING) :].rstrip("`")
        return f"{where}.{field}: required field missing" if where else f"{field}: required field missing"
    if not where and msg.startswith("Expected `object`, got `"):
        return f"value must be a JSON object, got {msg.rsplit('`', 2)[1]}"
    return f"{where}: {msg}" if where else msg


def decode(topic: str, raw: bytes | str | None) -> Event | Invalid:
    """Decode and validate one record value; never raises on bad input."""
    decoder = _DECODERS.get(topic)
    if decoder is None:
        return Invalid(f"not an input topic: {topic}", None, None)
    if raw is None:
        return Invalid("empty record (null value)", None, None)
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError as e:
            return Invalid(f"not UTF-8: {e.reason} at character {e.start}", None, None)
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return Invalid(f"not UTF-8: {e.reason} at byte {e.start}", None, None)
    try:
        ev: Event = decoder.decode(raw)
    except msgspec.ValidationError as e:
        return _invalid(_detail(e), raw)
    except msgspec.DecodeError as e:
        return Invalid(f"not JSON: {e}", None, None)
    except RecursionError:
        return Invalid("not JSON: nested too deeply to decode", None, None)
    return ev


def _invalid(detail: str, raw: bytes) -> Invalid:
    """The refusal, with the record's event_id and ts if they are readable."""
    try:
        ids = _IDS.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return Invalid(detail, None, None)
    return Invalid(detail, _readable_id(ids.event_id), _readable_id(ids.ts))


def _readable_id(v: object) -> str | None:
    return v if isinstance(v, str) and 0 < len(v) <= MAX_ID_LEN else None
