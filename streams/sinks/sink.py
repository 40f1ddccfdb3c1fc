"""Batching ClickHouse sink for the pipeline's records, and the report queries that read them back.

Shape of quix-streams' BatchingSink: `add(table, row)` buffers, `flush()` writes one batch per
table and is what the caller runs before committing Kafka offsets; if it raises, the offsets
must not be committed (the records will be offered again, and that is safe).

Exactly-once into ClickHouse on top of at-least-once delivery: every table has a dedupe key
(entry_id, event_id, or the whole binding record). Rows are deduplicated within the buffer on
`add`, and before each insert the sink asks the table which of the chunk's keys it already
holds (one parameterized query per chunk of up to 100k rows; on a server, per 120 KB of keys,
its parameter size limit) and inserts only the others. A replayed batch, with
any boundaries, therefore inserts nothing twice, and the materialized views, which sum every
inserted row, never see a duplicate. A failed insert is retried with exponential backoff and
the existence check is redone before every attempt, so an insert that did land but reported a
failure (a timeout, say) is not written again.

Assumption: one sink at a time writes a given key, so no one inserts it between our check and
our insert. The worker guarantees it: it is the tables' only writer, and a key comes from one
Kafka partition, which the consumer group gives to one worker (a rebalance is the exception:
the old owner may still be flushing while the new one replays). Should a duplicate get in anyway (a second
writer, a manual insert, a server-side retry), the raw tables are ReplacingMergeTree keyed on
the dedupe key and every report below reads them with FINAL, so reports stay right; only the
summed aggregate tables would be off, and rebuild_aggregates() recomputes them from the raw rows.

Rows are validated (kind, level, integer cents) on add(), so a bad row fails its producer at
once instead of blocking every later flush. flush() is blocking: an asyncio caller runs it in a
thread, and add() may go on meanwhile (rows added during a flush wait for the next one). Both
pause the cyclic GC while they churn through large buffers.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from itertools import compress
from operator import itemgetter
from typing import Any, NamedTuple, cast

from streams.sinks.clickhouse import ClickHouse, ClickHouseError, ms_at_most

log = logging.getLogger(__name__)

LEDGER = "ledger_entries"
BINDINGS = "bindings"
CLICKS = "clicks"
ORDERS = "orders"
DEAD_LETTERS = "dead_letters"
TIER_EVENTS = "tier_events"
LIMITED_CLICKS = "limited_clicks"
WITHDRAWAL_STATES = "withdrawal_states"

KINDS: tuple[str, ...] = ("accrued", "reversed", "settled", "clawed_back")
# Contract v2's money-out kinds: level 0, no order, a withdrawal_id or adjustment_id instead.
MONEY_OUT_KINDS: tuple[str, ...] = ("held", "released", "withdrawn", "adjusted")
ALL_KINDS: tuple[str, ...] = KINDS + MONEY_OUT_KINDS
_KIND_SET = frozenset(KINDS)
_MONEY_OUT_SET = frozenset(MONEY_OUT_KINDS)
WITHDRAWAL_STATUSES: tuple[str, ...] = ("requested", "approved", "rejected", "paid", "failed")
_STATUS_SET = frozenset(WITHDRAWAL_STATUSES)

Row = Mapping[str, Any]
Values = tuple[object, ...]
_KEYS_PARAM = "JSONExtract({keys:String}, 'Array(String)')"
# Backends without a max_param_bytes attribute get lookups small enough for a server's 128 KiB limit.
_DEFAULT_PARAM_BYTES = 120_000


def _cents(value: object, what: str) -> object:
    """Money is integer cents: refuse floats (and bools) before they reach an Int64 column."""
    if value is not None and type(value) is not int:
        raise TypeError(f"{what} must be integer cents, got {type(value).__name__} {value!r}")
    return value


def _ledger_values(r: Row) -> Values:
    """A ledger entry as ledger_entries values; v2 nulls become '', a v1 record's values stop before the v2 columns."""
    kind, level = r["kind"], r["level"]
    if kind in _KIND_SET:
        if type(level) is not int or not 1 <= level <= 3:
            raise ValueError(f"ledger entry {r.get('entry_id')!r}: level must be 1, 2 or 3, got {level!r}")
    elif kind in _MONEY_OUT_SET:
        if type(level) is not int or level != 0:
            raise ValueError(f"ledger entry {r.get('entry_id')!r}: a {kind} entry has level 0, got {level!r}")
        if not r.get("withdrawal_id" if kind != "adjusted" else "adjustment_id"):
            what = "adjustment_id" if kind == "adjusted" else "withdrawal_id"
            raise ValueError(f"ledger entry {r.get('entry_id')!r}: a {kind} entry needs its {what}")
    else:
        raise ValueError(f"ledger entry {r.get('entry_id')!r}: unknown kind {kind!r}")
    head = (
        r["entry_id"],
        r["source_event_id"],
        r["ts"],
        r["order_id"] or "",
        r["buyer_id"] or "",
        r["beneficiary_id"],
        level,
        kind,
        amount if type(amount := r["amount_cents"]) is int else _cents(amount, "amount_cents"),
        r["campaign_id"] or "",
    )
    if len(r) == len(head):
        # The ten fields read above are all a v1 record has (the engine writes the v2 ones only when set):
        # the five v2 columns stay out of the values and the table fills their DEFAULTs ('' and NULL).
        return head
    return (
        *head,
        r.get("withdrawal_id") or "",
        r.get("adjustment_id") or "",
        r.get("reason") or "",
        _cents(r.get("fee_cents"), "fee_cents"),
        _cents(r.get("payout_cents"), "payout_cents"),
    )


