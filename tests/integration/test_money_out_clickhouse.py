"""Contract v2 in ClickHouse: migration 005 on today's data, the sink writing the money-out kinds, the payouts report.

No Kafka: rows go through the real ClickHouseSink into a fresh database (chDB, and the server code path through
clickhouse-connect's chDB interface). The money-out example's entries come from the reference engine and are
checked against its expected.json; the payouts report is checked against a table computed by hand below.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.sinks import reports
from streams.sinks import sink as S
from streams.sinks.clickhouse import ChdbBackend, ClickHouse, ServerBackend, migrate
from tests.integration import report_data as RD

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "clickhouse"
MONEY_OUT = "v2/money-out"
V1_COLUMNS = S.TABLES[S.LEDGER].columns[:10]  # ledger_entries as 001-004 created it


def open_backend(kind: str, path: Path) -> ClickHouse:
    """chDB on `path`, or the server backend over clickhouse-connect's in-process chDB on it."""
    if kind == "chdb":
        return ChdbBackend(path)
    import clickhouse_connect

    return ServerBackend.from_client(clickhouse_connect.get_client(interface="chdb", path=str(path)), "fenxiao")


@pytest.fixture(params=["chdb", "server"])
def ch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClickHouse]:
    """A migrated, empty database on either backend."""
    backend = open_backend(request.param, tmp_path / "clickhouse")
    try:
        migrate(backend)
        yield backend
    finally:
        backend.close()


def v1_entry(entry_id: str, order: str, user: str, level: int, kind: str, cents: int, ts: str) -> dict[str, Any]:
    """A ledger entry as today's worker writes it."""
    return {
        "entry_id": entry_id,
        "source_event_id": f"ev-{entry_id}",
        "ts": ts,
        "order_id": order,
        "buyer_id": "b1",
        "beneficiary_id": user,
        "level": level,
        "kind": kind,
        "amount_cents": cents,
        "campaign_id": None,
    }


def v2_entry(entry_id: str, user: str, kind: str, cents: int, ts: str, **extra: Any) -> dict[str, Any]:
    """A money-out entry as the spec shapes it: level 0, order, buyer and campaign null."""
    return {
        "entry_id": entry_id,
        "source_event_id": f"ev-{entry_id}",
        "ts": ts,
        "order_id": None,
        "buyer_id": None,
        "beneficiary_id": user,
        "level": 0,
        "kind": kind,
        "amount_cents": cents,
        "campaign_id": None,
        **extra,
    }


OLD_ENTRIES = [
    v1_entry("o1-1-a", "o1", "u1", 1, "accrued", 1000, "2026-11-10T10:00:00.000Z"),
    v1_entry("o1-2-a", "o1", "u2", 2, "accrued", 500, "2026-11-10T10:00:00.000Z"),
    v1_entry("o1-1-s", "o1", "u1", 1, "settled", 1000, "2026-11-10T12:00:00.000Z"),
]
NEW_ENTRIES = [
    v2_entry("w1-held", "u1", "held", -600, "2026-11-11T09:00:00.000Z", withdrawal_id="w1"),
    v2_entry(
        "w1-paid",
        "u1",
        "withdrawn",
        -600,
        "2026-11-11T10:00:00.000Z",
        withdrawal_id="w1",
        fee_cents=10,
        payout_cents=590,
    ),
    v2_entry("w2-held", "u1", "held", -200, "2026-11-11T11:00:00.000Z", withdrawal_id="w2"),
    v2_entry("w2-back", "u1", "released", 200, "2026-11-11T12:00:00.000Z", withdrawal_id="w2"),
    v2_entry("a1", "u2", "adjusted", 300, "2026-11-11T13:00:00.000Z", adjustment_id="a1", reason="award"),
]


