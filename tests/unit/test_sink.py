"""ClickHouseSink without ClickHouse: buffering, dedupe against stored rows, retries that neither lose nor double.

Also the pure helpers of streams.sinks.clickhouse the sink relies on (parameter text, statement
splitting, URL parsing), which need no engine either.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from streams.sinks.clickhouse import ClickHouseError, ms_at_most, param_text, parse_server_url, split_statements
from streams.sinks.sink import BINDINGS, CLICKS, LEDGER, ORDERS, TABLES, ClickHouseSink, SinkWriteError


def entry(i: int, **overrides: Any) -> dict[str, Any]:
    """A ledger entry (fenxiao.commissions record) with entry_id e<i>."""
    row: dict[str, Any] = {
        "entry_id": f"e{i}",
        "source_event_id": f"ev{i // 3}",
        "ts": "2026-11-11T00:00:00.000Z",
        "order_id": f"o{i // 3}",
        "buyer_id": "b1",
        "beneficiary_id": f"u{i % 4}",
        "level": i % 3 + 1,
        "kind": "accrued",
        "amount_cents": 100 + i,
        "campaign_id": None,
    }
    row.update(overrides)
    return row


def _epoch_ms(ts: str) -> int:
    """What toUnixTimestamp64Milli(ts) returns for a stored ts."""
    moment = datetime.fromisoformat(ts)
    return int(moment.astimezone(UTC).timestamp() * 1000)


class FakeClickHouse:
    """In-memory ClickHouse: keeps inserted value tuples and answers the sink's existence query like the real SQL."""

    def __init__(self) -> None:
        self.tables: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.inserts: list[tuple[str, int]] = []
        self.queries = 0
        self.newest_queries = 0
        self.lookups = 0
        self.asked: list[str] = []

    def command(self, sql: str, params: Mapping[str, object] | None = None) -> None:
        """Nothing to do: the fake has no schema."""

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> list[tuple[Any, ...]]:
        self.queries += 1
        newest = re.fullmatch(r"SELECT toUnixTimestamp64Milli\(max\(ts\)\), count\(\) > 0 FROM (\w+)", sql)
        if newest is not None:
            table = newest.group(1)
            self.newest_queries += 1
            at = TABLES[table].columns.index("ts")
            stamps = [_epoch_ms(str(values[at])) for values in self.tables[table]]
            return [(max(stamps, default=0), bool(stamps))]
        self.lookups += 1
        match = re.search(r"FROM (\w+) WHERE (\w+) IN", sql)
        assert match is not None and params is not None, sql
        table = match.group(1)
        assert match.group(2) == TABLES[table].lookup
        wanted = set(json.loads(str(params["keys"])))
        self.asked.extend(sorted(map(str, wanted)))
        found = [values for values in self.tables[table] if values[0] in wanted]
        if table == BINDINGS:
            return list({(u, i, _epoch_ms(str(ts)), s) for u, i, ts, s in found})
        return list({(values[0],) for values in found})

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        # The sink may leave out trailing columns no row has; the table would fill their DEFAULTs.
        spec = TABLES[table]
        assert tuple(columns) == spec.columns[: len(columns)]
        assert len(spec.columns) - len(columns) <= len(spec.defaults)
        assert all(len(r) == len(columns) for r in rows)
        tail = spec.defaults[len(spec.defaults) - (len(spec.columns) - len(columns)) :] if spec.defaults else ()
        self.inserts.append((table, len(rows)))
        self.tables[table].extend(tuple(r) + tail for r in rows)

    def close(self) -> None:
        """Nothing to release."""

    def keys(self, table: str) -> list[object]:
        """First column of every stored row, duplicates included."""
        return [values[0] for values in self.tables[table]]


class FlakyClickHouse(FakeClickHouse):
    """Fails the first `failures` inserts; with `land_first` the rows are stored before the error (a lost ack)."""

    def __init__(self, failures: int, land_first: bool = False, error: type[Exception] = ClickHouseError) -> None:
        super().__init__()
        self.failures = failures
        self.land_first = land_first
        self.error = error
        self.attempts = 0

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            if self.land_first:
                super().insert(table, columns, rows)
            raise self.error("connection reset by peer")
        super().insert(table, columns, rows)


