"""The program config (fenxiao.toml): validated once at start, resolved into one Plan per campaign."""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from streams import names

DEFAULT_TIER = "standard"

log = logging.getLogger(__name__)

Bps = Annotated[int, Field(ge=0, le=10_000, strict=True)]


class ConfigError(Exception):
    """A config the program refuses to run with; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TierRates(_Strict):
    """Commission rates of one tier, level 1 first, in basis points."""

    rates_bps: list[Bps] = Field(min_length=1)


class ProgramSection(_Strict):
    """The [program] table: the default plan."""

    levels: Annotated[int, Field(ge=1, le=3, strict=True)] = 3
    self_purchase: StrictBool = False
    attribution_window_seconds: Annotated[int, Field(ge=0, strict=True)] = 604_800
    freeze_seconds: Annotated[int, Field(ge=0, strict=True)] = 604_800
    max_total_bps: Bps = 3000


class CampaignSection(_Strict):
    """A [campaigns.X] table: overrides for orders carrying that campaign_id."""

    levels: Annotated[int, Field(ge=1, le=3, strict=True)] | None = None
    self_purchase: StrictBool | None = None
    max_total_bps: Bps | None = None
    tiers: dict[str, TierRates] = Field(default_factory=dict)


class PipelineSection(_Strict):
    """The [pipeline] table: how the stream is run, not what it pays."""

    ordering_grace_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0


class ClicksSection(_Strict):
    """The optional [clicks] table: how many clicks per event-time window may bind a visitor (click-spam limit)."""

    window_seconds: Annotated[int, Field(ge=1, le=86_400, strict=True)] = 60
    max_per_visitor: Annotated[int, Field(ge=0, strict=True)] = 10
    max_per_ip: Annotated[int, Field(ge=0, strict=True)] = 300


Cents = Annotated[int, Field(ge=0, strict=True)]
TIER_THRESHOLDS = ("min_gmv_cents", "min_own_sales_cents", "min_team_sales_cents", "min_recruits")
HEADCOUNT_KEY = "allow_headcount_rules"


class TierRule(_Strict):
    """One [[tier_rules.rule]]: the tier earned by meeting every threshold given, over the evaluated period."""

    tier: str = Field(min_length=1, max_length=128)
    min_gmv_cents: Cents | None = None  # level-1 (direct) sales
    min_own_sales_cents: Cents | None = None  # the distributor's own purchases
    min_team_sales_cents: Cents | None = None  # sales of levels 1..team_levels
    min_recruits: Annotated[int, Field(ge=0, strict=True)] | None = None  # headcount: refused unless allowed

    @model_validator(mode="after")
    def _has_threshold(self) -> TierRule:
        if all(getattr(self, key) is None for key in TIER_THRESHOLDS):
            raise ValueError(f"a rule needs at least one of {', '.join(TIER_THRESHOLDS)}")
        return self


class TierRulesSection(_Strict):
    """The optional [tier_rules] table: tiers earned from the previous period (used by `fenxiao tiers evaluate`)."""

    period: Literal["month", "quarter"] = "month"
    demote: StrictBool = True
    team_levels: Annotated[int, Field(ge=1, le=3, strict=True)] = 3
    allow_headcount_rules: StrictBool = False
    rule: list[TierRule] = Field(min_length=1)

    def headcount_rules(self) -> list[int]:
        """Indexes of the rules that pay on a recruit count (a tier for recruiting people, not for sales)."""
        return [i for i, r in enumerate(self.rule) if r.min_recruits is not None]


class ProductRates(_Strict):
    """A [products."SKU"] table: that product's own rate per level (over campaign and tier), or no commission."""

    rates_bps: list[Bps] | None = Field(default=None, min_length=1)
    commission: StrictBool = True

    @model_validator(mode="after")
    def _one_rule(self) -> ProductRates:
        if self.rates_bps is not None and not self.commission:
            raise ValueError("set either rates_bps or commission = false, not both")
        if self.rates_bps is None and self.commission:
            raise ValueError("needs rates_bps (its own rates) or commission = false (no commission)")
        return self


class WithdrawalsSection(_Strict):
    """The optional [withdrawals] table: the smallest request and the fee withheld from a payout."""

    min_cents: Annotated[int, Field(ge=0, le=10**12, strict=True)] = 100
    fee_bps: Bps = 0
    fee_min_cents: Annotated[int, Field(ge=0, le=10**12, strict=True)] = 0


