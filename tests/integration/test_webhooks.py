"""Webhooks through a real broker to local HTTP receivers: once per id, a receiver down then up, a dead one.

Receivers run on 127.0.0.1 in this process (http.server threads), check every signature with
webhooks.verify and count what they get, so duplicates are measured, not assumed away.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams import names
from streams.engine import outcome
from streams.engine.config import WebhooksSection
from streams.ops import stack as stack_mod
from streams.sinks import webhooks
from streams.state import redis_conn
from tests.integration import scenario
from tests.integration.scenario import Env

SECRET = "whsec_integration_0123456789abcdef"
EXAMPLE = "basic"


class Receiver:
    """A webhook endpoint: mode ok (200), slow (200 after 40 ms), fail (500) or hang (no answer until released, 500)."""

    def __init__(self, mode: str = "ok", port: int = 0) -> None:
        self.mode, self.port = mode, port
        self.got: list[tuple[str, str, dict[str, Any]]] = []  # (event id header, attempt header, body)
        self.bad: list[str] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """Where the deliverer POSTs (a query string, which /status must not show)."""
        return f"http://127.0.0.1:{self.port}/hooks/fenxiao?token=not-for-status"

    def start(self) -> Receiver:
        """Listen on 127.0.0.1 (the port given, or a free one)."""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    webhooks.verify(SECRET, self.headers.get(webhooks.SIGNATURE_HEADER), body)
                except webhooks.SignatureError as e:
                    outer.bad.append(str(e))
                doc = json.loads(body)
                with outer.lock:
                    outer.got.append(
                        (self.headers[webhooks.EVENT_ID_HEADER], self.headers[webhooks.ATTEMPT_HEADER], doc)
                    )
                if outer.mode == "hang":
                    outer.release.wait(180)
                elif outer.mode == "slow":
                    time.sleep(0.04)
                status = 200 if outer.mode in ("ok", "slow") else 500
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening (hanging requests are released first)."""
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def ids(self) -> Counter[str]:
        """How often each event id arrived."""
        with self.lock:
            return Counter(i for i, _, _ in self.got)


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    """Receivers a test starts; all stopped at the end."""
    made: list[Receiver] = []
    yield made
    for r in made:
        r.stop()


async def reset_withdrawal_states(bootstrap: str, partitions: int = 4) -> None:
    """fenxiao.withdrawal-states empty, whether or not the worker of this branch creates it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if names.WITHDRAWAL_STATES in set(await admin.list_topics()):
            await admin.delete_topics([names.WITHDRAWAL_STATES])
            while names.WITHDRAWAL_STATES in set(await admin.list_topics()):
                await asyncio.sleep(0.2)
        for _ in range(50):
            resp = await admin.create_topics([NewTopic(names.WITHDRAWAL_STATES, partitions, 1)])
            if all(code == 0 for _, code, *_ in resp.topic_errors):
                return
            await asyncio.sleep(0.3)
        raise AssertionError(f"could not create {names.WITHDRAWAL_STATES}: {resp.topic_errors}")
    finally:
        await admin.close()


async def committed_equals_end(bootstrap: str, group: str, topics: tuple[str, ...]) -> bool:
    """Whether the group has committed every record of the topics."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in (c.partitions_for_topic(t) or ())]
        if not tps:
            await c._client.force_metadata_update()
            tps = [TopicPartition(t, p) for t in topics for p in (c.partitions_for_topic(t) or ())]
        ends = await c.end_offsets(tps)
        for tp in tps:
            if ends[tp] and (await c.committed(tp) or 0) < ends[tp]:
                return False
        return True
    finally:
        await c.stop()


def failed_rows(redis_url: str) -> list[dict[str, str]]:
    """Every entry of the failed stream."""
    r = redis_conn.connect(redis_url, decode_responses=True)
    try:
        return [f for _, f in r.xrange(names.KEY_WEBHOOK_FAILED)]
    finally:
        r.close()