def _withdrawal_state_values(r: Row) -> Values:
    """A fenxiao.withdrawal-states record as withdrawal_states values; a null channel becomes ''."""
    status = r["status"]
    if status not in _STATUS_SET:
        raise ValueError(f"withdrawal state {r.get('id')!r}: unknown status {status!r}")
    return (
        r["id"],
        r["withdrawal_id"],
        r["distributor_id"],
        status,
        _cents(r["amount_cents"], "amount_cents"),
        r.get("channel") or "",
        _cents(r.get("fee_cents"), "fee_cents"),
        _cents(r.get("payout_cents"), "payout_cents"),
        r["ts"],
        r.get("event_id") or "",
    )


def _binding_values(r: Row) -> Values:
    """A fenxiao.bindings record as bindings values (inviter_id stays None when unbound)."""
    return (r["user_id"], r["inviter_id"], r["ts"], r["source"])


def _click_values(r: Row) -> Values:
    """A click input event as clicks values; absent optional fields become ''."""
    return (
        r["event_id"],
        r["ts"],
        r["visitor_id"],
        r["ref"],
        r.get("campaign_id") or "",
        r.get("product_id") or "",
        r.get("ip") or "",
        r.get("user_agent") or "",
    )


def _order_values(r: Row) -> Values:
    """An order input event as orders values; amount_cents stays None when absent."""
    return (
        r["event_id"],
        r["ts"],
        r["order_id"],
        r["type"],
        r["buyer_id"],
        _cents(r.get("amount_cents"), "amount_cents"),
        r.get("campaign_id") or "",
        r.get("ref") or "",
        r.get("visitor_id") or "",
    )


def _ts_or_none(value: object) -> datetime | None:
    """A dead letter's ts as a datetime, or None: it may be whatever unreadable text the bad input carried."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _dead_letter_values(r: Row) -> Values:
    """A fenxiao.dead-letters record as dead_letters values; the key is the input record's position."""
    return (
        int(r["offset"]),
        r["topic"],
        int(r["partition"]),
        r.get("event_id") or "",
        r["reason"],
        r.get("detail") or "",
        r.get("raw") or "",
        _ts_or_none(r.get("ts")),
    )


def _limited_click_values(r: Row) -> Values:
    """A fenxiao.clicks-limited record as limited_clicks values; absent optional fields become ''."""
    return (
        r["event_id"],
        r["ts"],
        r["visitor_id"],
        r.get("ip") or "",
        r["ref"],
        r.get("campaign_id") or "",
        r["reason"],
    )


def _tier_values(r: Row) -> Values:
    """A fenxiao.tiers input event as tier_events values."""
    return (r["event_id"], r["ts"], r["user_id"], r["tier"])