@pytest.mark.parametrize("kind", ["chdb", "server"])
def test_migration_005_upgrades_a_database_created_by_todays_schema(tmp_path: Path, kind: str) -> None:
    old_schema = tmp_path / "schema-today"
    old_schema.mkdir()
    for name in ("001_core.sql", "002_aggregates.sql", "003_reports.sql", "004_click_limits.sql"):
        shutil.copy(SCHEMAS / name, old_schema / name)
    path = tmp_path / "clickhouse"
    first = open_backend(kind, path)
    try:
        assert migrate(first, old_schema)[-1] == "004_click_limits.sql"
        first.insert(S.LEDGER, V1_COLUMNS, [S.TABLES[S.LEDGER].values(e)[:10] for e in OLD_ENTRIES])
        before_daily = S.daily_commissions(first)
    finally:
        first.close()
    again = open_backend(kind, path)  # the data directory as a worker of today left it
    try:
        assert migrate(again) == ["005_money_out.sql"]
        assert migrate(again) == []
        assert S.entry_sums(again) == {"o1|1|u1|accrued": 1000, "o1|2|u2|accrued": 500, "o1|1|u1|settled": 1000}
        assert S.daily_commissions(again) == before_daily
        sink = S.ClickHouseSink(again)
        sink.add_many(S.LEDGER, NEW_ENTRIES)
        assert sink.flush() == {S.LEDGER: 5}
        # Hand-computed with the spec's balance formulas.
        assert S.balances_v2(again) == {
            "u1": S.Balance(
                pending_cents=0, available_cents=1000 - 600 - 200 + 200, reserved_cents=0, withdrawn_cents=600
            ),
            "u2": S.Balance(pending_cents=500, available_cents=300, reserved_cents=0, withdrawn_cents=0),
        }
        assert S.balances(again) == {"u1": (0, 400), "u2": (500, 300)}
        assert S.ledger_totals(again) == {
            "accrued": 1500,
            "reversed": 0,
            "settled": 1000,
            "clawed_back": 0,
            "held": -800,
            "released": 200,
            "withdrawn": -600,
            "adjusted": 300,
        }
        assert S.daily_commissions(again) == before_daily  # money out is not commission
        stored = again.query(
            "SELECT entry_id, order_id, buyer_id, campaign_id, level, withdrawal_id, adjustment_id, reason,"
            " fee_cents, payout_cents FROM ledger_entries FINAL WHERE kind IN ('withdrawn', 'adjusted', 'accrued')"
            " ORDER BY entry_id"
        )
        assert stored == [
            ("a1", "", "", "", 0, "", "a1", "award", None, None),
            ("o1-1-a", "o1", "b1", "", 1, "", "", "", None, None),
            ("o1-2-a", "o1", "b1", "", 2, "", "", "", None, None),
            ("w1-paid", "", "", "", 0, "w1", "", "", 10, 590),
        ]
    finally:
        again.close()


def test_a_half_applied_005_is_applied_again(tmp_path: Path) -> None:
    with ChdbBackend(tmp_path / "ch") as ch:
        migrate(ch)
        ch.command("DROP VIEW commission_daily_mv")
        ch.command("ALTER TABLE schema_migrations DELETE WHERE version = 5 SETTINGS mutations_sync = 1")
        assert migrate(ch) == ["005_money_out.sql"]
        sink = S.ClickHouseSink(ch)
        sink.add_many(S.LEDGER, OLD_ENTRIES + NEW_ENTRIES)
        sink.flush()
        assert sum(r.entries for r in S.daily_commissions(ch).values()) == len(OLD_ENTRIES)


def test_the_money_out_example_through_the_sink_equals_expected(ch: ClickHouse) -> None:
    rows = RD.sink_rows(MONEY_OUT)
    assert {e["kind"] for e in rows[S.LEDGER]} >= set(S.MONEY_OUT_KINDS)
    sink = S.ClickHouseSink(ch)
    for table, table_rows in rows.items():
        sink.add_many(table, table_rows)
    sink.flush()
    expected = RD.expected(MONEY_OUT)
    assert S.entry_sums(ch) == expected["entries"]
    assert S.ledger_totals(ch) == expected["totals"]
    got = reports.outcome(ch)
    assert got["balances"] == expected["balances"]
    # The commission aggregate holds the four order kinds only, and no level 0.
    assert got["aggregate_totals"] == {k: expected["totals"][k] for k in S.KINDS}
    daily = S.daily_commissions(ch)
    assert {level for (_, _, level, _) in daily} <= {1, 2, 3}
    S.rebuild_aggregates(ch)  # the repair recomputes the same commission-only aggregate
    assert S.daily_commissions(ch) == daily
    # A replay of the same entries inserts nothing.
    again = S.ClickHouseSink(ch)
    again.add_many(S.LEDGER, rows[S.LEDGER])
    assert again.flush() == {S.LEDGER: 0}