class WebhooksSection(_Strict):
    """The optional [webhooks] table: where ledger entries and withdrawal states are POSTed, and how hard to try."""

    urls: list[str] = Field(min_length=1, max_length=20)
    secret_env: str = Field(default=names.ENV_WEBHOOK_SECRET, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)
    previous_secret_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)
    timeout_ms: Annotated[int, Field(ge=100, le=120_000, strict=True)] = 5000
    max_attempts: Annotated[int, Field(ge=1, le=50, strict=True)] = 8
    backoff_initial_ms: Annotated[int, Field(ge=1, le=3_600_000, strict=True)] = 1000
    backoff_max_ms: Annotated[int, Field(ge=1, le=3_600_000, strict=True)] = 300_000
    jitter_percent: Annotated[int, Field(ge=0, le=100, strict=True)] = 20
    queue_size: Annotated[int, Field(ge=1, le=100_000, strict=True)] = 1000
    concurrency: Annotated[int, Field(ge=1, le=64, strict=True)] = 4
    start: Literal["earliest", "latest"] = "earliest"

    @model_validator(mode="after")
    def _sane(self) -> WebhooksSection:
        from urllib.parse import urlsplit

        for i, url in enumerate(self.urls):
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018  (raises on a port that is not a number)
            except ValueError as e:
                raise ValueError(f"urls.{i}: {url!r} is not a URL ({e})") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"urls.{i}: {url!r} must be an http:// or https:// URL with a host")
            if url in self.urls[:i]:
                raise ValueError(f"urls.{i}: {url!r} is listed twice")
        if self.previous_secret_env == self.secret_env:
            raise ValueError(f"previous_secret_env: names the same variable as secret_env ({self.secret_env})")
        if self.backoff_max_ms < self.backoff_initial_ms:
            raise ValueError(
                f"backoff_max_ms: {self.backoff_max_ms} is below backoff_initial_ms = {self.backoff_initial_ms}"
            )
        return self


class FenxiaoConfig(_Strict):
    """The whole fenxiao.toml."""

    program: ProgramSection = Field(default_factory=ProgramSection)
    tiers: dict[str, TierRates]
    campaigns: dict[str, CampaignSection] = Field(default_factory=dict)
    pipeline: PipelineSection = Field(default_factory=PipelineSection)
    clicks: ClicksSection = Field(default_factory=ClicksSection)
    tier_rules: TierRulesSection | None = None
    products: dict[str, ProductRates] = Field(default_factory=dict)
    withdrawals: WithdrawalsSection = Field(default_factory=WithdrawalsSection)
    webhooks: WebhooksSection | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FenxiaoConfig:
        if DEFAULT_TIER not in self.tiers:
            raise ValueError(f"tiers.{DEFAULT_TIER}: the default tier must be defined")
        for name, tier in self.tiers.items():
            _enough_rates(f"tiers.{name}.rates_bps", tier, self.program.levels)
        for cid, camp in self.campaigns.items():
            levels = camp.levels or self.program.levels
            for name, tier in camp.tiers.items():
                if name not in self.tiers:
                    known = ", ".join(sorted(self.tiers))
                    raise ValueError(f"campaigns.{cid}.tiers.{name}: unknown tier (defined: {known})")
                _enough_rates(f"campaigns.{cid}.tiers.{name}.rates_bps", tier, levels)
            for name, tier in self.tiers.items():
                if name not in camp.tiers:
                    _enough_rates(f"tiers.{name}.rates_bps (used by campaigns.{cid})", tier, levels)
        all_levels = sorted({self.program.levels} | {c.levels for c in self.campaigns.values() if c.levels})
        for sku, product in self.products.items():
            if not sku:
                raise ValueError("products: a product needs a non-empty SKU name")
            if product.rates_bps is not None and len(product.rates_bps) < all_levels[-1]:
                raise ValueError(
                    f"products.{sku}.rates_bps: has {len(product.rates_bps)} rates but levels = {all_levels[-1]}"
                )
        for i, rule in enumerate(self.tier_rules.rule if self.tier_rules else []):
            if rule.tier not in self.tiers:
                known = ", ".join(sorted(self.tiers))
                raise ValueError(f"tier_rules.rule.{i}.tier: unknown tier {rule.tier!r} (defined: {known})")
        if self.tier_rules is not None and not self.tier_rules.allow_headcount_rules:
            for i in self.tier_rules.headcount_rules():
                raise ValueError(
                    f"tier_rules.rule.{i}.min_recruits: a tier for recruiting people pays on headcount, the mark of a"
                    " pyramid scheme (《禁止传销条例》 art. 7; docs/compliance.md); use sales thresholds"
                    f" (min_gmv_cents, min_own_sales_cents, min_team_sales_cents), or set tier_rules.{HEADCOUNT_KEY}"
                    " = true to run it anyway"
                )
        return self