def _epoch_ms(ts: object) -> int:
    """Milliseconds since the epoch of an RFC 3339 string or datetime, to compare with what ClickHouse stores."""
    moment = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
    if not isinstance(moment, datetime):
        raise TypeError(f"ts must be an RFC 3339 string or datetime, got {type(ts).__name__}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MILLISECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC) - _EPOCH


@dataclass(frozen=True)
class _Table:
    """How one table is fed: its columns, how a row becomes values, and its dedupe key on both sides."""

    name: str
    columns: tuple[str, ...]
    values: Callable[[Row], Values]
    key: Callable[[Values], Hashable]
    lookup: str  # the column the existence check filters on (first value of the key)
    stored_key: str  # select list whose rows, passed to `from_stored`, equal `key` of the stored values
    from_stored: Callable[[tuple[Any, ...]], Hashable]
    composite: bool = False  # key is a tuple whose first element is the lookup value (else the key is that value)
    # The values of the trailing columns a values tuple may leave out: the table's DEFAULTs for them.
    defaults: tuple[object, ...] = ()

    def shaped(self, rows: list[Values]) -> tuple[tuple[str, ...], list[Values]]:
        """Columns and rows for one INSERT: without the trailing columns no row has, else every row padded to all."""
        if not self.defaults:
            return self.columns, rows
        short = len(self.columns) - len(self.defaults)
        if max(map(len, rows)) == short:
            return self.columns[:short], rows
        full = len(self.columns)
        return self.columns, [v if len(v) == full else v + self.defaults[len(v) - short :] for v in rows]

    def existing(self, ch: ClickHouse, keys: Sequence[Hashable]) -> set[Hashable]:
        """The keys among `keys` the table holds already: one query per parameter-sized group of keys."""
        # The keys travel as one JSON string parsed by JSONExtract: ~1 µs per key. An Array(String)
        # parameter becomes a literal in the query AST, and IN analyses that in time quadratic in its size.
        lookups = list(dict.fromkeys(cast(tuple[Any, ...], k)[0] for k in keys)) if self.composite else list(keys)
        sql = f"SELECT {self.stored_key} FROM {self.name} WHERE {self.lookup} IN (SELECT arrayJoin({_KEYS_PARAM}))"
        limit: int | None = getattr(ch, "max_param_bytes", _DEFAULT_PARAM_BYTES)
        found: set[Hashable] = set()
        for group in _within(lookups, limit):
            found.update(map(self.from_stored, ch.query(sql, {"keys": json.dumps(group)})))
        return found


def _maybe_stored(ch: ClickHouse, spec: _Table, keys: list[Hashable], rows: list[Values]) -> list[Hashable]:
    """The keys of a chunk's rows that may be stored already: where the key fixes the ts, none newer than the newest."""
    if spec.name not in _TS_FIXED_BY_KEY:
        return keys
    at = spec.columns.index("ts")
    newest = ch.query(f"SELECT toUnixTimestamp64Milli(max(ts)), count() > 0 FROM {spec.name}")[0]
    if not newest[1]:
        return []
    # A stored copy of a row has the row's ts at millisecond precision: one more ms covers any rounding.
    bound = int(newest[0]) + 1
    older = ms_at_most(list(map(itemgetter(at), rows)), bound)
    if older is None:
        return [key for key, values in zip(keys, rows, strict=True) if _epoch_ms(values[at]) <= bound]
    return list(compress(keys, older))


def _within(keys: list[Any], limit: int | None) -> Iterator[list[Any]]:
    """Consecutive groups of keys whose JSON fits in `limit` bytes (all at once when there is no limit)."""
    if limit is None:
        yield keys
        return
    group: list[Any] = []
    size = 2
    for key in keys:
        text = json.dumps(key)
        length = len(text) + text.count("\\") + 1  # a backslash is escaped once more in the parameter
        if group and size + length > limit:
            yield group
            group, size = [], 2
        group.append(key)
        size += length
    if group:
        yield group


# The key of event-like tables is their first column (entry_id / event_id), in a buffered row and in a
# row of the existence check alike; itemgetter keeps the per-row cost of add() in C.
_first: Callable[[tuple[Any, ...]], Hashable] = itemgetter(0)


def _binding_key(values: Values) -> Hashable:
    """A binding record is its own key: a replay repeats it exactly, a new decision differs in some field."""
    user_id, inviter_id, ts, source = values
    return (user_id, inviter_id, _epoch_ms(ts), source)


TABLES: dict[str, _Table] = {
    LEDGER: _Table(
        LEDGER,
        (
            "entry_id",
            "source_event_id",
            "ts",
            "order_id",
            "buyer_id",
            "beneficiary_id",
            "level",
            "kind",
            "amount_cents",
            "campaign_id",
            "withdrawal_id",
            "adjustment_id",
            "reason",
            "fee_cents",
            "payout_cents",
        ),
        _ledger_values,
        _first,
        "entry_id",
        "DISTINCT entry_id",
        _first,
        defaults=("", "", "", None, None),
    ),
    BINDINGS: _Table(
        BINDINGS,
        ("user_id", "inviter_id", "ts", "source"),
        _binding_values,
        _binding_key,
        "user_id",
        "DISTINCT user_id, inviter_id, toUnixTimestamp64Milli(ts), source",
        lambda row: (row[0], row[1], int(row[2]), row[3]),
        composite=True,
    ),
    CLICKS: _Table(
        CLICKS,
        ("event_id", "ts", "visitor_id", "ref", "campaign_id", "product_id", "ip", "user_agent"),
        _click_values,
        _first,
        "event_id",
        "DISTINCT event_id",
        _first,
    ),
    ORDERS: _Table(
        ORDERS,
        ("event_id", "ts", "order_id", "type", "buyer_id", "amount_cents", "campaign_id", "ref", "visitor_id"),
        _order_values,
        _first,
        "event_id",
        "DISTINCT event_id",
        _first,
    ),
    # Keyed by the input record's (offset, topic, partition): the engine never dead-letters one record twice,
    # and a replayed dead letter repeats the position. The lookup on the offset text is a scan, but the table is small.
    DEAD_LETTERS: _Table(
        DEAD_LETTERS,
        ("offset", "topic", "partition", "event_id", "reason", "detail", "raw", "ts"),
        _dead_letter_values,
        lambda values: (str(values[0]), values[1], values[2]),
        "toString(offset)",
        "DISTINCT toString(offset), topic, partition",
        lambda row: (str(row[0]), str(row[1]), int(row[2])),
        composite=True,
    ),
    TIER_EVENTS: _Table(
        TIER_EVENTS,
        ("event_id", "ts", "user_id", "tier"),
        _tier_values,
        _first,
        "event_id",
        "DISTINCT event_id",
        _first,
    ),
    LIMITED_CLICKS: _Table(
        LIMITED_CLICKS,
        ("event_id", "ts", "visitor_id", "ip", "ref", "campaign_id", "reason"),
        _limited_click_values,
        _first,
        "event_id",
        "DISTINCT event_id",
        _first,
    ),
    # One row per accepted transition: the worker's id "<withdrawal_id>:<status>" is the dedupe key.
    WITHDRAWAL_STATES: _Table(
        WITHDRAWAL_STATES,
        (
            "id",
            "withdrawal_id",
            "distributor_id",
            "status",
            "amount_cents",
            "channel",
            "fee_cents",
            "payout_cents",
            "ts",
            "event_id",
        ),
        _withdrawal_state_values,
        _first,
        "id",
        "DISTINCT id",
        _first,
    ),
}


# Tables whose dedupe key fixes the row's ts (deterministic engine outputs: an entry id, a binding's own fields):
# a row newer than every stored row cannot be stored yet, so its existence check is skipped (live traffic is
# almost all such rows). Input-event tables are left out: a producer may reuse an event_id with another ts.
_TS_FIXED_BY_KEY = frozenset({LEDGER, BINDINGS})


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC during bulk work: it would rescan the big, acyclic buffer over and over (~20% of a flush)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class SinkWriteError(ClickHouseError):
    """A table's rows could not be written after every retry: do not commit the offsets they came from."""

    def __init__(self, table: str, attempts: int, cause: BaseException) -> None:
        self.table = table
        self.attempts = attempts
        super().__init__(f"writing {table} to ClickHouse failed after {attempts} attempts: {cause}")


class ClickHouseSink:
    """Buffers rows per table and writes each table's new rows in bulk on flush(), deduplicated and retried."""

    def __init__(
        self,
        ch: ClickHouse,
        *,
        max_attempts: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        chunk_rows: int = 100_000,
        retry_on: tuple[type[BaseException], ...] = (ClickHouseError, OSError),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1 or base_delay < 0 or max_delay < base_delay or chunk_rows < 1:
            raise ValueError("need max_attempts >= 1, 0 <= base_delay <= max_delay and chunk_rows >= 1")
        self._ch = ch
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.chunk_rows = chunk_rows
        self.retry_on = retry_on
        self._sleep = sleep
        self._buffers: dict[str, dict[Hashable, Values]] = {}
        # add() may run on the event loop while flush() runs in a thread: buffers are swapped, not shared.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ClickHouseSink buffered={self.buffered()}>"

    def add(self, table: str, row: Row) -> None:
        """Buffer one row; a row whose key is already buffered is dropped (a redelivery within the batch)."""
        spec = TABLES.get(table)
        if spec is None:
            raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
        values = spec.values(row)
        key = spec.key(values)
        with self._lock:
            self._buffers.setdefault(table, {}).setdefault(key, values)

    def add_many(self, table: str, rows: Iterable[Row]) -> None:
        """add() for many rows of one table, with the lookups hoisted and the GC paused (bulk loads, replays)."""
        spec = TABLES.get(table)
        if spec is None:
            raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
        to_values, key_of = spec.values, spec.key
        with self._lock, _gc_paused():
            buffer = self._buffers.setdefault(table, {})
            for row in rows:
                values = to_values(row)
                buffer.setdefault(key_of(values), values)

    def buffered(self) -> dict[str, int]:
        """Rows waiting per table (after in-batch dedupe)."""
        with self._lock:
            return {table: len(rows) for table, rows in self._buffers.items()}

    def flush(self) -> dict[str, int]:
        """Write every buffered table and return the rows inserted per table; raise (keeping the rows) if one fails."""
        # Each table's buffer is taken out before writing, so rows added meanwhile wait for the next flush.
        # On SinkWriteError the unwritten tables go back into the buffer: a later flush() retries them,
        # and its existence checks skip whatever the failed attempt did write.
        inserted: dict[str, int] = {}
        with self._lock:
            taken, self._buffers = self._buffers, {}
        try:
            with _gc_paused():
                for table in list(taken):
                    started = time.perf_counter()
                    inserted[table] = self._write(TABLES[table], taken[table])
                    rows = taken.pop(table)
                    elapsed = time.perf_counter() - started
                    log.debug("sink: %s %d offered, %d new in %.3fs", table, len(rows), inserted[table], elapsed)
        finally:
            if taken:
                self._put_back(taken)
        return inserted

    def _put_back(self, taken: dict[str, dict[Hashable, Values]]) -> None:
        """Return unwritten rows to the buffer, ahead of rows added since (their order is the input order)."""
        with self._lock:
            for table, rows in taken.items():
                for key, values in self._buffers.pop(table, {}).items():
                    rows.setdefault(key, values)
                self._buffers[table] = rows

    def _write(self, spec: _Table, buffer: dict[Hashable, Values]) -> int:
        """Write a table's rows in chunks small enough for one INSERT block (atomic) and one existence query."""
        size = self.chunk_rows
        keys, rows = list(buffer), list(buffer.values())
        return sum(self._write_chunk(spec, keys[i : i + size], rows[i : i + size]) for i in range(0, len(keys), size))

    def _write_chunk(self, spec: _Table, keys: list[Hashable], chunk: list[Values]) -> int:
        """Check, then insert what is new; on failure back off and check again, so nothing lands twice."""
        attempt = 1
        while True:
            try:
                candidates = _maybe_stored(self._ch, spec, keys, chunk)
                stored = spec.existing(self._ch, candidates) if candidates else set()
                rows = (
                    [values for key, values in zip(keys, chunk, strict=True) if key not in stored] if stored else chunk
                )
                if rows:
                    self._ch.insert(spec.name, *spec.shaped(rows))
                return len(rows)
            except self.retry_on as exc:
                if attempt >= self.max_attempts:
                    raise SinkWriteError(spec.name, attempt, exc) from exc
                delay = self.backoff(attempt)
                log.warning(
                    "sink: writing %s failed (attempt %d/%d), retrying in %.2fs: %s",
                    spec.name,
                    attempt,
                    self.max_attempts,
                    delay,
                    exc,
                )
                self._sleep(delay)
                attempt += 1

    def backoff(self, attempt: int) -> float:
        """Delay after failed attempt n: base * 2^(n-1), capped at max_delay."""
        return float(min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


# --- reports -------------------------------------------------------------------------------------------------------
# Read the raw tables with FINAL (one row per key even if a duplicate got in; the partition key is
# a function of ts, which is fixed per key, so FINAL's per-partition dedupe covers every copy).


def ledger_totals(ch: ClickHouse) -> dict[str, int]:
    """Sum of amount_cents per kind: the four order kinds always, all eight once any money-out entry is stored."""
    rows = {
        str(kind): int(total)
        for kind, total in ch.query(f"SELECT kind, sum(amount_cents) FROM {LEDGER} FINAL GROUP BY kind")
    }
    totals = dict.fromkeys(ALL_KINDS if _MONEY_OUT_SET & set(rows) else KINDS, 0)
    totals.update(rows)
    return totals


# The spec's balances over the eight kinds (Contract v2, "Ledger entries and balances, completed").
_PENDING = "sumIf(amount_cents, kind IN ('accrued', 'reversed')) - sumIf(amount_cents, kind = 'settled')"
_AVAILABLE = "sumIf(amount_cents, kind IN ('settled', 'clawed_back', 'adjusted', 'held', 'released'))"
_RESERVED = "-sumIf(amount_cents, kind IN ('held', 'released')) + sumIf(amount_cents, kind = 'withdrawn')"
_WITHDRAWN = "-sumIf(amount_cents, kind = 'withdrawn')"


def balances(ch: ClickHouse) -> dict[str, tuple[int, int]]:
    """(pending, available) cents per beneficiary; available includes adjustments and what withdrawals hold."""
    rows = ch.query(f"SELECT beneficiary_id, {_PENDING}, {_AVAILABLE} FROM {LEDGER} FINAL GROUP BY beneficiary_id")
    return {str(user): (int(pending), int(available)) for user, pending, available in rows}


class Balance(NamedTuple):
    """The four balances of Contract v2, in cents."""

    pending_cents: int
    available_cents: int
    reserved_cents: int
    withdrawn_cents: int


def balances_v2(ch: ClickHouse) -> dict[str, Balance]:
    """Pending, available, reserved (提现中) and withdrawn (已提现) cents per beneficiary."""
    rows = ch.query(
        f"SELECT beneficiary_id, {_PENDING}, {_AVAILABLE}, {_RESERVED}, {_WITHDRAWN}"
        f" FROM {LEDGER} FINAL GROUP BY beneficiary_id"
    )
    return {str(user): Balance(*(int(v) for v in sums)) for user, *sums in rows}


def has_money_out(ch: ClickHouse) -> bool:
    """Whether any entry of a money-out kind is stored (the outcome then takes the v2 shape, as the engine's does)."""
    rows = ch.query(f"SELECT count() FROM {LEDGER} WHERE kind IN ('held', 'released', 'withdrawn', 'adjusted')")
    return bool(rows and rows[0][0])


def entry_sums(ch: ClickHouse) -> dict[str, int]:
    """Sum of amount_cents keyed "{order}|{level}|{beneficiary_id}|{kind}" (w:<withdrawal> / a:<adjustment> for v2)."""
    rows = ch.query(
        "SELECT multiIf(withdrawal_id != '', concat('w:', withdrawal_id), adjustment_id != '',"
        " concat('a:', adjustment_id), order_id) AS what, level, beneficiary_id, kind, sum(amount_cents)"
        f" FROM {LEDGER} FINAL GROUP BY what, level, beneficiary_id, kind"
    )
    return {f"{order}|{level}|{user}|{kind}": int(total) for order, level, user, kind, total in rows}


def bindings(ch: ClickHouse) -> dict[str, str | None]:
    """Inviter per user (None when unbound), from the latest binding record of each user."""
    rows = ch.query(f"SELECT user_id, inviter_id FROM {BINDINGS} FINAL")
    return {str(user): None if inviter is None else str(inviter) for user, inviter in rows}


class DailyCommission(NamedTuple):
    """One commission_daily row: cents per kind and how many entries were summed."""

    accrued_cents: int
    reversed_cents: int
    settled_cents: int
    clawed_back_cents: int
    entries: int


def daily_commissions(ch: ClickHouse) -> dict[tuple[date, str, int, str], DailyCommission]:
    """The commission_daily aggregate keyed (day, beneficiary_id, level, campaign_id), summed across parts."""
    rows = ch.query(
        "SELECT day, beneficiary_id, level, campaign_id,"
        " sum(accrued_cents), sum(reversed_cents), sum(settled_cents), sum(clawed_back_cents), sum(entries)"
        " FROM commission_daily GROUP BY day, beneficiary_id, level, campaign_id"
    )
    return {
        (day, str(user), int(level), str(campaign)): DailyCommission(*(int(v) for v in sums))
        for day, user, level, campaign, *sums in rows
    }


class CampaignMinute(NamedTuple):
    """One campaign_minute row: paid orders, GMV, refunds and commission accrued, in cents."""

    paid_orders: int
    gmv_cents: int
    refunded_cents: int
    accrued_cents: int


def campaign_minutes(ch: ClickHouse) -> dict[tuple[datetime, str], CampaignMinute]:
    """The campaign_minute aggregate keyed (minute start, campaign_id), summed across parts."""
    rows = ch.query(
        "SELECT minute, campaign_id, sum(paid_orders), sum(gmv_cents), sum(refunded_cents), sum(accrued_cents)"
        " FROM campaign_minute GROUP BY minute, campaign_id"
    )
    return {
        (_as_utc(minute), str(campaign)): CampaignMinute(*(int(v) for v in sums)) for minute, campaign, *sums in rows
    }


def _as_utc(moment: datetime) -> datetime:
    """Aware UTC datetime whichever way the backend returned it (chDB: aware, clickhouse-connect: may be naive)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


_REBUILD = (
    "TRUNCATE TABLE commission_daily",
    "INSERT INTO commission_daily"
    " SELECT toDate(ts) AS day, beneficiary_id, level, campaign_id,"
    " sumIf(amount_cents, kind = 'accrued'), sumIf(amount_cents, kind = 'reversed'),"
    " sumIf(amount_cents, kind = 'settled'), sumIf(amount_cents, kind = 'clawed_back'), count()"
    f" FROM {LEDGER} FINAL WHERE kind IN ('accrued', 'reversed', 'settled', 'clawed_back')"
    " GROUP BY day, beneficiary_id, level, campaign_id",
    "TRUNCATE TABLE campaign_minute",
    "INSERT INTO campaign_minute"
    " SELECT toDateTime(toStartOfMinute(ts), 'UTC') AS minute, campaign_id, countIf(type = 'paid'),"
    " sumIf(ifNull(amount_cents, 0), type = 'paid'), sumIf(ifNull(amount_cents, 0), type = 'refunded'), toInt64(0)"
    f" FROM {ORDERS} FINAL WHERE type IN ('paid', 'refunded') GROUP BY minute, campaign_id",
    "INSERT INTO campaign_minute"
    " SELECT toDateTime(toStartOfMinute(ts), 'UTC') AS minute, campaign_id, toUInt64(0), toInt64(0), toInt64(0),"
    f" sum(amount_cents) FROM {LEDGER} FINAL WHERE kind = 'accrued' GROUP BY minute, campaign_id",
)


def rebuild_aggregates(ch: ClickHouse) -> None:
    """Recompute the summed aggregates from the deduplicated raw tables (worker stopped): the repair for duplicates."""
    # For what the sink cannot prevent: a row inserted behind its back, or an insert whose raw part was
    # committed while its materialized-view part failed. Same expressions as 002_aggregates.sql.
    for statement in _REBUILD:
        ch.command(statement)