def wait_until(what: str, check: Any, timeout: float, every: float = 0.5) -> None:
    """Poll check() until true; fail naming what did not happen."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def test_worker_example_reaches_a_receiver_once_per_id_while_a_dead_one_ends_in_the_failed_list(
    pipe: Env, receivers: list[Receiver]
) -> None:
    asyncio.run(reset_withdrawal_states(pipe.stack.bootstrap))
    good = Receiver("ok").start()
    dead = Receiver("hang").start()
    receivers += [good, dead]
    expected = scenario.load_expected(EXAMPLE)
    config = pipe.config(EXAMPLE)
    config.write_text(
        config.read_text() + f'\n[webhooks]\nurls = ["{good.url}", "{dead.url}"]\nsecret_env = "SHOP_HOOK_SECRET"\n'
        "timeout_ms = 3000\nmax_attempts = 3\nbackoff_initial_ms = 100\nbackoff_max_ms = 400\nconcurrency = 2\n"
    )
    pipe.produce(scenario.load_records(EXAMPLE))
    w = scenario.WorkerProcess(config, {**pipe.env, "SHOP_HOOK_SECRET": SECRET}, pipe.tmp / "worker.log").start()
    try:
        scenario.wait_http(pipe.web_port, "/health", 90, w)
        # Commissions flow and the good receiver gets everything while every POST to the other one hangs.
        out, diff = pipe.outcome(expected)
        assert not diff, "\n".join(diff) + "\n" + w.log_tail()
        want = {e["entry_id"] for e in out.entries}
        wait_until("every entry at the good receiver", lambda: set(good.ids()) >= want, 120)
        status = scenario.http_json(pipe.web_port, "/status")["webhooks"]
        by_url = {u["url"]: u for u in status["urls"]}
        dead_status = by_url[webhooks.redact(dead.url)]
        assert dead_status["failed"] < len(want), status  # the dead one is far behind, nobody waited for it
        assert status["lag"] is None or status["lag"] > 0, status
        assert "token" not in json.dumps(status)

        dead.release.set()  # now it answers 500 at once: what it holds gives up, the rest one attempt each
        wait_until(
            "the failed list to hold every entry of the dead receiver",
            lambda: {f["id"] for f in failed_rows(pipe.stack.redis_url)} >= want,
            180,
        )
        wait_until(
            "webhooks lag 0 in the worker's /status",
            lambda: scenario.http_json(pipe.web_port, "/status")["webhooks"]["lag"] == 0,
            60,
        )
        status = scenario.http_json(pipe.web_port, "/status")
        hooks = status["webhooks"]
        sink_hooks = status["sink"]["webhooks"]
    finally:
        w.stop()

    # What the output topic holds: the deliverer adds no duplicates of its own (one POST per record).
    records = asyncio.run(scenario.read_outputs(pipe.stack.bootstrap)).entries
    got = good.ids()
    duplicates = sum(got.values()) - len(got)
    print(f"webhooks: {len(got)} ids, {sum(got.values())} deliveries, {duplicates} duplicates (deduplicated by id)")
    assert set(got) == want
    assert sum(got.values()) == len(records), (len(records), duplicates)
    assert all(attempt == "1" for _, attempt, _ in good.got)
    assert good.bad == [] and dead.bad == []
    assert all(doc["type"] == "ledger.entry" and doc["created"] == doc["data"]["ts"] for _, _, doc in good.got)
    # The receiver's view, deduplicated by id, is the spec example's ledger: sums, balances and totals.
    seen = outcome.summarize([doc["data"] for _, _, doc in good.got], [], [])
    for section in ("entries", "balances", "totals"):
        assert seen[section] == expected[section], section

    rows = failed_rows(pipe.stack.redis_url)
    assert {r["url"] for r in rows} == {webhooks.redact(dead.url)}
    assert {r["reason"] for r in rows} <= {"HTTP 500", "timeout after 3000 ms"}
    assert all(json.loads(r["body"])["id"] == r["id"] for r in rows)
    assert hooks["failed_recorded"] == len(rows) >= len(want)
    states = {u["url"]: u["state"] for u in hooks["urls"]}
    assert states == {webhooks.redact(good.url): "up", webhooks.redact(dead.url): "down"}
    assert hooks["stale"] is False
    assert {u["url"]: u["delivered"] for u in sink_hooks["urls"]}[webhooks.redact(good.url)] == len(records)
    assert asyncio.run(
        committed_equals_end(pipe.stack.bootstrap, pipe.env["FENXIAO_APP_ID"] + ".webhooks", (names.COMMISSIONS,))
    )

    # The operator lists the failures, fixes the receiver and sends them again: once each, then the list is empty.
    cli_env = {**os.environ, **pipe.env, "SHOP_HOOK_SECRET": SECRET}
    listed = cli(["webhooks", "failed", "--limit", "100000"], cli_env)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == len(rows)
    dead.mode, before = "ok", len(dead.got)
    sent = cli(["webhooks", "redeliver", "--config", str(config), "--limit", "100000"], cli_env)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == f"redelivered {len(rows)}, still failing 0, skipped 0"
    assert Counter(i for i, _, _ in dead.got[before:]) == Counter(r["id"] for r in rows)
    assert dead.bad == [] and failed_rows(pipe.stack.redis_url) == []


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`fenxiao ...` in its own process."""
    cmd = [sys.executable, "-m", "streams.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_a_killed_worker_and_sink_resend_only_what_was_not_committed(pipe: Env, receivers: list[Receiver]) -> None:
    asyncio.run(reset_withdrawal_states(pipe.stack.bootstrap))
    slow = Receiver("slow").start()
    receivers.append(slow)
    config = pipe.config(EXAMPLE)
    config.write_text(config.read_text() + f'\n[webhooks]\nurls = ["{slow.url}"]\nconcurrency = 1\n')
    env = {**pipe.env, names.ENV_WEBHOOK_SECRET: SECRET}
    pipe.produce(scenario.load_records(EXAMPLE))
    w = scenario.WorkerProcess(config, env, pipe.tmp / "worker.log").start()
    try:
        wait_until("100 deliveries before the kill", lambda: len(slow.ids()) >= 100, 120, every=0.05)
    finally:
        w.kill()  # the worker's whole process group: its sink child and the deliverer in it die with it
    at_kill = sum(slow.ids().values())
    w2 = scenario.WorkerProcess(config, env, pipe.tmp / "worker2.log").start()
    try:
        scenario.wait_http(pipe.web_port, "/health", 90, w2)
        out, diff = pipe.outcome(scenario.load_expected(EXAMPLE))
        assert not diff, "\n".join(diff) + "\n" + w2.log_tail()
        want = {e["entry_id"] for e in out.entries}
        wait_until("every entry after the restart", lambda: set(slow.ids()) >= want, 180)
    finally:
        w2.stop()
    got = slow.ids()
    extra = sum(got.values()) - len(out.entries)  # beyond what the topic holds (its own duplicates included)
    print(f"webhooks across a SIGKILL: {at_kill} delivered before it, {extra} sent again after the restart")
    assert set(got) == want and slow.bad == []
    assert 0 <= extra < at_kill, "the committed prefix was sent again"


def entries(n: int) -> list[dict[str, Any]]:
    """n ledger entries as the worker writes them, straight onto fenxiao.commissions."""
    out = []
    for i in range(n):
        value = {
            "entry_id": f"o{i}:accrued:1",
            "source_event_id": f"pay-{i}",
            "ts": f"2026-11-11T00:{i // 60:02d}:{i % 60:02d}Z",
            "order_id": f"o{i}",
            "buyer_id": f"b{i}",
            "beneficiary_id": f"u{i % 7}",
            "level": 1,
            "kind": "accrued",
            "amount_cents": 100 + i,
            "campaign_id": None,
        }
        out.append({"topic": names.COMMISSIONS, "key": value["beneficiary_id"], "value": value})
    return out


def withdrawal_states(n: int) -> list[dict[str, Any]]:
    """n withdrawals requested then approved, onto fenxiao.withdrawal-states in the lead's shape."""
    out = []
    for k in range(n):
        for status in ("requested", "approved"):
            value = {
                "id": f"w{k}:{status}",
                "withdrawal_id": f"w{k}",
                "distributor_id": f"u{k}",
                "status": status,
                "amount_cents": 5000,
                "channel": "alipay",
                "fee_cents": None,
                "payout_cents": None,
                "ts": f"2026-11-12T08:00:{k:02d}Z",
                "event_id": f"wev-{k}-{status}",
            }
            out.append({"topic": names.WITHDRAWAL_STATES, "key": f"u{k}", "value": value})
    return out


async def run_for(d: webhooks.Deliverer, until: Any, timeout: float) -> None:
    """Run a deliverer until until() holds (then stop it), failing if it does not within timeout."""
    task = asyncio.create_task(d.run())
    deadline = time.monotonic() + timeout
    try:
        while not until():
            if task.done():
                task.result()
                raise AssertionError("the deliverer stopped by itself")
            if time.monotonic() > deadline:
                raise AssertionError(f"not done within {timeout} s: {d.status()}")
            await asyncio.sleep(0.2)
    finally:
        d.stop()
        await asyncio.wait_for(task, 30)


async def test_a_receiver_down_for_a_while_then_up_gets_everything_and_a_restart_resends_nothing_acked(
    pipe: Env, receivers: list[Receiver]
) -> None:
    bootstrap, redis_url = pipe.stack.bootstrap, pipe.stack.redis_url
    await reset_withdrawal_states(bootstrap)
    records = entries(60) + withdrawal_states(5)
    await scenario.produce(bootstrap, records)
    want = {r["value"]["entry_id"] if r["topic"] == names.COMMISSIONS else r["value"]["id"] for r in records}
    (port,) = stack_mod.pick_free_ports(1)
    late = Receiver("ok", port)
    receivers.append(late)
    rules = WebhooksSection(
        urls=[late.url], timeout_ms=1000, max_attempts=20, backoff_initial_ms=100, backoff_max_ms=800, concurrency=4
    )
    group = pipe.env["FENXIAO_APP_ID"] + ".webhooks"

    def make() -> webhooks.Deliverer:
        return webhooks.Deliverer(bootstrap, group, redis_url, rules, SECRET)

    # 1. Nothing listens on the port for 3 s: connection refused, retried with backoff; then it comes up.
    d1 = make()
    started = time.monotonic()

    def bring_up_then_all() -> bool:
        if late.server is None and time.monotonic() - started > 3:
            assert d1.status()["urls"][0]["attempts"] >= 4  # type: ignore[index]
            late.start()
        return set(late.ids()) >= want and d1.lag == 0

    await run_for(d1, bring_up_then_all, 90)
    await d1.close()
    assert set(late.ids()) == want
    assert failed_rows(redis_url) == []
    assert late.bad == []
    types = {doc["type"] for _, _, doc in late.got}
    assert types == {"ledger.entry", "withdrawal.requested", "withdrawal.approved"}
    assert await committed_equals_end(bootstrap, group, names.WEBHOOK_SOURCES)
    first_round = sum(late.ids().values())

    # 2. A restart: everything was acknowledged and committed, so nothing is sent again.
    d2 = make()
    t0 = time.monotonic()
    await run_for(d2, lambda: d2.lag == 0 and time.monotonic() - t0 > 3, 60)
    await d2.close()
    assert sum(late.ids().values()) == first_round

    # 3. New records while the receiver is down; the deliverer is stopped mid-retry, then started again with
    # the receiver back: the new records arrive, the old ones do not come again.
    late.stop()
    late.server = None
    more = entries(80)[60:]
    await scenario.produce(bootstrap, more)
    d3 = make()
    t0 = time.monotonic()
    await run_for(d3, lambda: time.monotonic() - t0 > 3, 30)
    await d3.close()
    assert not await committed_equals_end(bootstrap, group, (names.COMMISSIONS,))
    late.release.clear()
    late.start()
    d4 = make()
    new = {r["value"]["entry_id"] for r in more}
    await run_for(d4, lambda: set(late.ids()) >= want | new and d4.lag == 0, 90)
    await d4.close()
    counts = late.ids()
    assert set(counts) == want | new
    assert all(counts[i] == 1 for i in want), "an acknowledged record was sent again"
    print(f"webhooks after a restart: {sum(counts.values()) - len(counts)} duplicates of {len(new)} new ids")
    assert await committed_equals_end(bootstrap, group, names.WEBHOOK_SOURCES)