def test_the_sink_refuses_money_out_entries_the_contract_cannot_produce() -> None:
    sink = S.ClickHouseSink(ch=None)  # type: ignore[arg-type]  # add() validates before any database is used
    bad = [
        ({**NEW_ENTRIES[0], "level": 1}, "level 0"),
        ({**NEW_ENTRIES[0], "withdrawal_id": None}, "needs its withdrawal_id"),
        ({**NEW_ENTRIES[4], "adjustment_id": ""}, "needs its adjustment_id"),
        ({**OLD_ENTRIES[0], "level": 0}, "level must be 1, 2 or 3"),
        ({**NEW_ENTRIES[1], "fee_cents": 10.0}, "integer cents"),
        ({**NEW_ENTRIES[0], "kind": "bonus"}, "unknown kind"),
    ]
    for row, message in bad:
        with pytest.raises((ValueError, TypeError), match=message):
            sink.add(S.LEDGER, row)
    assert sink.buffered() == {}


# --- the payouts report -----------------------------------------------------------------------------------------


def state(
    wid: str, user: str, status: str, amount: int, channel: str | None, ts: str, fee: int | None = None
) -> dict[str, Any]:
    """One fenxiao.withdrawal-states record (common interface: id = withdrawal_id:status)."""
    return {
        "id": f"{wid}:{status}",
        "withdrawal_id": wid,
        "distributor_id": user,
        "status": status,
        "amount_cents": amount,
        "channel": channel,
        "fee_cents": fee,
        "payout_cents": None if fee is None else amount - fee,
        "ts": ts,
        "event_id": f"ev-{wid}-{status}",
    }


D1, D2 = "2026-11-11", "2026-11-12"
# [withdrawals] fee_bps = 60, fee_min_cents = 10: wA 10000 -> (10000*60+5000)//10000 = 60; wC 1000 -> 6, so 10.
STATES = [
    state("wA", "u1", "requested", 10000, "alipay", f"{D1}T10:00:00.000Z"),
    state("wA", "u1", "approved", 10000, "alipay", f"{D1}T11:00:00.000Z"),
    state("wA", "u1", "paid", 10000, "alipay", f"{D1}T12:00:00.000Z", fee=60),
    state("wB", "u2", "requested", 5000, "bank", f"{D1}T10:30:00.000Z"),
    state("wB", "u2", "rejected", 5000, "bank", f"{D1}T13:00:00.000Z"),
    state("wC", "u1", "requested", 1000, "alipay", f"{D1}T23:59:59.999Z"),
    state("wC", "u1", "approved", 1000, None, f"{D2}T00:10:00.000Z"),  # later records without the channel
    state("wC", "u1", "paid", 1000, None, f"{D2}T09:00:00.000Z", fee=10),
    state("wD", "u3", "requested", 20000, "bank", f"{D2}T08:00:00.000Z"),
    state("wD", "u3", "approved", 20000, "bank", f"{D2}T08:30:00.000Z"),
    state("wD", "u3", "failed", 20000, "bank", f"{D2}T10:00:00.000Z"),
    state("wE", "u2", "requested", 300, None, f"{D2}T11:00:00.000Z"),
    state("wF", "u3", "requested", 7000, "bank", f"{D2}T12:00:00.000Z"),
    state("wF", "u3", "approved", 7000, "bank", f"{D2}T12:05:00.000Z"),
]
COLUMNS = (
    "day",
    "channel",
    "requested",
    "requested_cents",
    "paid",
    "paid_cents",
    "fee_cents",
    "payout_cents",
    "rejected",
    "rejected_cents",
    "failed",
    "failed_cents",
)
# Hand-computed: each transition on the day of its event, under the channel of its request.
EXPECTED = [
    (D1, "alipay", 2, 11000, 1, 10000, 60, 9940, 0, 0, 0, 0),
    (D1, "bank", 1, 5000, 0, 0, 0, 0, 1, 5000, 0, 0),
    (D2, "(none)", 1, 300, 0, 0, 0, 0, 0, 0, 0, 0),
    (D2, "alipay", 0, 0, 1, 1000, 10, 990, 0, 0, 0, 0),
    (D2, "bank", 2, 27000, 0, 0, 0, 0, 0, 0, 1, 20000),
    ("all days", "all channels", 6, 43300, 2, 11000, 70, 10930, 1, 5000, 1, 20000),
]


