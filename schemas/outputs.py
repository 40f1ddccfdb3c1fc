"""Output records as types, so the published JSON Schemas of output topics come from code like the inputs'.

The worker writes these records as dicts (streams/engine/ledger.py, streams/pipeline/sequencer.py); these structs only
describe them. tests/unit/test_published_schemas.py checks the reference run's records against them.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from schemas.events import MAX_AMOUNT_CENTS, TS_PATTERN, Id

# Outputs always carry the canonical form format_ts writes.
CANONICAL_TS_PATTERN: Final = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$(?!\n)"
CanonicalTs = Annotated[str, msgspec.Meta(pattern=CANONICAL_TS_PATTERN)]
SignedCents = Annotated[int, msgspec.Meta(ge=-MAX_AMOUNT_CENTS, le=MAX_AMOUNT_CENTS)]
NonNegativeCents = Annotated[int, msgspec.Meta(ge=0, le=MAX_AMOUNT_CENTS)]

ORDER_KINDS: Final = ("accrued", "reversed", "settled", "clawed_back")
MONEY_OUT_KINDS: Final = ("held", "released", "withdrawn", "adjusted")
CREDIT_KINDS: Final = ("accrued", "settled", "released")
DEBIT_KINDS: Final = ("reversed", "clawed_back", "held", "withdrawn")
Kind = Literal["accrued", "reversed", "settled", "clawed_back", "held", "released", "withdrawn", "adjusted"]


class CommissionEntry(msgspec.Struct, kw_only=True):
    """One ledger entry per money movement (fenxiao.commissions, key beneficiary_id); entry_id is deterministic."""

    entry_id: Id
    source_event_id: Id
    ts: CanonicalTs
    order_id: Id | None
    buyer_id: Id | None
    beneficiary_id: Id
    level: Annotated[int, msgspec.Meta(ge=0, le=3)]
    kind: Kind
    amount_cents: SignedCents
    campaign_id: Id | None
    withdrawal_id: Id | None = None
    adjustment_id: Id | None = None
    reason: str | None = None
    fee_cents: NonNegativeCents | None = None
    payout_cents: NonNegativeCents | None = None


class BindingRecord(msgspec.Struct, kw_only=True):
    """A user's place in the referral tree as of ts (fenxiao.bindings, key user_id, compacted)."""

    user_id: Id
    inviter_id: Id | None
    ts: CanonicalTs
    source: Literal["signup", "click", "order"]


class DeadLetterRecord(msgspec.Struct, kw_only=True):
    """A refused input record (fenxiao.dead-letters, keyed as its input): where it was, why, and its bytes."""

    topic: str
    partition: Annotated[int, msgspec.Meta(ge=0)]
    offset: Annotated[int, msgspec.Meta(ge=0)]
    event_id: str | None
    reason: str
    detail: str
    raw: str
    ts: str | None


class LimitedClickRecord(msgspec.Struct, kw_only=True):
    """A valid click over the rate limit, kept out of attribution (fenxiao.clicks-limited, key visitor_id)."""

    event_id: Id
    visitor_id: Id
    ip: str | None
    ref: Id
    campaign_id: Id | None
    ts: CanonicalTs
    reason: Literal["visitor_rate", "ip_rate"]


class WithdrawalStateRecord(msgspec.Struct, kw_only=True):
    """One accepted withdrawal transition (fenxiao.withdrawal-states, key distributor_id); id repeats on a replay.

    fee_cents and payout_cents are the fee locked at the request and what the payee gets; null once the
    withdrawal is rejected or failed (nothing is paid). ts is the moving event's ts as it came in.
    """

    id: str
    withdrawal_id: Id
    distributor_id: Id
    status: Literal["requested", "approved", "rejected", "paid", "failed"]
    amount_cents: NonNegativeCents
    channel: Id | None
    fee_cents: NonNegativeCents | None
    payout_cents: NonNegativeCents | None
    ts: Annotated[str, msgspec.Meta(pattern=TS_PATTERN)]
    event_id: Id