def new_sink(ch: FakeClickHouse, **kwargs: Any) -> tuple[ClickHouseSink, list[float]]:
    """A sink whose backoff sleeps are recorded instead of slept."""
    slept: list[float] = []
    return ClickHouseSink(ch, sleep=slept.append, **kwargs), slept


def test_rows_are_buffered_until_flush_and_deduplicated_within_the_batch() -> None:
    ch = FakeClickHouse()
    sink, _ = new_sink(ch)
    for i in (1, 2, 1, 3, 2):
        sink.add(LEDGER, entry(i))
    assert ch.inserts == []
    assert sink.buffered() == {LEDGER: 3}
    assert sink.flush() == {LEDGER: 3}
    assert sorted(map(str, ch.keys(LEDGER))) == ["e1", "e2", "e3"]
    assert sink.buffered() == {}
    assert sink.flush() == {}


def test_one_insert_and_one_existence_query_per_table_per_flush() -> None:
    ch = FakeClickHouse()
    sink, _ = new_sink(ch)
    for i in range(50):
        sink.add(LEDGER, entry(i))
    sink.add(CLICKS, {"event_id": "c1", "ts": "2026-11-11T00:00:00.000Z", "visitor_id": "v1", "ref": "u1"})
    assert sink.flush() == {LEDGER: 50, CLICKS: 1}
    assert ch.inserts == [(LEDGER, 50), (CLICKS, 1)]
    assert ch.queries == 2


def test_a_replay_with_other_boundaries_inserts_nothing_twice() -> None:
    ch = FakeClickHouse()
    sink, _ = new_sink(ch)
    rows = [entry(i) for i in range(100)]
    written = 0
    for start in range(0, 100, 30):
        sink.add_many(LEDGER, rows[start : start + 30])
        written += sink.flush()[LEDGER]
    for start in range(10, 100, 45):  # the crash replays from an older offset, in other batch sizes
        for row in rows[start : start + 45]:
            sink.add(LEDGER, row)
        written += sink.flush()[LEDGER]
    sink.add_many(LEDGER, [*rows[95:], entry(100)])
    written += sink.flush()[LEDGER]
    assert written == 101
    assert sorted(ch.keys(LEDGER), key=lambda k: int(str(k)[1:])) == [f"e{i}" for i in range(101)]


def test_existence_checks_respect_the_backends_parameter_size_limit() -> None:
    ch = FakeClickHouse()
    ch.max_param_bytes = 40  # type: ignore[attr-defined]
    sink, _ = new_sink(ch)
    sink.add_many(LEDGER, [entry(i) for i in range(10)])
    sink.flush()
    before = ch.lookups
    sink.add_many(LEDGER, [entry(i) for i in range(12)])
    assert sink.flush() == {LEDGER: 2}
    assert ch.lookups - before > 1
    assert sorted(map(str, ch.keys(LEDGER))) == sorted(f"e{i}" for i in range(12))


def test_large_batches_are_written_in_chunks_each_checked_and_inserted() -> None:
    ch = FakeClickHouse()
    sink, _ = new_sink(ch, chunk_rows=3)
    sink.add_many(LEDGER, [entry(i) for i in range(10)])
    assert sink.flush() == {LEDGER: 10}
    assert ch.inserts == [(LEDGER, 3), (LEDGER, 3), (LEDGER, 3), (LEDGER, 1)]
    # Every chunk asks for the newest stored ts; the first finds the table empty, the others (same ts) look up.
    assert (ch.newest_queries, ch.lookups) == (4, 3)


def test_rows_newer_than_every_stored_row_skip_the_lookup_and_older_ones_do_not() -> None:
    ch = FakeClickHouse()
    sink, _ = new_sink(ch)
    sink.add_many(LEDGER, [entry(i, ts="2026-11-11T00:00:05.000Z") for i in range(3)])
    assert sink.flush() == {LEDGER: 3}
    assert ch.lookups == 0  # the table was empty
    # A replay of e1 and e2 (at or before the newest stored ms), one older new row e7, and later new rows e8, e9.
    sink.add_many(
        LEDGER,
        [
            entry(1, ts="2026-11-11T00:00:05.000Z"),
            entry(2, ts="2026-11-11T00:00:05.000Z"),
            entry(7, ts="2026-11-11T00:00:01.000Z"),
            entry(8, ts="2026-11-11T00:00:05.002Z"),
            entry(9, ts="2026-11-11T00:00:09.000Z"),
        ],
    )
    assert sink.flush() == {LEDGER: 3}
    assert ch.asked == ["e1", "e2", "e7"]  # e8 and e9 are newer than anything stored: no lookup
    assert sorted(map(str, ch.keys(LEDGER))) == ["e0", "e1", "e2", "e7", "e8", "e9"]


