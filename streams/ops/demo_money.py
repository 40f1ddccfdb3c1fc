"""The demo's money out: after the sale, operators pay awards, credit, freeze and review withdrawals.

The events go onto the contract v2 input topics like any producer's, so the demo shows the v2 rules
without depending on the write API. Who gets what is decided by running the sale through the pure
engine first (streams.engine.reference): every withdrawal asks for at most half of what its distributor has
available by then, so each one is accepted except the frozen distributor's, which the rules refuse.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.events import format_ts, parse_ts_ms
from streams import names
from streams.engine import reference
from streams.engine.config import Program

AWARD_AMOUNTS = (20000, 10000, 5000)  # rank 1, 2, 3 of the sale month's earnings, as `fenxiao awards issue` pays
ADJUSTMENT_CENTS = 1000
MIN_AVAILABLE_CENTS = 2000  # a withdrawal candidate has at least ¥20 available, so half of it is a sensible request
STEP_MS = 1000
CHANNELS = ("alipay", "wechat", "bank", "alipay", "wechat")
# The five withdrawals' stories, for the candidates in order of available balance (largest first).
STORIES = ("paid", "approved", "requested", "rejected", "frozen")


@dataclass(frozen=True)
class Script:
    """The epilogue's records and a one-line account of each story, for the demo's closing summary."""

    records: list[dict[str, Any]]
    lines: list[str]


def _yuan(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}¥{whole:,}.{frac:02d}"


def _balances(
    records: Sequence[Mapping[str, Any]], program: Program, at_ms: int, month: str
) -> tuple[dict[str, int], dict[str, int]]:
    """(available, earnings in `month`, YYYY-MM) per distributor once the sale is applied and settled by at_ms."""
    run = reference.run(records, program, at_ms)
    available: dict[str, int] = defaultdict(int)
    earnings: dict[str, int] = defaultdict(int)
    for e in run.entries:
        who, kind, cents = str(e["beneficiary_id"]), e["kind"], int(str(e["amount_cents"]))
        if kind in ("settled", "clawed_back"):
            available[who] += cents
        if kind in ("accrued", "reversed", "clawed_back") and str(e["ts"])[:7] == month:
            earnings[who] += cents
    return dict(available), dict(earnings)


def script(records: Sequence[Mapping[str, Any]], program: Program, tag: str = "demo") -> Script:
    """The operators' events after `records` (a sale in apply order), starting once its last freeze has ended."""
    if not records:
        return Script([], [])
    freeze_ms = max(plan.freeze_ms for plan in (program.base, *program.campaigns.values()))
    last_ms = max(parse_ts_ms(r["value"]["ts"]) for r in records)
    start = last_ms + freeze_ms + STEP_MS
    month = format_ts(last_ms)[:7]  # the sale's month, as the leaderboard defaults to the newest ledger month
    available, earnings = _balances(records, program, start, month)
    out: list[dict[str, Any]] = []
    lines: list[str] = []
    clock = start

    def emit(topic: str, key: str, value: dict[str, Any]) -> None:
        nonlocal clock
        n = len(out) + 1
        out.append(
            {"topic": topic, "key": key, "value": {"event_id": f"{tag}-op-{n}", "ts": format_ts(clock), **value}}
        )
        clock += STEP_MS

    candidates = sorted((u for u, c in available.items() if c >= MIN_AVAILABLE_CENTS), key=lambda u: (-available[u], u))
    cast = dict(zip(STORIES, candidates, strict=False))
    if "frozen" in cast:
        emit(
            names.DISTRIBUTORS,
            cast["frozen"],
            {"user_id": cast["frozen"], "status": "frozen", "reason": "demo: payout account under review"},
        )
    if "requested" in cast:
        who, adjustment_id, reason = cast["requested"], f"{tag}-adj-1", "demo: goodwill credit for a late parcel"
        adjustment = {"adjustment_id": adjustment_id, "distributor_id": who, "amount_cents": ADJUSTMENT_CENTS}
        emit(names.ADJUSTMENTS, who, {**adjustment, "reason": reason})
        lines.append(f"adjustment {adjustment_id}: {who} +{_yuan(ADJUSTMENT_CENTS)} (goodwill credit)")
    best = sorted((u for u, c in earnings.items() if c > 0), key=lambda u: (-earnings[u], u))
    for rank, (who, cents) in enumerate(zip(best, AWARD_AMOUNTS, strict=False), 1):
        award_id = f"award:{month}:earnings:{rank}"
        emit(
            names.ADJUSTMENTS,
            who,
            {
                "adjustment_id": award_id,
                "distributor_id": who,
                "amount_cents": cents,
                "reason": f"award: #{rank} of {month} by earnings",
            },
        )
        lines.append(f"award {award_id}: {who} +{_yuan(cents)} (earned {_yuan(earnings[who])} in {month})")
    asked: dict[str, tuple[str, int]] = {}
    for i, story in enumerate(STORIES):
        if story not in cast:
            continue
        who = cast[story]
        wid, cents = f"{tag}-wd-{i + 1}", available[who] // 2 // 100 * 100
        asked[story] = (wid, cents)
        emit(
            names.WITHDRAWALS,
            who,
            {
                "withdrawal_id": wid,
                "distributor_id": who,
                "type": "requested",
                "amount_cents": cents,
                "channel": CHANNELS[i],
            },
        )
    for story, steps in (("paid", ("approved", "paid")), ("approved", ("approved",)), ("rejected", ("rejected",))):
        if story in asked:
            for step in steps:
                who, wid = cast[story], asked[story][0]
                emit(names.WITHDRAWALS, who, {"withdrawal_id": wid, "distributor_id": who, "type": step})
    for story, (wid, cents) in asked.items():
        who = cast[story]
        if story == "paid":
            fee = program.withdrawals.fee(cents)
            what = f"requested, approved, paid (fee {_yuan(fee)}, payout {_yuan(cents - fee)})"
        elif story == "frozen":
            what = "refused: the distributor was frozen just before (distributor_frozen)"
        else:
            what = {
                "approved": "requested, approved: waiting to be paid",
                "requested": "requested: waiting for review",
                "rejected": "requested, rejected: the amount is back in available",
            }[story]
        lines.append(f"withdrawal {wid}: {who} {_yuan(cents)} {what}")
    return Script(out, lines)