def _enough_rates(key: str, tier: TierRates, levels: int) -> None:
    if len(tier.rates_bps) < levels:
        raise ValueError(f"{key}: has {len(tier.rates_bps)} rates but levels = {levels}")


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the engine needs to price an order of one campaign."""

    levels: int
    self_purchase: bool
    max_total_bps: int
    attribution_window_ms: int
    freeze_ms: int
    rates: dict[str, tuple[int, ...]]

    def rate(self, tier: str | None, level: int) -> int:
        """Rate in bps of a beneficiary at `level` (1-based); an unknown tier falls back to standard."""
        rates = self.rates.get(tier or DEFAULT_TIER) or self.rates[DEFAULT_TIER]
        return rates[level - 1]


@dataclass(frozen=True, slots=True)
class ClickLimits:
    """Clicks that may bind per visitor and per ip in one fixed event-time window; 0 = no limit."""

    window_ms: int = 60_000
    max_per_visitor: int = 10
    max_per_ip: int = 300

    def window(self, ts_ms: int) -> int:
        """The fixed window a click falls in: floor(ts / window), so every replay counts the same windows."""
        return ts_ms // self.window_ms


@dataclass(frozen=True, slots=True)
class WithdrawalRules:
    """The [withdrawals] rules: smallest request, fee in bps rounded half up, bounded by [fee_min_cents, amount]."""

    min_cents: int = 100
    fee_bps: int = 0
    fee_min_cents: int = 0

    def fee(self, amount_cents: int) -> int:
        """The fee withheld from a payout of amount_cents: half-up bps, at least fee_min_cents, at most the amount."""
        by_rate = (amount_cents * self.fee_bps + 5000) // 10_000
        return min(amount_cents, max(self.fee_min_cents, by_rate))


@dataclass(frozen=True, slots=True)
class Program:
    """The validated config resolved into plans: the engine's only view of fenxiao.toml."""

    base: Plan
    campaigns: dict[str, Plan]
    ordering_grace_seconds: float
    clicks: ClickLimits = ClickLimits()
    products: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    withdrawals: WithdrawalRules = WithdrawalRules()
    webhooks: WebhooksSection | None = None

    def item_rate(self, sku_id: str, level: int, tier_bps: int) -> int:
        """Rate of one item at `level`: the product's own rate, 0 for commission = false, else the tier rate."""
        if sku_id not in self.products:
            return tier_bps
        own = self.products[sku_id]
        return 0 if own is None else own[level - 1]

    def plan_for(self, campaign_id: str | None) -> Plan:
        """The plan of an order's campaign; no or an unknown campaign gets the base plan."""
        if campaign_id is None:
            return self.base
        return self.campaigns.get(campaign_id, self.base)

    @property
    def attribution_window_ms(self) -> int:
        """How far back a click can bind a visitor."""
        return self.base.attribution_window_ms

    @property
    def freeze_ms(self) -> int:
        """Completion to settlement."""
        return self.base.freeze_ms


def resolve(cfg: FenxiaoConfig) -> Program:
    """Turn the validated config into one Plan per campaign."""
    p = cfg.program
    base_rates = {name: tuple(t.rates_bps) for name, t in cfg.tiers.items()}
    base = Plan(
        levels=p.levels,
        self_purchase=p.self_purchase,
        max_total_bps=p.max_total_bps,
        attribution_window_ms=p.attribution_window_seconds * 1000,
        freeze_ms=p.freeze_seconds * 1000,
        rates=base_rates,
    )
    campaigns = {}
    for cid, c in cfg.campaigns.items():
        rates = dict(base_rates)
        rates.update({name: tuple(t.rates_bps) for name, t in c.tiers.items()})
        campaigns[cid] = Plan(
            levels=c.levels if c.levels is not None else p.levels,
            self_purchase=c.self_purchase if c.self_purchase is not None else p.self_purchase,
            max_total_bps=c.max_total_bps if c.max_total_bps is not None else p.max_total_bps,
            attribution_window_ms=base.attribution_window_ms,
            freeze_ms=base.freeze_ms,
            rates=rates,
        )
    limits = ClickLimits(
        window_ms=cfg.clicks.window_seconds * 1000,
        max_per_visitor=cfg.clicks.max_per_visitor,
        max_per_ip=cfg.clicks.max_per_ip,
    )
    products = {sku: tuple(p.rates_bps) if p.rates_bps is not None else None for sku, p in cfg.products.items()}
    w = cfg.withdrawals
    return Program(
        base=base,
        campaigns=campaigns,
        ordering_grace_seconds=cfg.pipeline.ordering_grace_seconds,
        clicks=limits,
        products=products,
        withdrawals=WithdrawalRules(min_cents=w.min_cents, fee_bps=w.fee_bps, fee_min_cents=w.fee_min_cents),
        webhooks=cfg.webhooks,
    )


def _explain(e: ValidationError) -> str:
    msgs = []
    for err in e.errors(include_url=False, include_input=False):
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        msgs.append(f"{key}: {msg}" if key else msg)
    return "; ".join(msgs)


def parse(text: str, source: str = "fenxiao.toml") -> Program:
    """Parse and validate config text; errors name the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from e
    try:
        cfg = FenxiaoConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_explain(e)}") from e
    warn_headcount(cfg, source)
    return resolve(cfg)


def warn_headcount(cfg: FenxiaoConfig, source: str) -> list[str]:
    """Log (and return) a warning for every headcount rule the operator allowed: loud at every start, on purpose."""
    rules = cfg.tier_rules
    if rules is None:
        return []
    warnings = [
        f"{source}: tier_rules.rule.{i}.min_recruits pays tier {rules.rule[i].tier!r} on headcount because"
        f" tier_rules.{HEADCOUNT_KEY} = true; paying for recruiting people is the mark of a pyramid scheme"
        " (《禁止传销条例》 art. 7), see docs/compliance.md"
        for i in rules.headcount_rules()
    ]
    for text in warnings:
        log.warning("%s", text)
    return warnings


def load(path: str | Path) -> Program:
    """Read fenxiao.toml from disk."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {p} (pass --config with a fenxiao.toml)") from e
    return parse(text, str(p))