def test_a_row_one_millisecond_past_the_newest_is_still_looked_up() -> None:
    ch = FakeClickHouse()
    sink, _ = new_sink(ch)
    sink.add(LEDGER, entry(1, ts="2026-11-11T00:00:05.000Z"))
    sink.flush()
    sink.add(LEDGER, entry(2, ts="2026-11-11T00:00:05.001Z"))
    sink.flush()
    assert ch.asked == ["e2"]


def test_input_event_tables_are_always_looked_up() -> None:
    ch = FakeClickHouse()
    sink, _ = new_sink(ch)
    sink.add(CLICKS, {"event_id": "c1", "ts": "2026-11-11T00:00:00.000Z", "visitor_id": "v1", "ref": "u1"})
    sink.flush()
    sink.add(CLICKS, {"event_id": "c1", "ts": "2026-11-11T00:09:00.000Z", "visitor_id": "v1", "ref": "u1"})
    assert sink.flush() == {CLICKS: 0}  # a producer reused the event_id with a later ts: still one row
    assert ch.asked == ["c1", "c1"]


def test_a_failed_insert_is_retried_with_backoff_and_lands_once() -> None:
    ch = FlakyClickHouse(failures=2)
    sink, slept = new_sink(ch, base_delay=0.5, max_delay=10.0)
    sink.add_many(LEDGER, [entry(i) for i in range(5)])
    assert sink.flush() == {LEDGER: 5}
    assert slept == [0.5, 1.0]
    assert ch.attempts == 3
    assert sorted(map(str, ch.keys(LEDGER))) == [f"e{i}" for i in range(5)]


def test_an_insert_that_landed_but_reported_failure_is_not_written_again() -> None:
    ch = FlakyClickHouse(failures=1, land_first=True)
    sink, slept = new_sink(ch)
    sink.add_many(LEDGER, [entry(i) for i in range(5)])
    assert sink.flush() == {LEDGER: 0}  # the retry's existence check finds all five
    assert len(slept) == 1
    assert sorted(map(str, ch.keys(LEDGER))) == [f"e{i}" for i in range(5)]


def test_backoff_doubles_up_to_the_cap() -> None:
    ch = FlakyClickHouse(failures=5)
    sink, slept = new_sink(ch, max_attempts=6, base_delay=1.0, max_delay=5.0)
    sink.add(LEDGER, entry(1))
    assert sink.flush() == {LEDGER: 1}
    assert slept == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_when_retries_run_out_flush_raises_and_keeps_the_rows_for_the_next_flush() -> None:
    ch = FakeClickHouse()
    ch.insert = _fail_for(ch, LEDGER, times=3)  # type: ignore[method-assign]
    sink, _ = new_sink(ch, max_attempts=3, base_delay=0.0)
    sink.add(CLICKS, {"event_id": "c1", "ts": "2026-11-11T00:00:00.000Z", "visitor_id": "v1", "ref": "u1"})
    sink.add_many(LEDGER, [entry(i) for i in range(4)])  # clicks are written first; the ledger fails every attempt
    with pytest.raises(SinkWriteError) as raised:
        sink.flush()
    assert raised.value.table == LEDGER and raised.value.attempts == 3
    assert sink.buffered() == {LEDGER: 4}
    assert ch.keys(CLICKS) == ["c1"] and ch.keys(LEDGER) == []
    assert sink.flush() == {LEDGER: 4}
    assert sorted(map(str, ch.keys(LEDGER))) == [f"e{i}" for i in range(4)]
    assert ch.keys(CLICKS) == ["c1"]