def load_states(ch: ClickHouse) -> None:
    """The transitions through the sink, the first five offered twice (a redelivered batch)."""
    sink = S.ClickHouseSink(ch)
    sink.add_many(S.WITHDRAWAL_STATES, STATES[:5])
    sink.flush()
    sink.add_many(S.WITHDRAWAL_STATES, STATES)
    assert sink.flush() == {S.WITHDRAWAL_STATES: len(STATES) - 5}


def test_payouts_per_day_and_channel_equal_the_hand_computed_table(ch: ClickHouse, tmp_path: Path) -> None:
    load_states(ch)
    report = reports.run(ch, "payouts", {})
    assert [c.key for c in report.columns] == list(COLUMNS)
    assert [tuple(r) for r in report.rows] == EXPECTED
    assert report.notes[-1] == "open now: 2 withdrawal(s) of ¥73.00 requested or approved, not yet settled"
    csv_lines = reports.render_csv(report).splitlines()
    assert csv_lines[0] == ",".join(COLUMNS)
    assert csv_lines[1] == "2026-11-11,alipay,2,11000,1,10000,60,9940,0,0,0,0"
    chart = reports.render_chart(report, tmp_path / "payouts.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert reports.Report.from_json(report.to_json()) == report


def test_payouts_of_one_distributor_and_of_a_period(ch: ClickHouse) -> None:
    load_states(ch)
    mine = reports.run(ch, "payouts", {"distributor": "u1"})
    assert [tuple(r) for r in mine.rows] == [
        (D1, "alipay", 2, 11000, 1, 10000, 60, 9940, 0, 0, 0, 0),
        (D2, "alipay", 0, 0, 1, 1000, 10, 990, 0, 0, 0, 0),
        ("all days", "all channels", 2, 11000, 2, 11000, 70, 10930, 0, 0, 0, 0),
    ]
    assert mine.notes[-1].startswith("open now: 0 withdrawal(s)")
    assert [tuple(r) for r in reports.run(ch, "payouts", {"period": "month", "at": "2026-11"}).rows] == EXPECTED
    assert reports.run(ch, "payouts", {"period": "month", "at": "2026-12"}).rows == []
    with pytest.raises(reports.ReportError, match="at must be"):
        reports.run(ch, "payouts", {"at": "November"})
    hostile = reports.run(ch, "payouts", {"distributor": "' OR '1'='1"})
    assert hostile.rows == []


def test_existing_reports_count_commission_only_over_the_money_out_example(ch: ClickHouse) -> None:
    for table, table_rows in RD.sink_rows(MONEY_OUT).items():
        sink = S.ClickHouseSink(ch)
        sink.add_many(table, table_rows)
        sink.flush()
    earnings: dict[str, int] = {}
    for key, cents in RD.expected(MONEY_OUT)["entries"].items():
        _, _, user, kind = key.split("|")
        if kind in ("accrued", "reversed", "clawed_back"):
            earnings[user] = earnings.get(user, 0) + cents
    board = reports.run(ch, "leaderboard", {"at": "2026-11", "metric": "earnings", "limit": "1000"}).records()
    assert {r["distributor"]: r["earnings_cents"] for r in board} == earnings
    levels = reports.run(ch, "levels", {}).records()
    assert [r["level"] for r in levels] == ["level 1", "level 2", "level 3", "all levels"]
    assert levels[-1]["net_cents"] == sum(earnings.values())
    refunds = reports.run(ch, "refunds", {"limit": "1000"}).records()
    assert {r["distributor"] for r in refunds} == set(earnings)
