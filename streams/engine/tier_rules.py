"""Tier upgrades from performance (阶梯式分佣): evaluate [tier_rules] on a past period, publish tier events.

`fenxiao tiers evaluate --period 2026-11` reads each distributor's sales of the period (level 1, levels 1..N
of the team, own purchases), recruits, and the tier in force at its end (the `performance` report, from
ClickHouse or through the worker), picks the tier the rules give, and publishes only the changes to
fenxiao.tiers as ordinary tier events: event_id `tier:{period}:{user}:{tier}` (deterministic, so a repeat is a
redelivery the engine ignores), ts = the end of the period, so the new rates apply to orders paid from then
on. The tier in force is read from the sunk tier_events table, so a second run finds its own events there and
publishes nothing new. Rules on a recruit count are refused at config load unless allowed (docs/compliance.md).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams import names
from streams.engine.config import DEFAULT_TIER, ConfigError, FenxiaoConfig, TierRulesSection, parse
from streams.sinks.reports import Period

MAX_ID = 128


class TierEvaluationError(Exception):
    """Evaluation could not run; the message says what to fix."""


@dataclass(frozen=True)
class Standing:
    """One distributor's numbers for the evaluated period and the tier in force at its end ('' = none).

    gmv_cents is level-1 (direct) sales; level2/level3 the sales they earned on through their team; own sales
    are their own purchases. All are accepted paid GMV, gross of refunds, in cents.
    """

    gmv_cents: int
    recruits: int
    tier: str = ""
    own_sales_cents: int = 0
    level2_gmv_cents: int = 0
    level3_gmv_cents: int = 0

    def team_sales(self, levels: int) -> int:
        """Sales of levels 1..`levels` (team sales, 团队业绩)."""
        return sum((self.gmv_cents, self.level2_gmv_cents, self.level3_gmv_cents)[:levels])


@dataclass
class Evaluation:
    """What an evaluation found and published."""

    period: str
    evaluated: int
    events: list[dict[str, Any]] = field(default_factory=list)
    current: dict[str, str] = field(default_factory=dict)


def load_rules(path: str | Path) -> TierRulesSection:
    """The [tier_rules] of a config, after the whole config is validated like the worker validates it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {p}: {e.strerror} (pass --config with a fenxiao.toml)") from e
    parse(text, str(p))
    rules = FenxiaoConfig.model_validate(tomllib.loads(text)).tier_rules
    if rules is None:
        raise ConfigError(
            f"{p}: no tier_rules table: add tier_rules.rule entries (tier and min_gmv_cents, min_own_sales_cents"
            " and/or min_team_sales_cents)"
        )
    return rules


def target_tier(rules: TierRulesSection, standing: Standing) -> str:
    """The first rule (rules are listed best first) whose every threshold is met; none met -> standard."""
    for rule in rules.rule:
        if rule.min_gmv_cents is not None and standing.gmv_cents < rule.min_gmv_cents:
            continue
        if rule.min_own_sales_cents is not None and standing.own_sales_cents < rule.min_own_sales_cents:
            continue
        if rule.min_team_sales_cents is not None and standing.team_sales(rules.team_levels) < rule.min_team_sales_cents:
            continue
        if rule.min_recruits is not None and standing.recruits < rule.min_recruits:
            continue
        return rule.tier
    return DEFAULT_TIER


def _rank(rules: TierRulesSection, tier: str) -> int | None:
    """Position of a tier in the rules (0 = best), standard after them all; None for a tier the rules do not give."""
    order = list(dict.fromkeys(r.tier for r in rules.rule))
    if tier in order:
        return order.index(tier)
    return len(order) if tier == DEFAULT_TIER else None