def _fail_for(ch: FakeClickHouse, table: str, times: int) -> Any:
    """An insert that fails `times` times for one table, then behaves."""
    original = ch.insert
    remaining = [times]

    def insert(t: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        if t == table and remaining[0] > 0:
            remaining[0] -= 1
            raise ClickHouseError("server is overloaded")
        original(t, columns, rows)

    return insert


def test_rows_added_while_a_flush_is_writing_wait_for_the_next_flush() -> None:
    ch = FakeClickHouse()
    sink, _ = new_sink(ch)
    original = ch.insert

    def insert_then_receive_more(table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        original(table, columns, rows)
        sink.add(LEDGER, entry(99))  # the event loop buffering a new record meanwhile

    ch.insert = insert_then_receive_more  # type: ignore[method-assign]
    sink.add_many(LEDGER, [entry(i) for i in range(3)])
    assert sink.flush() == {LEDGER: 3}
    assert sink.buffered() == {LEDGER: 1}
    ch.insert = original  # type: ignore[method-assign]
    assert sink.flush() == {LEDGER: 1}
    assert sorted(map(str, ch.keys(LEDGER))) == ["e0", "e1", "e2", "e99"]


def test_errors_that_are_not_transient_are_raised_at_once() -> None:
    ch = FlakyClickHouse(failures=1, error=ValueError)
    sink, slept = new_sink(ch)
    sink.add(LEDGER, entry(1))
    with pytest.raises(ValueError):
        sink.flush()
    assert slept == [] and ch.attempts == 1


def test_rows_are_validated_when_added() -> None:
    sink, _ = new_sink(FakeClickHouse())
    with pytest.raises(ValueError, match="unknown kind"):
        sink.add(LEDGER, entry(1, kind="bonus"))
    with pytest.raises(TypeError, match="integer cents"):
        sink.add(LEDGER, entry(1, amount_cents=1.5))
    with pytest.raises(ValueError, match="level"):
        sink.add(LEDGER, entry(1, level=4))
    with pytest.raises(TypeError, match="integer cents"):
        sink.add(
            ORDERS, {"event_id": "x", "ts": "t", "order_id": "o", "type": "paid", "buyer_id": "b", "amount_cents": 9.99}
        )
    with pytest.raises(KeyError):
        sink.add(LEDGER, {"entry_id": "e1"})
    with pytest.raises(ValueError, match="unknown table"):
        sink.add("payments", entry(1))
    assert sink.buffered() == {}


def test_optional_fields_become_empty_strings_and_missing_amounts_stay_null() -> None:
    ch = FakeClickHouse()
    sink, _ = new_sink(ch)
    sink.add(LEDGER, entry(1, campaign_id=None))
    sink.add(CLICKS, {"event_id": "c1", "ts": "2026-11-11T00:00:00.000Z", "visitor_id": "v1", "ref": "u1", "extra": 1})
    sink.add(
        ORDERS,
        {"event_id": "o1", "ts": "2026-11-11T00:00:00.000Z", "order_id": "o", "type": "completed", "buyer_id": "b"},
    )
    sink.flush()
    stored = dict(zip(TABLES[LEDGER].columns, ch.tables[LEDGER][0], strict=True))
    assert stored["campaign_id"] == "" and stored["withdrawal_id"] == "" and stored["adjustment_id"] == ""
    assert stored["fee_cents"] is None and stored["payout_cents"] is None
    assert ch.tables[CLICKS][0] == ("c1", "2026-11-11T00:00:00.000Z", "v1", "u1", "", "", "", "")
    assert ch.tables[ORDERS][0] == ("o1", "2026-11-11T00:00:00.000Z", "o", "completed", "b", None, "", "", "")


def test_money_out_entries_store_their_v2_fields_and_null_order_fields_as_empty() -> None:
    ch = FakeClickHouse()
    sink, _ = new_sink(ch)
    paid = entry(1, kind="withdrawn", level=0, order_id=None, buyer_id=None, campaign_id=None, amount_cents=-5000)
    sink.add(LEDGER, {**paid, "withdrawal_id": "w1", "fee_cents": 30, "payout_cents": 4970})
    award = entry(2, kind="adjusted", level=0, order_id=None, buyer_id=None, campaign_id=None, amount_cents=10000)
    sink.add(LEDGER, {**award, "adjustment_id": "award:2026-11:earnings:1", "reason": "best of November"})
    sink.flush()
    rows = [dict(zip(TABLES[LEDGER].columns, row, strict=True)) for row in ch.tables[LEDGER]]
    assert [(r["order_id"], r["buyer_id"], r["campaign_id"], r["level"]) for r in rows] == [("", "", "", 0)] * 2
    assert (rows[0]["withdrawal_id"], rows[0]["fee_cents"], rows[0]["payout_cents"]) == ("w1", 30, 4970)
    assert (rows[1]["adjustment_id"], rows[1]["reason"]) == ("award:2026-11:earnings:1", "best of November")


def test_binding_records_dedupe_on_the_whole_record() -> None:
    ch = FakeClickHouse()
    sink, _ = new_sink(ch)
    unbound = {"user_id": "u2", "inviter_id": None, "ts": "2026-11-11T00:00:00.000Z", "source": "signup"}
    bound = {"user_id": "u2", "inviter_id": "u1", "ts": "2026-11-11T00:05:00.000Z", "source": "order"}
    sink.add(BINDINGS, unbound)
    sink.add(BINDINGS, dict(unbound))
    assert sink.flush() == {BINDINGS: 1}
    sink.add(BINDINGS, {**unbound, "ts": "2026-11-11T08:00:00.000+08:00"})  # the same instant, written otherwise
    sink.add(BINDINGS, bound)
    assert sink.flush() == {BINDINGS: 1}
    assert [row[1] for row in ch.tables[BINDINGS]] == [None, "u1"]


def test_policy_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        ClickHouseSink(FakeClickHouse(), max_attempts=0)
    with pytest.raises(ValueError):
        ClickHouseSink(FakeClickHouse(), base_delay=5.0, max_delay=1.0)


# --- helpers of streams.sinks.clickhouse ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("'; DROP TABLE x; --", "\\'; DROP TABLE x; --"),
        ("a\\b\tc\nd", "a\\\\b\\tc\\nd"),
        (None, "\\N"),
        (True, "1"),
        (-(2**63), "-9223372036854775808"),
        (["x'y", None], "['x\\'y',NULL]"),
        (datetime(2026, 11, 11, 8, 0, tzinfo=UTC), "2026-11-11 08:00:00.000000"),
    ],
)
def test_parameter_text_is_escaped_data(value: object, text: str) -> None:
    assert param_text(value) == text


