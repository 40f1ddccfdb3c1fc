"""[tier_rules] validation (unknown keys refused, errors name the key) and the evaluation rules."""

from __future__ import annotations

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
        ('[tier_rules]\n[[tier_rules.rule]]\ntier = "gold"\n', "tier_rules.rule.0: a rule needs min_gmv_cents"),
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
