"""Read models for the distributor API: their keys, and the feed and leaderboard commands of a batch.

The projector (streams/state/projector.py, in the `fenxiao sink` process) stages them on a command collector
and writes them with its consumed offsets in one atomic step; they only queue writes (no reads), and
what they need beyond the entries and bindings (an order's paid cents) comes in the `state` argument.
Key layout and caps: docs/api.md.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache

from streams import names
from streams.engine.ledger import ACCRUED, CLAWED_BACK, REVERSED, SETTLED, Binding, Entry, State
from streams.state.referral_store import StagedCommands

# The kinds that change what a distributor earned (the leaderboards' earnings; as the ledger's lifetime figure).
EARNING_KINDS = frozenset((ACCRUED, REVERSED, CLAWED_BACK))

FEED_MAXLEN = 1000
FEED_ALL_MAXLEN = 10_000
TEAM_LEVELS = 3
LIVE_TTL_S = 7200
BOARD_TTL_S = {"day": 90 * 86400, "month": 800 * 86400, "quarter": 800 * 86400}
PERIODS = ("day", "month", "quarter", "all")
METRICS = ("earnings", "gmv", "recruits")


def stream_fields(e: Entry) -> list[str]:
    """A ledger entry as XADD's field-value list: compact names, the same in every entry, so listpacks share them."""
    return [
        "s",
        e.source_event_id,
        "t",
        str(e.ts_ms),
        "o",
        e.order_id or "",
        "b",
        e.buyer_id or "",
        "u",
        e.beneficiary_id,
        "l",
        str(e.level),
        "k",
        e.kind,
        "a",
        str(e.amount_cents),
        "c",
        e.campaign_id or "",
    ]


def entry_fields(e: Entry) -> dict[str, str]:
    """A ledger entry as the stream's fields, as a reader gets them back."""
    flat = stream_fields(e)
    return dict(zip(flat[0::2], flat[1::2], strict=True))


def entry_from_fields(f: Mapping[str, str]) -> Entry:
    """Inverse of entry_fields; the entry id is derived, as the ledger derives it."""
    return Entry(
        entry_id=f"{f['s']}:{f['l']}:{f['k']}",
        source_event_id=f["s"],
        ts_ms=int(f["t"]),
        order_id=f["o"],
        buyer_id=f["b"],
        beneficiary_id=f["u"],
        level=int(f["l"]),
        kind=f["k"],
        amount_cents=int(f["a"]),
        campaign_id=f["c"] or None,
    )


def feed_key(user_id: str) -> str:
    """The per-distributor ledger stream (the feed and the ledger pages read the same stream)."""
    return names.KEY_FEED + user_id


def team_key(level: int, user_id: str) -> str:
    """The zset of a distributor's downline at one level."""
    return f"{names.KEY_TEAM}{level}:{user_id}"


def team_member(b: Binding) -> str:
    """Members sort by bind time under ZRANGEBYLEX (all scores 0), so pages are stable and time-ordered."""
    return f"{b.ts_ms:013d}|{b.user_id}"


@lru_cache(maxsize=4096)
def _day_buckets(day: int) -> tuple[str, str, str]:
    """Day, month and quarter bucket names of a UTC day number: every entry of a day shares them."""
    d = datetime.fromtimestamp(day * 86_400, UTC)
    return d.strftime("%Y-%m-%d"), d.strftime("%Y-%m"), f"{d.year}-Q{(d.month - 1) // 3 + 1}"


@lru_cache(maxsize=4096)
def _board_keys(metric: str, day: int, campaign: str | None) -> tuple[str, ...]:
    """Every leaderboard an entry of that UTC day counts on: one per period, and per period for its campaign."""
    keys: list[str] = []
    for period, name in zip(PERIODS, (*_day_buckets(day), "all"), strict=True):
        keys.append(board_key(metric, period, name))
        if campaign is not None:
            keys.append(board_key(metric, period, name, campaign))
    return tuple(keys)