def test_parameter_text_refuses_unknown_types() -> None:
    with pytest.raises(TypeError):
        param_text(object())


def test_statements_split_at_top_level_semicolons_only() -> None:
    sql = """
    -- a comment; with a semicolon
    CREATE TABLE a (x String COMMENT 'it''s; fine', y String COMMENT 'back\\'slash;') ENGINE = Memory;
    /* block; comment */
    SELECT ';' AS `weird;name`;
    -- trailing comment only
    """
    first, second = split_statements(sql)
    assert "CREATE TABLE a" in first and first.endswith("ENGINE = Memory") and "'it''s; fine'" in first
    assert "SELECT ';'" in second and second.endswith("AS `weird;name`")
    assert split_statements("-- nothing here;\n/* nor; here */") == []


def test_server_url_is_parsed_and_the_password_never_shown() -> None:
    target = parse_server_url("https://ana%40shop:s3cr%2Ft@ch.example:9443/sales")
    assert (target.host, target.port, target.secure, target.username, target.database) == (
        "ch.example",
        9443,
        True,
        "ana@shop",
        "sales",
    )
    assert target.password == "s3cr/t"
    assert "s3cr" not in repr(target) and "s3cr" not in target.redacted()
    default = parse_server_url("http://ch:8123")
    assert (default.username, default.password, default.port, default.database) == ("default", "", 8123, "fenxiao")
    with pytest.raises(ValueError, match="http"):
        parse_server_url("tcp://u:secret@ch:9000/x")
    with pytest.raises(ValueError, match="identifier"):
        parse_server_url("http://ch:8123/bad-name")