def decide(rules: TierRulesSection, standings: Mapping[str, Standing]) -> dict[str, str]:
    """user -> new tier, for every distributor whose tier should change; demote = false only ever moves up."""
    changes: dict[str, str] = {}
    for user in sorted(standings):
        standing = standings[user]
        current = standing.tier or DEFAULT_TIER
        target = target_tier(rules, standing)
        if target == current:
            continue
        if not rules.demote:
            now, then = _rank(rules, current), _rank(rules, target)
            if now is None or then is None or then >= now:
                continue  # a hand-set tier the rules do not give, or not an upgrade
        changes[user] = target
    return changes


def _ts(period: Period) -> str:
    """The contract's ts form of the period's end."""
    return period.end_instant.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def event_id(user: str, period: Period, tier: str) -> str:
    """tier:{period}:{user}:{tier}, deterministic; hashed when that would pass the contract's 128 characters."""
    readable = f"tier:{period.label}:{user}:{tier}"
    if len(readable) <= MAX_ID:
        return readable
    digest = hashlib.sha256(f"{user}\0{tier}".encode()).hexdigest()[:40]
    return f"tier:{period.label}:{digest}"


def tier_records(changes: Mapping[str, str], period: Period) -> list[dict[str, Any]]:
    """The fenxiao.tiers records (topic, key, value) for the changes, as `fenxiao replay` produces them."""
    return [
        {
            "topic": names.TIERS,
            "key": user,
            "value": {"event_id": event_id(user, period, tier), "ts": _ts(period), "user_id": user, "tier": tier},
        }
        for user, tier in sorted(changes.items())
    ]


def standings_from_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Standing]:
    """The `performance` report's rows as standings."""
    return {
        str(r["distributor"]): Standing(
            int(r["gmv_cents"] or 0),
            int(r["recruits"] or 0),
            str(r["tier"] or ""),
            own_sales_cents=int(r.get("own_sales_cents") or 0),
            level2_gmv_cents=int(r.get("level2_gmv_cents") or 0),
            level3_gmv_cents=int(r.get("level3_gmv_cents") or 0),
        )
        for r in rows
    }


def _performance(period: Period) -> list[dict[str, Any]]:
    """The performance report for the period: from the local ClickHouse, or the worker when it holds chDB."""
    from streams.settings import get_settings
    from streams.sinks import clickhouse, reports, warehouse

    settings = get_settings()
    params = {"period": period.kind, "at": period.label}
    try:
        ch = warehouse.connect(settings)
    except clickhouse.ChdbLockedError as locked:
        try:
            report = reports.from_worker(
                "performance", params, settings.sink_port, settings.token_key.get_secret_value()
            )
        except reports.WorkerUnavailable as e:
            raise TierEvaluationError(f"{locked} Reading through the worker failed too: {e}") from None
    except clickhouse.ClickHouseError as e:
        raise TierEvaluationError(str(e)) from e
    else:
        try:
            clickhouse.migrate(ch)
            report = reports.run(ch, "performance", params)
        except clickhouse.ClickHouseError as e:
            raise TierEvaluationError(f"reading performance failed: {e}") from e
        finally:
            ch.close()
    return [dict(r) for r in report.records()]


def evaluate_command(period_text: str, config_path: str | None, publish: bool = True) -> Evaluation:
    """Evaluate the period and publish the changes (the `fenxiao tiers evaluate` command)."""
    import asyncio

    from streams.ops import replay
    from streams.settings import get_settings
    from streams.sinks import reports

    settings = get_settings()
    try:
        rules = load_rules(config_path or settings.config)
        period = reports.parse_period(rules.period, period_text)
    except (ConfigError, reports.ReportError) as e:
        raise TierEvaluationError(str(e)) from e
    standings = standings_from_rows(_performance(period))
    changes = decide(rules, standings)
    records = tier_records(changes, period)
    if publish and records:
        try:
            asyncio.run(replay.produce(settings.kafka, records, progress=False))
        except (replay.BrokerUnreachable, replay.ReplayError) as e:
            raise TierEvaluationError(f"publishing to {names.TIERS} failed: {e}") from e
    return Evaluation(period.label, len(standings), records, {u: s.tier for u, s in standings.items()})
