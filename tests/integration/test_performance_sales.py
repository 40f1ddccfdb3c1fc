"""The performance report's own and team sales over hand-made rows, and the tier rules evaluated on them.

Rows go through the real ClickHouseSink into a fresh chDB; every expected number below is computed by hand
from the table in the comments.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.engine import tier_rules
from streams.sinks import reports
from streams.sinks import sink as S
from streams.sinks.clickhouse import ChdbBackend, migrate

pytestmark = pytest.mark.integration

BASE = """
[program]
levels = 3
[tiers.standard]
rates_bps = [1000, 500, 200]
[tiers.silver]
rates_bps = [1200, 600, 300]
[tiers.gold]
rates_bps = [1500, 700, 300]
[tier_rules]
team_levels = 3
[[tier_rules.rule]]
tier = "gold"
min_team_sales_cents = 70000
[[tier_rules.rule]]
tier = "silver"
min_own_sales_cents = 20000
"""

NOV = "2026-11-{:02d}T10:00:00.000Z"
# The tree: u1 <- u2 <- u3 <- u4 (u2 invited by u1, ...), all signed up in November; g9 is a guest.
SIGNUPS = [("u1", None), ("u2", "u1"), ("u3", "u2"), ("u4", "u3")]
# order, buyer, cents, day, the beneficiaries by level (accrued entries), refused?
ORDERS: list[tuple[str, str, int, str, list[str], bool]] = [
    ("o1", "u2", 10000, NOV.format(3), ["u1"], False),
    ("o2", "u3", 20000, NOV.format(4), ["u2", "u1"], False),
    ("o3", "u4", 40000, NOV.format(5), ["u3", "u2", "u1"], False),
    ("o4", "u1", 5000, NOV.format(6), [], False),  # u1 has no inviter: nobody earns, still u1's own purchase
    ("o5", "g9", 7000, NOV.format(7), ["u1"], False),  # a guest on u1's link: no own sales for a guest
    ("o6", "u2", 3000, NOV.format(8), [], True),  # refused (order_already_paid): no sales for anyone
    ("o7", "u2", 99999, "2026-12-01T00:00:00.000Z", ["u1"], False),  # December: outside the period
]
# Hand-computed for 2026-11: (level 1, level 2, level 3, team 1..3, own purchases, recruits).
EXPECTED = {
    "u1": (10000 + 7000, 20000, 40000, 77000, 5000, 1),
    "u2": (20000, 40000, 0, 60000, 10000, 1),
    "u3": (40000, 0, 0, 40000, 20000, 1),
    "u4": (0, 0, 0, 0, 40000, 0),
}


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[ChdbBackend]:
    """A migrated chDB holding the hand-made rows."""
    with ChdbBackend(tmp_path / "clickhouse") as ch:
        migrate(ch)
        sink = S.ClickHouseSink(ch)
        for user, inviter in SIGNUPS:
            sink.add(S.BINDINGS, {"user_id": user, "inviter_id": inviter, "ts": NOV.format(1), "source": "signup"})
        for order, buyer, cents, ts, chain, refused in ORDERS:
            paid = {"event_id": f"p-{order}", "ts": ts, "order_id": order, "type": "paid", "buyer_id": buyer}
            sink.add(S.ORDERS, {**paid, "amount_cents": cents})
            for level, user in enumerate(chain, start=1):
                sink.add(S.LEDGER, entry(order, buyer, user, level, cents // 10, ts))
            if refused:
                sink.add(S.DEAD_LETTERS, dead_letter(f"p-{order}", ts))
        sink.flush()
        yield ch


def entry(order: str, buyer: str, user: str, level: int, cents: int, ts: str) -> dict[str, Any]:
    """The accrued entry of one level of a paid order."""
    return {
        "entry_id": f"{order}-{level}",
        "source_event_id": f"p-{order}",
        "ts": ts,
        "order_id": order,
        "buyer_id": buyer,
        "beneficiary_id": user,
        "level": level,
        "kind": "accrued",
        "amount_cents": cents,
        "campaign_id": None,
    }


def dead_letter(event_id: str, ts: str) -> dict[str, Any]:
    """The engine's refusal of a paid event."""
    return {
        "topic": "fenxiao.orders",
        "partition": 0,
        "offset": 6,
        "event_id": event_id,
        "reason": "order_already_paid",
        "detail": "",
        "raw": "{}",
        "ts": ts,
    }


def test_performance_has_each_levels_sales_team_sales_and_own_purchases(chdb: ChdbBackend) -> None:
    report = reports.run(chdb, "performance", {"at": "2026-11"})
    got = {
        r["distributor"]: (
            r["gmv_cents"],
            r["level2_gmv_cents"],
            r["level3_gmv_cents"],
            r["team_gmv_cents"],
            r["own_sales_cents"],
            r["recruits"],
        )
        for r in report.records()
    }
    assert got == EXPECTED


def test_tier_rules_on_team_and_own_sales(chdb: ChdbBackend, tmp_path: Path) -> None:
    standings = tier_rules.standings_from_rows(reports.run(chdb, "performance", {"at": "2026-11"}).records())
    path = tmp_path / "fenxiao.toml"
    path.write_text(BASE)
    # u1: team 77,000 >= 70,000 -> gold; u3 and u4: own purchases 20,000 and 40,000 -> silver; u2: 60,000 and 10,000.
    assert tier_rules.decide(tier_rules.load_rules(path), standings) == {"u1": "gold", "u3": "silver", "u4": "silver"}
    path.write_text(BASE.replace("team_levels = 3", "team_levels = 2"))
    # Levels 1..2 only: u1 has 17,000 + 20,000 = 37,000 and 5,000 of own purchases, so stays standard.
    assert tier_rules.decide(tier_rules.load_rules(path), standings) == {"u3": "silver", "u4": "silver"}
