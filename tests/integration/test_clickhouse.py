"""The ClickHouse layer against a real engine: migrations, replay-safe sink writes, reports, parameters, the chDB lock.

chDB hosts one engine per process, bound to one data directory until every connection to it
is closed; so each test opens its own directory under tmp_path and closes it when done,
which also leaves the process free for other tests' engines. The "server" variant drives
ServerBackend (server-side binding, client.insert) through clickhouse-connect's in-process
chDB interface, so the server code path runs without a server.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from streams import names
from streams.settings import Settings
from streams.sinks import sink as S
from streams.sinks.clickhouse import (
    LOCK_FILE,
    ChdbBackend,
    ChdbLockedError,
    ClickHouse,
    ClickHouseError,
    ServerBackend,
    migrate,
)
from streams.sinks.warehouse import connect

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
START = datetime(2026, 11, 10, 23, 50, tzinfo=UTC)


def rfc3339(moment: datetime) -> str:
    """The contract's ts form, 2026-11-11T00:00:00.000Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@pytest.fixture(params=["chdb", "server"])
def ch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClickHouse]:
    """A migrated, empty database on either backend, closed after the test."""
    backend: ClickHouse
    if request.param == "chdb":
        backend = ChdbBackend(tmp_path / "clickhouse")
    else:
        import clickhouse_connect

        client = clickhouse_connect.get_client(interface="chdb", path=str(tmp_path / "clickhouse"))
        backend = ServerBackend.from_client(client, "fenxiao")
    try:
        migrate(backend)
        yield backend
    finally:
        backend.close()


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[ChdbBackend]:
    """The embedded backend only, migrated."""
    with ChdbBackend(tmp_path / "clickhouse") as backend:
        migrate(backend)
        yield backend


# --- a deterministic pipeline output -------------------------------------------------------------------------------


