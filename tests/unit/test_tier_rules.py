"""[tier_rules] validation (unknown keys refused, errors name the key) and the evaluation rules."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from streams import names
from streams.engine import tier_rules
from streams.engine.config import ConfigError, TierRulesSection, parse
from streams.engine.tier_rules import Standing, decide, event_id, load_rules, target_tier, tier_records
from streams.sinks.reports import parse_period

BASE = """
[program]
levels = 3
[tiers.standard]
rates_bps = [1000, 500, 200]
[tiers.silver]
rates_bps = [1200, 600, 300]
[tiers.gold]
rates_bps = [1500, 700, 300]
"""

RULES = """
[tier_rules]
period = "month"
allow_headcount_rules = true
[[tier_rules.rule]]
tier = "gold"
min_gmv_cents = 5000000
min_recruits = 20
[[tier_rules.rule]]
tier = "silver"
min_gmv_cents = 1000000
"""


def rules_of(text: str, tmp_path: Path) -> TierRulesSection:
    """Load [tier_rules] from a config file with BASE + text."""
    path = tmp_path / "fenxiao.toml"
    path.write_text(BASE + text)
    return load_rules(path)


def test_rules_load_in_order(tmp_path: Path) -> None:
    rules = rules_of(RULES, tmp_path)
    assert [r.tier for r in rules.rule] == ["gold", "silver"]
    assert rules.rule[0].min_recruits == 20 and rules.rule[1].min_recruits is None
    assert rules.period == "month" and rules.demote is True


def test_config_without_tier_rules_still_parses_and_evaluate_says_what_to_add(tmp_path: Path) -> None:
    parse(BASE)
    with pytest.raises(ConfigError, match="no tier_rules table"):
        rules_of("", tmp_path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[tier_rules]\n[[tier_rules.rule]]\ntier = "gold"\nmin_gmv = 5\n', "tier_rules.rule.0.min_gmv: unknown key"),
        (
            '[tier_rules]\nperiod = "month"\nevery = 1\n[[tier_rules.rule]]\ntier = "gold"\nmin_recruits = 1\n',
            "tier_rules.every: unknown key",
        ),
        (
            '[tier_rules]\n[[tier_rules.rule]]\ntier = "platinum"\nmin_recruits = 1\n',
            "tier_rules.rule.0.tier: unknown tier",
        ),
        ('[tier_rules]\n[[tier_rules.rule]]\ntier = "gold"\n', "tier_rules.rule.0: a rule needs at least one of"),
        (
            '[tier_rules]\nteam_levels = 4\n[[tier_rules.rule]]\ntier = "gold"\nmin_gmv_cents = 1\n',
            "tier_rules.team_levels",
        ),
        (
            '[tier_rules]\n[[tier_rules.rule]]\ntier = "gold"\nmin_team_sales_cents = -5\n',
            "tier_rules.rule.0.min_team_sales_cents",
        ),
        (
            '[tier_rules]\n[[tier_rules.rule]]\ntier = "gold"\nmin_own_sales_cents = 9.5\n',
            "tier_rules.rule.0.min_own_sales_cents",
        ),
        (
            '[tier_rules]\nallow_headcount_rules = "yes"\n[[tier_rules.rule]]\ntier = "gold"\nmin_gmv_cents = 1\n',
            "tier_rules.allow_headcount_rules",
        ),
        ('[tier_rules]\n[[tier_rules.rule]]\ntier = "gold"\nmin_gmv_cents = -1\n', "tier_rules.rule.0.min_gmv_cents"),
        ('[tier_rules]\n[[tier_rules.rule]]\ntier = "gold"\nmin_gmv_cents = 1.5\n', "tier_rules.rule.0.min_gmv_cents"),
        ('[tier_rules]\n[[tier_rules.rule]]\ntier = "gold"\nmin_recruits = "20"\n', "tier_rules.rule.0.min_recruits"),
        ('[tier_rules]\nperiod = "week"\n[[tier_rules.rule]]\ntier = "gold"\nmin_recruits = 1\n', "tier_rules.period"),
        ('[tier_rules]\ndemote = "no"\n[[tier_rules.rule]]\ntier = "gold"\nmin_recruits = 1\n', "tier_rules.demote"),
        ('[tier_rules]\nperiod = "month"\n', "tier_rules.rule"),
    ],
)
def test_bad_tier_rules_are_refused_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(BASE + text)
    assert key in str(e.value)


def test_first_rule_met_wins_and_none_met_is_standard(tmp_path: Path) -> None:
    rules = rules_of(RULES, tmp_path)
    assert target_tier(rules, Standing(5_000_000, 20)) == "gold"
    assert target_tier(rules, Standing(5_000_000, 19)) == "silver"  # gold needs both thresholds
    assert target_tier(rules, Standing(1_000_000, 0)) == "silver"
    assert target_tier(rules, Standing(999_999, 100)) == "standard"


def test_decide_publishes_only_changes(tmp_path: Path) -> None:
    rules = rules_of(RULES, tmp_path)
    standings = {
        "up": Standing(6_000_000, 25, ""),
        "same": Standing(2_000_000, 0, "silver"),
        "down": Standing(0, 0, "gold"),
        "quiet": Standing(0, 0, ""),
        "hand-set": Standing(0, 0, "vip"),
    }
    assert decide(rules, standings) == {"up": "gold", "down": "standard", "hand-set": "standard"}


def test_without_demotion_tiers_only_go_up(tmp_path: Path) -> None:
    rules = rules_of(RULES.replace('period = "month"', "demote = false"), tmp_path)
    standings = {"up": Standing(2_000_000, 0, ""), "down": Standing(0, 0, "gold"), "vip": Standing(9**9, 99, "vip")}
    assert decide(rules, standings) == {"up": "silver"}


def test_tier_events_are_deterministic_and_take_effect_at_the_period_end() -> None:
    period = parse_period("month", "2026-11")
    records = tier_records({"u1": "gold", "u0": "silver"}, period)
    assert records == tier_records({"u0": "silver", "u1": "gold"}, period)
    assert records[0] == {
        "topic": names.TIERS,
        "key": "u0",
        "value": {
            "event_id": "tier:2026-11:u0:silver",
            "ts": "2026-12-01T00:00:00.000Z",
            "user_id": "u0",
            "tier": "silver",
        },
    }
    assert parse_period("quarter", "2026-Q4").end_instant.isoformat() == "2027-01-01T00:00:00+00:00"


def test_long_user_ids_still_give_contract_sized_event_ids() -> None:
    period = parse_period("month", "2026-11")
    long_a, long_b = "a" * 128, "a" * 127 + "b"
    assert len(event_id(long_a, period, "gold")) <= tier_rules.MAX_ID
    assert event_id(long_a, period, "gold") != event_id(long_b, period, "gold")
    assert event_id(long_a, period, "gold") == event_id(long_a, period, "gold")


# --- own and team sales; headcount rules ------------------------------------------------------------------------

SALES_RULES = """
[tier_rules]
team_levels = 2
[[tier_rules.rule]]
tier = "gold"
min_team_sales_cents = 1000000
min_own_sales_cents = 50000
[[tier_rules.rule]]
tier = "silver"
min_team_sales_cents = 300000
"""


def test_team_sales_add_up_the_configured_levels_and_own_sales_are_a_separate_threshold(tmp_path: Path) -> None:
    rules = rules_of(SALES_RULES, tmp_path)
    assert rules.team_levels == 2 and rules.allow_headcount_rules is False
    # Level 1 + level 2 = 600,000 + 400,000 = 1,000,000 >= gold's team threshold; level 3 is outside team_levels = 2.
    team_only = Standing(600_000, 0, "", own_sales_cents=0, level2_gmv_cents=400_000, level3_gmv_cents=900_000)
    assert team_only.team_sales(2) == 1_000_000 and team_only.team_sales(3) == 1_900_000
    assert target_tier(rules, team_only) == "silver"  # gold also needs 50,000 of own purchases
    assert target_tier(rules, Standing(600_000, 0, "", 50_000, 400_000, 0)) == "gold"
    assert target_tier(rules, Standing(600_000, 0, "", 50_000, 399_999, 0)) == "silver"  # 999,999 of team sales
    # 200,000 + 99,999 = 299,999 < 300,000, however large level 3 is.
    assert target_tier(rules, Standing(200_000, 0, "", 10**9, 99_999, 10**9)) == "standard"
    assert target_tier(rules, Standing(200_000, 0, "", 0, 100_000, 0)) == "silver"
    wide = rules_of(SALES_RULES.replace("team_levels = 2", "team_levels = 3"), tmp_path)
    assert (
        target_tier(wide, team_only) == "silver"
        and target_tier(wide, Standing(100_000, 0, "", 0, 0, 200_000)) == "silver"
    )


def test_standings_read_the_performance_reports_sales_columns() -> None:
    rows = [
        {
            "distributor": "u1",
            "gmv_cents": 10,
            "level2_gmv_cents": 20,
            "level3_gmv_cents": 30,
            "team_gmv_cents": 60,
            "own_sales_cents": 7,
            "recruits": 2,
            "tier": "",
        }
    ]
    assert tier_rules.standings_from_rows(rows) == {"u1": Standing(10, 2, "", 7, 20, 30)}


HEADCOUNT = """
[tier_rules]
[[tier_rules.rule]]
tier = "gold"
min_gmv_cents = 100
[[tier_rules.rule]]
tier = "silver"
min_recruits = 5
"""


def test_a_rule_that_pays_on_headcount_is_refused_naming_the_key_and_the_way_out() -> None:
    with pytest.raises(ConfigError) as e:
        parse(BASE + HEADCOUNT, "prog.toml")
    message = str(e.value)
    assert message.startswith("prog.toml: tier_rules.rule.1.min_recruits:")
    assert "tier_rules.allow_headcount_rules = true" in message and "pyramid" in message


def test_an_allowed_headcount_rule_loads_with_a_warning_every_start(caplog: pytest.LogCaptureFixture) -> None:
    allowed = HEADCOUNT.replace("[tier_rules]\n", "[tier_rules]\nallow_headcount_rules = true\n")
    with caplog.at_level(logging.WARNING, logger="streams.engine.config"):
        parse(BASE + allowed, "prog.toml")
        parse(BASE + allowed, "prog.toml")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("prog.toml: tier_rules.rule.1.min_recruits pays tier 'silver' on headcount")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streams.engine.config"):
        parse(BASE + SALES_RULES)  # sales rules only: nothing to warn about
        parse(BASE + SALES_RULES.replace("[tier_rules]\n", "[tier_rules]\nallow_headcount_rules = true\n"))
    assert caplog.records == []