def test_ms_at_most_floors_each_instant_to_its_millisecond_whatever_the_offset() -> None:
    bound = 1_794_355_205_000  # 2026-11-11T00:00:05.000Z
    stamps = [
        "2026-11-11T00:00:05.000Z",  # the bound itself
        "2026-11-11T00:00:05.000999Z",  # floors to the bound
        "2026-11-11T00:00:05.001Z",  # one ms later
        "2026-11-11T08:00:04.999+08:00",  # 1 ms before, written in UTC+8
        "2026-11-10T19:00:05.001-05:00",  # 1 ms after, written in UTC-5
    ]
    assert ms_at_most(stamps, bound) == [True, True, False, True, False]
    # Before 1970 the floor goes down: 1969-12-31T23:59:59.9995Z is ms -1, not 0.
    assert ms_at_most(["1969-12-31T23:59:59.9995Z"], -1) == [True]
    assert ms_at_most(["1969-12-31T23:59:59.9995Z"], -2) == [False]


@pytest.mark.parametrize(
    "odd",
    ["2026-11-11T00:00:05.000", "2026-11-11T00:00:05.0000001Z", None, datetime(2026, 11, 11, tzinfo=UTC), "soon"],
)
def test_ms_at_most_declines_what_is_not_rfc3339_text_with_an_offset(odd: object) -> None:
    assert ms_at_most(["2026-11-11T00:00:05.000Z", odd], 0) is None


def test_naive_text_and_datetimes_are_looked_up_by_their_instant_too() -> None:
    ch = FakeClickHouse()
    sink, _ = new_sink(ch)
    sink.add(LEDGER, entry(1, ts="2026-11-11T00:00:05.000Z"))
    sink.flush()
    sink.add_many(
        LEDGER,
        [
            entry(1, ts="2026-11-11T00:00:05.000"),  # naive text means UTC: the stored row again
            entry(2, ts=datetime(2026, 11, 11, 0, 0, 4, tzinfo=UTC)),  # older: looked up
            entry(3, ts=datetime(2026, 11, 11, 8, 0, 9, tzinfo=timezone(timedelta(hours=8)))),  # newer: not
        ],
    )
    assert sink.flush() == {LEDGER: 2}
    assert ch.asked == ["e1", "e2"]


def test_v1_entries_leave_the_v2_columns_out_and_a_chunk_with_a_v2_entry_pads_the_others() -> None:
    ch = FakeClickHouse()
    sink, _ = new_sink(ch)
    sink.add_many(LEDGER, [entry(1), entry(2)])
    sink.flush()
    held = entry(3, kind="held", level=0, amount_cents=-500, order_id=None, buyer_id=None, withdrawal_id="w1")
    withdrawn = entry(4, kind="withdrawn", level=0, amount_cents=-500, withdrawal_id="w1", fee_cents=0)
    withdrawn["payout_cents"] = 500
    sink.add_many(LEDGER, [entry(5), held, withdrawn, entry(6, withdrawal_id=None, fee_cents=None)])
    sink.flush()
    assert [len(values) for values in ch.tables[LEDGER]] == [15] * 6
    tails = {str(values[0]): values[3:5] + values[10:] for values in ch.tables[LEDGER]}
    assert tails == {
        "e1": ("o0", "b1", "", "", "", None, None),
        "e2": ("o0", "b1", "", "", "", None, None),
        "e5": ("o1", "b1", "", "", "", None, None),
        "e3": ("", "", "w1", "", "", None, None),
        "e4": ("o1", "b1", "w1", "", "", 0, 500),
        "e6": ("o2", "b1", "", "", "", None, None),
    }


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"amount_cents": 1.5}, TypeError),
        ({"amount_cents": True}, TypeError),
        ({"fee_cents": 2.0}, TypeError),
        ({"payout_cents": False}, TypeError),
        ({"level": 4}, ValueError),
        ({"kind": "paid"}, ValueError),
    ],
)
def test_a_bad_entry_fails_at_add_with_or_without_v2_fields(overrides: dict[str, Any], error: type[Exception]) -> None:
    sink, _ = new_sink(FakeClickHouse())
    with pytest.raises(error):
        sink.add(LEDGER, entry(1, **overrides))
    with pytest.raises(error):
        sink.add_many(LEDGER, [entry(2, **overrides)])
    assert sink.buffered() in ({}, {LEDGER: 0})