def bucket(period: str, ts_ms: int) -> str:
    """The UTC bucket name of a timestamp for a leaderboard period."""
    if period == "all":
        return "all"
    day, month, quarter = _day_buckets(ts_ms // 86_400_000)
    if period == "day":
        return day
    if period == "month":
        return month
    if period == "quarter":
        return quarter
    raise ValueError(f"unknown period {period!r}")


def board_key(metric: str, period: str, bucket_name: str, campaign: str | None = None) -> str:
    """A leaderboard zset; the campaign goes last, so a ':' inside it cannot collide with another key."""
    base = f"{names.KEY_BOARD}{metric}:{period}:{bucket_name}"
    return base if campaign is None else f"{base}:{campaign}"


def live_key(second: int, campaign: str | None = None) -> str:
    """A per-second live counter hash, program-wide or for one campaign."""
    return f"{names.KEY_LIVE}{second}" if campaign is None else f"{names.KEY_LIVE}{second}:{campaign}"


def net_cents(e: Entry) -> int:
    """Earnings effect of an entry: commission only; settlement and money out (v2 kinds) are not earnings."""
    return e.amount_cents if e.kind in EARNING_KINDS else 0


def _paid_level1(state: State, entries: Sequence[Entry]) -> Iterator[tuple[Entry, int]]:
    """(accrued level-1 entry, the order's paid cents): one per newly paid, commissioned order."""
    for e in entries:
        if e.kind == ACCRUED and e.level == 1 and e.order_id is not None:
            o = state.orders.get(e.order_id)
            if o is not None:
                yield e, o.paid_cents


class LedgerFeed:
    """Appends every entry to its beneficiary's stream and to the operator-wide stream (SSE ids = stream ids)."""

    def __init__(self, maxlen: int = FEED_MAXLEN, all_maxlen: int = FEED_ALL_MAXLEN) -> None:
        self.maxlen, self.all_maxlen = maxlen, all_maxlen

    def stage(self, pipe: StagedCommands, state: State, entries: Sequence[Entry], bindings: Sequence[Binding]) -> None:
        """XADD with approximate MAXLEN: trimming whole listpack nodes is O(1) amortised."""
        # XADD key MAXLEN ~ n * field value ..., as redis-py's xadd() spells it, with the fields built once.
        cap, all_cap = str(self.maxlen), str(self.all_maxlen)
        for e in entries:
            fields = stream_fields(e)
            pipe.queue(["XADD", feed_key(e.beneficiary_id), "MAXLEN", "~", cap, "*", *fields])
            pipe.queue(["XADD", names.KEY_FEED_ALL, "MAXLEN", "~", all_cap, "*", *fields])


class Leaderboards:
    """Sorted sets per metric, period bucket (by the entry's event ts, UTC) and optionally campaign."""

    def stage(self, pipe: StagedCommands, state: State, entries: Sequence[Entry], bindings: Sequence[Binding]) -> None:
        """Sum the batch first, then one ZINCRBY per key and member (spelled as redis-py's zincrby() does)."""
        incr: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

        def add(metric: str, ts_ms: int, campaign: str | None, who: str, value: int) -> None:
            for key in _board_keys(metric, ts_ms // 86_400_000, campaign):
                incr[key][who] += value

        for e in entries:
            if e.kind != SETTLED:
                add("earnings", e.ts_ms, e.campaign_id, e.beneficiary_id, net_cents(e))
        for e, paid in _paid_level1(state, entries):
            add("gmv", e.ts_ms, e.campaign_id, e.beneficiary_id, paid)
        for bd in bindings:
            if bd.inviter_id is not None:
                add("recruits", bd.ts_ms, None, bd.inviter_id, 1)
        for key, members in incr.items():
            for who, value in members.items():
                if value:
                    pipe.queue(["ZINCRBY", key, str(value), who])
            ttl = BOARD_TTL_S.get(key[len(names.KEY_BOARD) :].split(":", 2)[1])
            if ttl:
                pipe.queue(["EXPIRE", key, str(ttl)])
