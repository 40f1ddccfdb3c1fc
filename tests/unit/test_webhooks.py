"""Webhooks without a broker: the signature against an outside HMAC, header parsing, backoff, config, delivery."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from streams import names
from streams.engine.config import ConfigError, WebhooksSection, parse
from streams.sinks import webhooks
from streams.sinks.webhooks import Deliverer, Endpoint, Event, Pending, SignatureError, Tracker

SECRET = "whsec_fenxiao_test_0123456789"
T = 1764633600  # 2025-12-02T00:00:00Z
BODY = b'{"id":"e-1","type":"ledger.entry"}'
# printf '%s' '1764633600.{"id":"e-1","type":"ledger.entry"}' \
#   | openssl dgst -sha256 -hmac 'whsec_fenxiao_test_0123456789'
OPENSSL_V1 = "1ef6625d14f3157545dcbd706676ca6968fb8eb04a4f467545a37b90fa063e60"
# the same message under 'another-secret-9876543210' (a rotated secret), also from openssl
OTHER_V1 = "9734bf9665f1f6e103d5a7d3e3b3bd3f903d41d33032f11d425a03f72d728d51"

BASE = "[tiers.standard]\nrates_bps = [1000, 500, 200]\n"


def rules(**kw: Any) -> WebhooksSection:
    """A [webhooks] section for tests."""
    return WebhooksSection(**{"urls": ["http://127.0.0.1:9/hook"], **kw})


# ---------------------------------------------------------------- signature


def test_sign_matches_an_hmac_computed_by_openssl() -> None:
    assert webhooks.sign(SECRET, T, BODY) == OPENSSL_V1
    assert webhooks.signature_header(SECRET, BODY, T) == f"t={T},v1={OPENSSL_V1}"


def test_verify_accepts_the_signed_body_and_returns_its_timestamp() -> None:
    assert webhooks.verify(SECRET, f"t={T},v1={OPENSSL_V1}", BODY, tolerance_s=300, now=T + 299) == T


def test_during_a_rotation_the_header_carries_a_v1_per_secret_both_from_openssl() -> None:
    header = webhooks.signature_header(SECRET, BODY, T, previous="another-secret-9876543210")
    assert header == f"t={T},v1={OPENSSL_V1},v1={OTHER_V1}"


def test_verify_accepts_any_matching_v1_so_a_secret_can_be_rotated() -> None:
    header = f"t={T},v1={OTHER_V1},v0=ignored,v1={OPENSSL_V1}"
    assert webhooks.verify(SECRET, header, BODY, now=T) == T
    assert webhooks.verify("another-secret-9876543210", header, BODY, now=T) == T


@pytest.mark.parametrize(
    ("secret", "header", "body", "now", "why"),
    [
        (SECRET, f"t={T},v1={OPENSSL_V1}", BODY + b" ", T, "no v1 signature matches"),
        ("wrong-secret-0123456789", f"t={T},v1={OPENSSL_V1}", BODY, T, "no v1 signature matches"),
        (SECRET, f"t={T + 1},v1={OPENSSL_V1}", BODY, T, "no v1 signature matches"),  # t is signed too
        (SECRET, f"t={T},v1={OPENSSL_V1}", BODY, T + 301, "outside the tolerance"),
        (SECRET, f"t={T},v1={OPENSSL_V1}", BODY, T - 301, "outside the tolerance"),
        (SECRET, None, BODY, T, "no Fenxiao-Signature header"),
        (SECRET, "", BODY, T, "no Fenxiao-Signature header"),
        (SECRET, f"v1={OPENSSL_V1}", BODY, T, "no t= timestamp"),
        (SECRET, f"t={T}", BODY, T, "no v1= signature"),
        (SECRET, f"t=soon,v1={OPENSSL_V1}", BODY, T, "is not a unix timestamp"),
        (SECRET, f"t={T},t={T},v1={OPENSSL_V1}", BODY, T, "more than one t="),
        (SECRET, f"t={T};v1={OPENSSL_V1}", BODY, T, "is not a unix timestamp"),
        (SECRET, f"t={T},{OPENSSL_V1}", BODY, T, "expected key=value"),
    ],
)
def test_verify_refuses_with_the_reason(secret: str, header: str | None, body: bytes, now: int, why: str) -> None:
    with pytest.raises(SignatureError, match=why):
        webhooks.verify(secret, header, body, tolerance_s=300, now=now)


def test_verify_with_tolerance_zero_skips_the_age_check() -> None:
    assert webhooks.verify(SECRET, f"t={T},v1={OPENSSL_V1}", BODY, tolerance_s=0, now=T + 10**6) == T


def test_parse_header_keeps_every_v1_in_order_and_ignores_spaces() -> None:
    assert webhooks.parse_header(f" t={T} , v1=aa, v1=bb ,v2=cc") == (T, ["aa", "bb"])


# ---------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("u", "expected"),
    [
        # initial 1000 ms doubling, capped at 10000; jitter 20 % takes off u * 20 % of the step (floored)
        (0.0, [1000, 2000, 4000, 8000, 10000, 10000]),
        (0.5, [900, 1800, 3600, 7200, 9000, 9000]),
        (0.75, [850, 1700, 3400, 6800, 8500, 8500]),
    ],
)
def test_backoff_schedule(u: float, expected: list[int]) -> None:
    r = rules(backoff_initial_ms=1000, backoff_max_ms=10_000, jitter_percent=20)
    assert [webhooks.backoff_ms(n, r, u) for n in range(1, 7)] == expected


def test_backoff_without_jitter_is_exact_and_a_huge_attempt_stays_capped() -> None:
    r = rules(backoff_initial_ms=250, backoff_max_ms=3_600_000, jitter_percent=0)
    assert [webhooks.backoff_ms(n, r, 0.99) for n in (1, 2, 3, 4)] == [250, 500, 1000, 2000]
    assert webhooks.backoff_ms(50, r, 0.99) == 3_600_000


# ---------------------------------------------------------------- config


def test_webhooks_section_defaults() -> None:
    p = parse(BASE + '[webhooks]\nurls = ["https://hooks.example/fx"]\n')
    assert p.webhooks is not None
    w = p.webhooks
    assert (w.urls, w.secret_env, w.timeout_ms, w.max_attempts) == (
        ["https://hooks.example/fx"],
        names.ENV_WEBHOOK_SECRET,
        5000,
        8,
    )
    assert (w.backoff_initial_ms, w.backoff_max_ms, w.jitter_percent, w.queue_size, w.concurrency, w.start) == (
        1000,
        300_000,
        20,
        1000,
        4,
        "earliest",
    )


def test_no_webhooks_section_means_none() -> None:
    assert parse(BASE).webhooks is None


@pytest.mark.parametrize(
    ("section", "why"),
    [
        ("", "webhooks.urls: Field required"),
        ("urls = []", "webhooks.urls: List should have at least 1 item"),
        ('urls = ["ftp://x/y"]', "webhooks: urls.0: 'ftp://x/y' must be an http:// or https:// URL with a host"),
        ('urls = ["https:///nohost"]', "webhooks: urls.0: 'https:///nohost' must be an http://"),
        ('urls = ["http://h:port/"]', "webhooks: urls.0: 'http://h:port/' is not a URL"),
        ('urls = ["http://a/", "http://a/"]', "webhooks: urls.1: 'http://a/' is listed twice"),
        ('urls = ["http://a/"]\nbackoff_initial_ms = 5000\nbackoff_max_ms = 4000', "webhooks: backoff_max_ms: 4000"),
        ('urls = ["http://a/"]\ntimeout_ms = "5000"', "webhooks.timeout_ms: Input should be a valid integer"),
        ('urls = ["http://a/"]\ntimeout_ms = 10', "webhooks.timeout_ms: Input should be greater than or equal to 100"),
        ('urls = ["http://a/"]\nmax_attempts = 0', "webhooks.max_attempts: Input should be greater than or equal"),
        ('urls = ["http://a/"]\njitter_percent = 101', "webhooks.jitter_percent: Input should be less than or equal"),
        ('urls = ["http://a/"]\nqueue_size = 0', "webhooks.queue_size"),
        ('urls = ["http://a/"]\nconcurrency = 65', "webhooks.concurrency"),
        ('urls = ["http://a/"]\nstart = "now"', "webhooks.start: Input should be 'earliest' or 'latest'"),
        ('urls = ["http://a/"]\nsecret_env = "MY SECRET"', "webhooks.secret_env: String should match pattern"),
        ('urls = ["http://a/"]\nsecret = "inline"', "webhooks.secret: unknown key"),
        (
            'urls = ["http://a/"]\nsecret_env = "A"\nprevious_secret_env = "A"',
            "webhooks: previous_secret_env: names the same variable as secret_env (A)",
        ),
    ],
)
def test_webhooks_config_errors_name_the_key(section: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(BASE + "[webhooks]\n" + section + "\n")
    assert why in str(e.value)


def test_secret_comes_from_the_named_variable_and_must_be_long_enough() -> None:
    r = rules(secret_env="SHOP_HOOK_SECRET")
    assert webhooks.secret_of(r, {"SHOP_HOOK_SECRET": "s" * 16}) == "s" * 16
    with pytest.raises(webhooks.WebhookError, match=r"webhooks\.secret_env: SHOP_HOOK_SECRET is not set"):
        webhooks.secret_of(r, {names.ENV_WEBHOOK_SECRET: "x" * 32})
    with pytest.raises(webhooks.WebhookError, match="SHOP_HOOK_SECRET is shorter than 16 characters"):
        webhooks.secret_of(r, {"SHOP_HOOK_SECRET": "s" * 15})


def test_the_previous_secret_is_optional_but_when_named_must_be_set() -> None:
    assert webhooks.previous_secret_of(rules(), {}) is None
    r = rules(previous_secret_env="OLD_HOOK_SECRET")
    assert webhooks.previous_secret_of(r, {"OLD_HOOK_SECRET": "o" * 20}) == "o" * 20
    with pytest.raises(webhooks.WebhookError, match=r"webhooks\.previous_secret_env: OLD_HOOK_SECRET is not set"):
        webhooks.previous_secret_of(r, {})


# ---------------------------------------------------------------- events


ENTRY = {
    "entry_id": "o-1:accrued:1",
    "source_event_id": "ev-9",
    "ts": "2026-11-11T00:00:05Z",
    "order_id": "o-1",
    "buyer_id": "b1",
    "beneficiary_id": "u1",
    "level": 1,
    "kind": "accrued",
    "amount_cents": 1234,
    "campaign_id": None,
}
STATE = {
    "id": "w-7:approved",
    "withdrawal_id": "w-7",
    "distributor_id": "u1",
    "status": "approved",
    "amount_cents": 5000,
    "channel": "alipay",
    "fee_cents": None,
    "payout_cents": None,
    "ts": "2026-11-12T08:00:00Z",
    "event_id": "wev-2",
}


def test_a_ledger_entry_becomes_a_ledger_entry_event() -> None:
    ev = webhooks.event_of(names.COMMISSIONS, ENTRY)
    assert (ev.id, ev.type) == ("o-1:accrued:1", "ledger.entry")
    assert json.loads(ev.body) == {
        "id": "o-1:accrued:1",
        "type": "ledger.entry",
        "created": "2026-11-11T00:00:05Z",
        "data": ENTRY,
    }


def test_a_withdrawal_state_becomes_a_withdrawal_status_event() -> None:
    ev = webhooks.event_of(names.WITHDRAWAL_STATES, STATE)
    assert (ev.id, ev.type) == ("w-7:approved", "withdrawal.approved")
    assert json.loads(ev.body)["data"] == STATE
    assert json.loads(ev.body)["created"] == "2026-11-12T08:00:00Z"


def test_the_same_record_gives_the_same_body_so_redeliveries_are_identical() -> None:
    assert webhooks.event_of(names.COMMISSIONS, ENTRY) == webhooks.event_of(names.COMMISSIONS, dict(ENTRY))


@pytest.mark.parametrize(
    ("topic", "record", "why"),
    [
        (names.COMMISSIONS, {"kind": "accrued"}, "without its id"),
        (names.COMMISSIONS, {**ENTRY, "entry_id": ""}, "without its id"),
        (names.WITHDRAWAL_STATES, {"id": "w:paid"}, "without a status"),
        (names.WITHDRAWAL_STATES, {"status": "paid"}, "without its id"),
        (names.BINDINGS, {"user_id": "u"}, "is not a webhook source"),
    ],
)
def test_records_without_an_id_are_refused(topic: str, record: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        webhooks.event_of(topic, record)


def test_redact_drops_user_info_and_query_which_may_hold_tokens() -> None:
    assert webhooks.redact("https://bob:pw@hooks.example:8443/fx/in?token=abc#x") == "https://hooks.example:8443/fx/in"
    assert webhooks.redact("http://[::1]:81/h") == "http://[::1]:81/h"


# ---------------------------------------------------------------- commit tracking


def test_tracker_commits_only_the_finished_prefix_of_each_partition() -> None:
    t = Tracker()
    a = [Pending(o, 2) for o in (10, 11, 12)]
    b = [Pending(o, 2) for o in (0, 1)]
    for p in a:
        t.add("A", p)
    for p in b:
        t.add("B", p)
    a[1].left = 0  # 11 done, 10 not: nothing of A may be committed
    b[0].left = 0
    assert t.committable() == {"B": 1}
    assert t.unfinished() == 3
    a[0].left = 0
    assert t.committable() == {"A": 12}  # 10 and 11 done; 12 still out
    assert t.committable() == {}  # nothing new
    a[2].left, b[1].left = 0, 0
    assert t.committable() == {"A": 13, "B": 2}
    assert t.unfinished() == 0


# ---------------------------------------------------------------- one URL against a local receiver


class Recording(Deliverer):
    """A deliverer whose given-up deliveries are kept in memory instead of Redis (no Redis in the unit run)."""

    def __init__(self, r: WebhooksSection) -> None:
        super().__init__("127.0.0.1:9", "g", "redis://127.0.0.1:9/0", r, SECRET, rng=lambda: 0.0)
        self.failed: list[tuple[str, str, int, str]] = []

    async def record_failure(
        self, ep: Endpoint | None, ev: Event | None, attempts: int, reason: str, **extra: str
    ) -> bool:
        self.failed.append((ep.name if ep else "", ev.id if ev else "", attempts, reason))
        return True


@pytest.fixture
async def receiver() -> AsyncIterator[dict[str, Any]]:
    """An aiohttp receiver on 127.0.0.1 answering from a script of statuses (then 200), checking signatures."""
    box: dict[str, Any] = {"script": [], "got": [], "bad": []}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            webhooks.verify(SECRET, request.headers.get(webhooks.SIGNATURE_HEADER), body)
        except SignatureError as e:
            box["bad"].append(str(e))
        box["got"].append((request.headers[webhooks.EVENT_ID_HEADER], request.headers[webhooks.ATTEMPT_HEADER], body))
        status = box["script"].pop(0) if box["script"] else 200
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    box["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield box
    finally:
        await runner.cleanup()


async def deliver(box: dict[str, Any], evs: list[Event], **kw: Any) -> tuple[Recording, Endpoint, list[bool]]:
    """Deliver events one after another to the receiver through one Endpoint."""
    d = Recording(rules(urls=[box["url"]], backoff_initial_ms=5, backoff_max_ms=20, **kw))
    ep = d.endpoints[0]
    await ep.open()
    try:
        return d, ep, [await ep.deliver(ev) for ev in evs]
    finally:
        await ep.close()
        await d.close()


async def test_a_failing_receiver_is_retried_until_it_answers_2xx(receiver: dict[str, Any]) -> None:
    receiver["script"] = [500, 503]
    ev = webhooks.event_of(names.COMMISSIONS, ENTRY)
    d, ep, done = await deliver(receiver, [ev], max_attempts=5)
    assert done == [True]
    assert [(i, a) for i, a, _ in receiver["got"]] == [(ev.id, "1"), (ev.id, "2"), (ev.id, "3")]
    assert all(body == ev.body for _, _, body in receiver["got"])
    assert receiver["bad"] == []
    assert (ep.stats.delivered, ep.stats.failed, ep.stats.attempts, ep.down) == (1, 0, 3, False)
    assert d.failed == []


async def test_a_redirect_is_a_failure_not_followed(receiver: dict[str, Any]) -> None:
    receiver["script"] = [302, 302]
    ev = webhooks.event_of(names.COMMISSIONS, ENTRY)
    d, ep, done = await deliver(receiver, [ev], max_attempts=2)
    assert done == [True]
    assert d.failed == [(ep.name, ev.id, 2, "HTTP 302")]


async def test_given_up_after_max_attempts_then_one_attempt_each_until_it_answers(receiver: dict[str, Any]) -> None:
    receiver["script"] = [500, 500, 500, 500, 500]
    evs = [webhooks.event_of(names.COMMISSIONS, {**ENTRY, "entry_id": f"e{i}"}) for i in range(4)]
    d, ep, done = await deliver(receiver, evs, max_attempts=3)
    assert done == [True] * 4
    # e0: 3 attempts, given up, the URL is down; e1: one attempt (the 4th 500), e2: one (the 5th), e3: 200.
    assert [i for i, _, _ in receiver["got"]] == ["e0", "e0", "e0", "e1", "e2", "e3"]
    assert d.failed == [(ep.name, "e0", 3, "HTTP 500"), (ep.name, "e1", 1, "HTTP 500"), (ep.name, "e2", 1, "HTTP 500")]
    assert (ep.stats.delivered, ep.stats.failed, ep.down) == (1, 3, False)


async def test_a_receiver_that_is_not_listening_fails_with_the_connection_error() -> None:
    box = {"url": "http://127.0.0.1:9/hook"}  # discard port: nothing listens on 127.0.0.1:9
    d, _, done = await deliver(box, [webhooks.event_of(names.COMMISSIONS, ENTRY)], max_attempts=2)
    assert done == [True]
    assert len(d.failed) == 1 and d.failed[0][2] == 2
    assert "ClientConnectorError" in d.failed[0][3]


async def test_a_slow_receiver_times_out(receiver: dict[str, Any]) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response()

    app = web.Application()
    app.router.add_post("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        box = {"url": f"http://127.0.0.1:{runner.addresses[0][1]}/slow"}
        d, _, _ = await deliver(box, [webhooks.event_of(names.COMMISSIONS, ENTRY)], max_attempts=1, timeout_ms=200)
    finally:
        await runner.cleanup()
    assert [f[3] for f in d.failed] == ["timeout after 200 ms"]


async def test_stopping_during_a_backoff_leaves_the_record_unfinished(receiver: dict[str, Any]) -> None:
    receiver["script"] = [500] * 10
    d = Recording(rules(urls=[receiver["url"]], backoff_initial_ms=10_000, backoff_max_ms=10_000, max_attempts=5))
    ep = d.endpoints[0]
    await ep.open()
    try:
        task = asyncio.create_task(ep.deliver(webhooks.event_of(names.COMMISSIONS, ENTRY)))
        await asyncio.sleep(0.3)
        d.stop()
        assert await asyncio.wait_for(task, 2) is False
    finally:
        await ep.close()
        await d.close()
    assert d.failed == [] and len(receiver["got"]) == 1