def dataset(seed: int = 11) -> dict[str, list[dict[str, Any]]]:
    """Ledger entries, bindings, clicks and order events like a day of the pipeline's output, spread over two days."""
    rng = random.Random(seed)
    users = [f"u{i}" for i in range(30)]
    ledger: list[dict[str, Any]] = []
    orders: list[dict[str, Any]] = []
    for o in range(300):
        paid_at = START + timedelta(seconds=rng.randrange(0, 36 * 3600), milliseconds=rng.randrange(1000))
        campaign = rng.choice(["d11", None, None])
        amount = rng.randrange(100, 500_000)
        buyer = f"b{o % 97}"
        orders.append(_order(f"op{o}", paid_at, f"o{o}", "paid", buyer, amount, campaign))
        chain = rng.sample(users, 3)
        refunded = rng.random() < 0.3
        settled = rng.random() < 0.5
        for level, beneficiary in enumerate(chain[: rng.randrange(1, 4)], start=1):
            commission = (amount * [1000, 500, 200][level - 1] + 5000) // 10000
            moves = [("accrued", commission, paid_at)]
            if settled:
                moves.append(("settled", commission, paid_at + timedelta(days=7)))
            if refunded:
                back = commission // 2
                moves.append(("clawed_back" if settled else "reversed", -back, paid_at + timedelta(hours=2)))
            for kind, cents, at in moves:
                ledger.append(
                    {
                        "entry_id": f"{o}-{level}-{kind}",
                        "source_event_id": f"ev-{o}-{kind}",
                        "ts": rfc3339(at),
                        "order_id": f"o{o}",
                        "buyer_id": buyer,
                        "beneficiary_id": beneficiary,
                        "level": level,
                        "kind": kind,
                        "amount_cents": cents,
                        "campaign_id": campaign,
                    }
                )
        if refunded:
            orders.append(
                _order(f"or{o}", paid_at + timedelta(hours=2), f"o{o}", "refunded", buyer, amount // 2, campaign)
            )
        if settled:
            orders.append(_order(f"oc{o}", paid_at + timedelta(hours=1), f"o{o}", "completed", buyer, None, campaign))
    bindings = []
    for i, user in enumerate(users):
        signed_up = START + timedelta(minutes=i)
        bindings.append({"user_id": user, "inviter_id": None, "ts": rfc3339(signed_up), "source": "signup"})
        if i % 3:
            inviter = users[i // 2]
            bindings.append({"user_id": user, "inviter_id": inviter, "ts": rfc3339(signed_up), "source": "order"})
    clicks = [
        {
            "event_id": f"c{i}",
            "ts": rfc3339(START + timedelta(seconds=17 * i)),
            "visitor_id": f"v{i % 40}",
            "ref": rng.choice(users),
            **({"campaign_id": "d11", "product_id": f"p{i % 7}"} if i % 2 else {}),
            **({"ip": "203.0.113.9", "user_agent": "Mozilla/5.0"} if i % 3 else {}),
        }
        for i in range(200)
    ]
    return {S.LEDGER: ledger, S.BINDINGS: bindings, S.CLICKS: clicks, S.ORDERS: orders}


def _order(
    event_id: str, at: datetime, order_id: str, kind: str, buyer: str, amount: int | None, campaign: str | None
) -> dict[str, Any]:
    """An order input event; optional fields left out when empty, as producers send them."""
    event: dict[str, Any] = {"event_id": event_id, "ts": rfc3339(at), "order_id": order_id, "type": kind}
    event["buyer_id"] = buyer
    if amount is not None:
        event["amount_cents"] = amount
    if campaign is not None:
        event["campaign_id"] = campaign
    return event


def write_in_batches(ch: ClickHouse, data: Mapping[str, Sequence[dict[str, Any]]], size: int, skip: int = 0) -> int:
    """Offer every table's rows from `skip` on, in batches of `size`, flushing after each; returns rows inserted."""
    sink = S.ClickHouseSink(ch)
    inserted = 0
    longest = max(len(rows) for rows in data.values())
    for start in range(skip, longest, size):
        for table, rows in data.items():
            for row in rows[start : start + size]:
                sink.add(table, row)
        inserted += sum(sink.flush().values())
    return inserted


def reports(ch: ClickHouse) -> dict[str, Any]:
    """Everything a reader sees, plus raw row counts of the tables whose keys merges never collapse."""
    counts = {table: ch.query(f"SELECT count() FROM {table}")[0][0] for table in (S.LEDGER, S.CLICKS, S.ORDERS)}
    return {
        "totals": S.ledger_totals(ch),
        "balances": S.balances(ch),
        "entries": S.entry_sums(ch),
        "bindings": S.bindings(ch),
        "daily": S.daily_commissions(ch),
        "minutes": S.campaign_minutes(ch),
        "counts": counts,
    }


def expected_reports(data: Mapping[str, Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """The same reports computed in Python from the rows, each key counted once."""
    ledger = list({row["entry_id"]: row for row in data[S.LEDGER]}.values())
    totals = dict.fromkeys(S.KINDS, 0)
    balance: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    entries: Counter[str] = Counter()
    daily: dict[tuple[date, str, int, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    minutes: dict[tuple[datetime, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for row in ledger:
        kind, cents, at = row["kind"], row["amount_cents"], datetime.fromisoformat(row["ts"])
        totals[kind] += cents
        pending_sign = {"accrued": 1, "reversed": 1, "settled": -1, "clawed_back": 0}[kind]
        balance[row["beneficiary_id"]][0] += pending_sign * cents
        balance[row["beneficiary_id"]][1] += cents if kind in ("settled", "clawed_back") else 0
        entries[f"{row['order_id']}|{row['level']}|{row['beneficiary_id']}|{kind}"] += cents
        day = daily[(at.date(), row["beneficiary_id"], row["level"], row["campaign_id"] or "")]
        day[S.KINDS.index(kind)] += cents
        day[4] += 1
        if kind == "accrued":
            minutes[(at.replace(second=0, microsecond=0), row["campaign_id"] or "")][3] += cents
    for event in {e["event_id"]: e for e in data[S.ORDERS]}.values():
        if event["type"] in ("paid", "refunded"):
            minute = minutes[
                (datetime.fromisoformat(event["ts"]).replace(second=0, microsecond=0), event.get("campaign_id") or "")
            ]
            if event["type"] == "paid":
                minute[0] += 1
                minute[1] += event["amount_cents"]
            else:
                minute[2] += event["amount_cents"]
    latest: dict[str, tuple[tuple[int, bool], str | None]] = {}
    for b in data[S.BINDINGS]:
        version = (S._epoch_ms(b["ts"]), b["inviter_id"] is not None)
        if b["user_id"] not in latest or version >= latest[b["user_id"]][0]:
            latest[b["user_id"]] = (version, b["inviter_id"])
    return {
        "totals": totals,
        "balances": {user: (p, a) for user, (p, a) in balance.items()},
        "entries": dict(entries),
        "bindings": {user: inviter for user, (_, inviter) in latest.items()},
        "daily": {key: S.DailyCommission(*v) for key, v in daily.items()},
        "minutes": {key: S.CampaignMinute(*v) for key, v in minutes.items()},
        "counts": {
            S.LEDGER: len(ledger),
            S.CLICKS: len({c["event_id"] for c in data[S.CLICKS]}),
            S.ORDERS: len({e["event_id"] for e in data[S.ORDERS]}),
        },
    }


def distinct_rows(data: Mapping[str, Sequence[dict[str, Any]]]) -> int:
    """How many rows a first write inserts: one per dedupe key of every table."""
    return sum(len({S.TABLES[table].key(S.TABLES[table].values(row)) for row in rows}) for table, rows in data.items())


# --- migrations ----------------------------------------------------------------------------------------------------


MIGRATION_FILES = sorted(
    p.name for p in (Path(__file__).resolve().parents[2] / "schemas" / "clickhouse").glob("[0-9][0-9][0-9]_*.sql")
)


def test_migrating_twice_is_a_no_op(ch: ClickHouse) -> None:
    tables = ch.query("SELECT name, create_table_query FROM system.tables WHERE database = currentDatabase()")
    assert migrate(ch) == []
    assert ch.query("SELECT name, create_table_query FROM system.tables WHERE database = currentDatabase()") == tables
    assert ch.query("SELECT version, name FROM schema_migrations FINAL ORDER BY version") == [
        (int(name[:3]), name) for name in MIGRATION_FILES
    ]
    assert MIGRATION_FILES[:2] == ["001_core.sql", "002_aggregates.sql"]


def test_a_reopened_database_is_already_migrated(tmp_path: Path) -> None:
    with ChdbBackend(tmp_path / "ch") as first:
        assert migrate(first) == MIGRATION_FILES
    with ChdbBackend(tmp_path / "ch") as again:
        assert migrate(again) == []


def test_a_half_applied_migration_is_applied_again(chdb: ChdbBackend) -> None:
    chdb.command("DROP TABLE campaign_minute_ledger_mv")
    chdb.command("ALTER TABLE schema_migrations DELETE WHERE version = 2 SETTINGS mutations_sync = 1")
    assert migrate(chdb) == ["002_aggregates.sql"]
    assert chdb.query("SELECT count() FROM system.tables WHERE name = 'campaign_minute_ledger_mv'") == [(1,)]


def test_every_stored_column_is_documented(chdb: ChdbBackend) -> None:
    undocumented = chdb.query(
        "SELECT c.table, c.name FROM system.columns AS c"
        " INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table"
        " WHERE c.database = currentDatabase() AND t.engine != 'MaterializedView' AND c.comment = ''"
    )
    assert undocumented == []
    money = chdb.query(
        "SELECT table, name, type FROM system.columns"
        " WHERE database = currentDatabase() AND name LIKE '%cents' AND type NOT LIKE '%Int64%'"
    )
    assert money == []


# --- replay safety and report correctness --------------------------------------------------------------------------


def test_a_replay_with_other_boundaries_changes_no_report(ch: ClickHouse) -> None:
    data = dataset()
    expected = expected_reports(data)
    assert write_in_batches(ch, data, size=250) == distinct_rows(data)
    first = reports(ch)
    assert write_in_batches(ch, data, size=370, skip=100) == 0
    assert write_in_batches(ch, data, size=10_000) == 0
    assert reports(ch) == first
    for section in expected:
        assert first[section] == expected[section], section


def test_duplicates_within_a_batch_count_once(ch: ClickHouse) -> None:
    data = dataset(seed=5)
    doubled = {table: [row for row in rows for _ in (0, 1)] for table, rows in data.items()}
    write_in_batches(ch, doubled, size=len(doubled[S.LEDGER]))
    assert reports(ch) == expected_reports(data)


def test_an_insert_that_lands_but_fails_is_not_counted_twice(ch: ClickHouse) -> None:
    data = dataset(seed=3)
    flaky = LostAck(ch, lost=2)
    assert write_in_batches(flaky, data, size=200) < distinct_rows(data)
    assert flaky.lost == 0
    assert reports(ch) == expected_reports(data)


class LostAck:
    """Passes everything through, but the first `lost` inserts raise after they landed (a timeout on the ack)."""

    def __init__(self, inner: ClickHouse, lost: int) -> None:
        self.inner = inner
        self.lost = lost

    def command(self, sql: str, params: Mapping[str, object] | None = None) -> None:
        self.inner.command(sql, params)

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> list[tuple[Any, ...]]:
        return self.inner.query(sql, params)

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.inner.insert(table, columns, rows)
        if self.lost:
            self.lost -= 1
            raise ClickHouseError("timed out waiting for the server's answer")

    def close(self) -> None:
        self.inner.close()


def test_a_duplicate_behind_the_sinks_back_leaves_raw_reports_right_and_rebuild_repairs_aggregates(
    chdb: ChdbBackend,
) -> None:
    data = dataset(seed=8)
    write_in_batches(chdb, data, size=500)
    expected = expected_reports(data)
    spec = S.TABLES[S.LEDGER]
    chdb.insert(S.LEDGER, *spec.shaped([spec.values(row) for row in data[S.LEDGER][:40]]))
    assert S.ledger_totals(chdb) == expected["totals"]
    assert S.balances(chdb) == expected["balances"]
    assert S.entry_sums(chdb) == expected["entries"]
    assert S.daily_commissions(chdb) != expected["daily"]
    S.rebuild_aggregates(chdb)
    assert S.daily_commissions(chdb) == expected["daily"]
    assert S.campaign_minutes(chdb) == expected["minutes"]


def test_the_latest_binding_wins_and_an_inviter_beats_none_at_the_same_instant(ch: ClickHouse) -> None:
    sink = S.ClickHouseSink(ch)
    at = "2026-11-11T00:00:00.000Z"
    later = "2026-11-11T00:00:01.000Z"
    sink.add(S.BINDINGS, {"user_id": "a", "inviter_id": "x", "ts": at, "source": "order"})
    sink.flush()
    sink.add(S.BINDINGS, {"user_id": "a", "inviter_id": None, "ts": at, "source": "signup"})
    sink.add(S.BINDINGS, {"user_id": "b", "inviter_id": None, "ts": at, "source": "signup"})
    sink.add(S.BINDINGS, {"user_id": "b", "inviter_id": "a", "ts": later, "source": "click"})
    sink.add(S.BINDINGS, {"user_id": "c", "inviter_id": None, "ts": at, "source": "signup"})
    sink.flush()
    assert S.bindings(ch) == {"a": "x", "b": "a", "c": None}
    ch.command("OPTIMIZE TABLE bindings FINAL")
    assert S.bindings(ch) == {"a": "x", "b": "a", "c": None}


@pytest.mark.parametrize("example", sorted(p.name for p in FIXTURES.glob("*") if (p / "expected.json").exists()))
def test_reports_have_the_shape_and_arithmetic_of_the_spec_examples(chdb: ChdbBackend, example: str) -> None:
    expected = json.loads((FIXTURES / example / "expected.json").read_text())
    sink = S.ClickHouseSink(chdb)
    for i, (key, cents) in enumerate(expected["entries"].items()):
        order_id, level, beneficiary, kind = key.split("|")
        at = START + timedelta(seconds=i)
        sink.add(
            S.LEDGER,
            {
                "entry_id": key,
                "source_event_id": f"ev{i}",
                "ts": rfc3339(at),
                "order_id": order_id,
                "buyer_id": "b",
                "beneficiary_id": beneficiary,
                "level": int(level),
                "kind": kind,
                "amount_cents": cents,
                "campaign_id": None,
            },
        )
    for user, inviter in expected["bindings"].items():
        sink.add(S.BINDINGS, {"user_id": user, "inviter_id": None, "ts": rfc3339(START), "source": "signup"})
        if inviter is not None:
            sink.add(S.BINDINGS, {"user_id": user, "inviter_id": inviter, "ts": rfc3339(START), "source": "order"})
    sink.flush()
    assert S.entry_sums(chdb) == expected["entries"]
    assert S.ledger_totals(chdb) == expected["totals"]
    assert S.bindings(chdb) == expected["bindings"]
    assert {
        user: {"available_cents": available, "pending_cents": pending}
        for user, (pending, available) in S.balances(chdb).items()
    } == expected["balances"]


# --- parameters are data -------------------------------------------------------------------------------------------

HOSTILE = [
    "'; DROP TABLE ledger_entries; --",
    "' OR '1'='1",
    "\\",
    "\\N",
    "\\'",
    "a\tb\nc\rd",
    "nul\x00byte",
    '"double" `back`',
    "{keys:String}",
    "分销 ünïcødé 🎉",
    "%s $1$ ?",
]


def test_hostile_parameters_are_values_not_sql(ch: ClickHouse) -> None:
    for text in HOSTILE:
        rows = ch.query(
            "SELECT {s:String}, {a:Array(String)}, {n:Nullable(String)}, {m:Nullable(String)}",
            {"s": text, "a": [text, text], "n": text, "m": None},
        )
        assert rows == [(text, [text, text], text, None)], repr(text)
        assert ch.query("SELECT count() FROM ledger_entries WHERE entry_id = {id:String}", {"id": text}) == [(0,)]
    assert ch.query("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'ledger_entries'")


def test_hostile_values_round_trip_through_the_sink_and_dedupe(ch: ClickHouse) -> None:
    rows = [
        {
            "entry_id": f"{text}#{i}",
            "source_event_id": text,
            "ts": "2026-11-11T00:00:00.000Z",
            "order_id": text,
            "buyer_id": text,
            "beneficiary_id": text,
            "level": 1,
            "kind": "accrued",
            "amount_cents": 1,
            "campaign_id": text,
        }
        for i, text in enumerate(HOSTILE)
    ]
    clicks = [
        {"event_id": text, "ts": "2026-11-11T00:00:00.000Z", "visitor_id": text, "ref": text, "user_agent": text}
        for text in HOSTILE
    ]
    sink = S.ClickHouseSink(ch)
    sink.add_many(S.LEDGER, rows)
    sink.add_many(S.CLICKS, clicks)
    assert sink.flush() == {S.LEDGER: len(HOSTILE), S.CLICKS: len(HOSTILE)}
    sink.add_many(S.LEDGER, rows)
    sink.add_many(S.CLICKS, clicks)
    assert sink.flush() == {S.LEDGER: 0, S.CLICKS: 0}
    stored = ch.query("SELECT entry_id, order_id, campaign_id FROM ledger_entries FINAL")
    assert sorted(stored) == sorted((r["entry_id"], r["order_id"], r["campaign_id"]) for r in rows)
    assert sorted(ch.query("SELECT event_id, user_agent FROM clicks FINAL")) == sorted((t, t) for t in HOSTILE)
    assert S.entry_sums(ch) == {f"{t}|1|{t}|accrued": 1 for t in HOSTILE}


def test_times_keep_their_instant_whatever_the_offset(ch: ClickHouse) -> None:
    sink = S.ClickHouseSink(ch)
    for event_id, ts in [("z", "2026-11-11T00:00:00.123Z"), ("cst", "2026-11-11T08:00:00.123+08:00")]:
        sink.add(S.CLICKS, {"event_id": event_id, "ts": ts, "visitor_id": "v", "ref": "u"})
    sink.add(S.CLICKS, {"event_id": "micro", "ts": "2026-11-11T00:00:00.123456Z", "visitor_id": "v", "ref": "u"})
    sink.flush()
    rows = ch.query("SELECT DISTINCT toUnixTimestamp64Milli(ts) FROM clicks")
    assert rows == [(int(datetime(2026, 11, 11, 0, 0, 0, 123000, tzinfo=UTC).timestamp() * 1000),)]


def test_v1_and_v2_entries_are_stored_with_their_instants_nulls_and_signed_cents(ch: ClickHouse) -> None:
    def entry(entry_id: str, ts: str, kind: str, level: int, cents: int, **more: object) -> dict[str, object]:
        base: dict[str, object] = {"entry_id": entry_id, "source_event_id": f"ev-{entry_id}", "ts": ts}
        base |= {"order_id": "o1", "buyer_id": "b1", "beneficiary_id": "u1", "level": level, "kind": kind}
        return base | {"amount_cents": cents, "campaign_id": None} | more

    sink = S.ClickHouseSink(ch, chunk_rows=3)
    # First chunk: v1 records only (the v2 columns are left to their DEFAULTs); the second mixes in money out.
    sink.add_many(
        S.LEDGER,
        [
            entry("a", "2026-11-11T00:00:00.001Z", "accrued", 1, 1250, campaign_id="d11"),
            entry("b", "2026-11-11T08:00:00.002+08:00", "reversed", 2, -1250),
            entry("c", "2026-11-11T00:00:00.003999Z", "clawed_back", 3, -7),
            entry(
                "d",
                "2026-11-12T00:00:00.000Z",
                "withdrawn",
                0,
                -10_000,
                order_id=None,
                buyer_id=None,
                withdrawal_id="w1",
                fee_cents=0,
                payout_cents=10_000,
            ),
            entry(
                "e",
                "2026-11-12T00:00:01.000Z",
                "adjusted",
                0,
                -300,
                order_id=None,
                buyer_id=None,
                adjustment_id="adj1",
                reason="chargeback",
            ),
            entry("f", "1969-12-31T23:59:59.999Z", "settled", 1, 1),
        ],
    )
    assert sink.flush() == {S.LEDGER: 6}
    rows = ch.query(
        "SELECT entry_id, toUnixTimestamp64Milli(ts), order_id, buyer_id, level, kind, amount_cents, campaign_id,"
        " withdrawal_id, adjustment_id, reason, fee_cents, payout_cents FROM ledger_entries ORDER BY entry_id"
    )
    day = 1_794_355_200_000  # 2026-11-11T00:00:00.000Z
    assert [tuple(int(v) if k == 1 else v for k, v in enumerate(row)) for row in rows] == [
        ("a", day + 1, "o1", "b1", 1, "accrued", 1250, "d11", "", "", "", None, None),
        ("b", day + 2, "o1", "b1", 2, "reversed", -1250, "", "", "", "", None, None),
        ("c", day + 3, "o1", "b1", 3, "clawed_back", -7, "", "", "", "", None, None),
        ("d", day + 86_400_000, "", "", 0, "withdrawn", -10_000, "", "w1", "", "", 0, 10_000),
        ("e", day + 86_401_000, "", "", 0, "adjusted", -300, "", "", "adj1", "chargeback", None, None),
        ("f", -1, "o1", "b1", 1, "settled", 1, "", "", "", "", None, None),
    ]
    sink.add_many(S.LEDGER, [entry("a", "2026-11-11T00:00:00.001Z", "accrued", 1, 1250, campaign_id="d11")])
    assert sink.flush() == {S.LEDGER: 0}


# --- the chDB directory lock ---------------------------------------------------------------------------------------

OPEN_SNIPPET = """
import sys
from pathlib import Path
from streams.sinks.clickhouse import ChdbBackend, ChdbLockedError
try:
    ChdbBackend(Path(sys.argv[1])).close()
except ChdbLockedError as e:
    print(e)
    sys.exit(3)
"""


def _open_elsewhere(path: Path) -> subprocess.CompletedProcess[str]:
    """Try to open the directory from another process."""
    return subprocess.run(
        [sys.executable, "-c", OPEN_SNIPPET, str(path)], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_second_process_is_told_who_owns_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "owned"
    with ChdbBackend(path):
        refused = _open_elsewhere(path)
        assert refused.returncode == 3, refused.stderr
        assert f"pid {os.getpid()}" in refused.stdout
        assert "FENXIAO_CLICKHOUSE_URL" in refused.stdout and "Stop that process" in refused.stdout
        assert json.loads((path / LOCK_FILE).read_text())["pid"] == os.getpid()
    allowed = _open_elsewhere(path)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_a_directory_held_by_plain_chdb_is_reported_with_its_pid(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from chdb import session; s = session.Session(sys.argv[1]); print('ready', flush=True);"
            " sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        refused = _open_elsewhere(path)
        assert refused.returncode == 3, refused.stderr
        assert f"pid {holder.pid}" in refused.stdout
    finally:
        holder.communicate("", timeout=60)


def test_one_process_shares_its_directory_but_cannot_open_a_second(tmp_path: Path) -> None:
    with ChdbBackend(tmp_path / "one") as first, ChdbBackend(tmp_path / "one") as second:
        first.command("CREATE TABLE t (x Int64) ENGINE = Memory")
        assert second.query("SELECT count() FROM t") == [(0,)]
        with pytest.raises(ClickHouseError, match="one data directory per process") as raised:
            ChdbBackend(tmp_path / "two")
        assert not isinstance(raised.value, ChdbLockedError)
    with ChdbBackend(tmp_path / "two") as other:
        assert other.query("SELECT 1") == [(1,)]


def test_connect_picks_chdb_at_the_configured_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(names.ENV_CLICKHOUSE_URL, raising=False)
    monkeypatch.setenv(names.ENV_CLICKHOUSE_PATH, str(tmp_path / "configured"))
    backend = connect(Settings())
    try:
        assert isinstance(backend, ChdbBackend) and backend.path == (tmp_path / "configured").resolve()
    finally:
        backend.close()
