"""The write API's once-per-key rule on a real Redis, through the producer seam: repeats, conflicts, crashes."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from streams import names
from streams.api import auth, commands
from streams.api import routes as api
from streams.ops.stack import pick_free_ports

PATH = "/api/distributors/u1/withdrawals"
BODY = {"amount_cents": 5000, "channel": "bank"}
ALICE = auth.Principal(auth.OPERATOR, "alice", 2**40)
U1 = auth.Principal(auth.DISTRIBUTOR, "u1", 2**40)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for this module (no persistence)."""
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed (make deps)"
    (port,) = pick_free_ports(1)
    d: Path = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(d)],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    r = redis_lib.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            r.ping()
            break
        except redis_lib.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


class Broker:
    """The producer seam: records what would be produced; can be told to fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []
        self.down = False

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        if self.down:
            raise ConnectionError("broker unreachable")
        self.sent.append((topic, key, json.loads(value)))


def run(redis_url: str, broker: Broker, who: auth.Principal, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """One POST of a withdrawal request through api.submit, on a fresh async client."""

    async def go() -> dict[str, Any]:
        r = redis_lib.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:

            async def build() -> commands.Command:
                return commands.withdrawal_request(key, "u1", body)

            return await api.submit(r, broker.send, who, "POST", PATH, key, body, build)
        finally:
            await r.aclose()

    return asyncio.run(go())


def status_of(fn: Any) -> int:
    try:
        fn()
    except api.ApiError as e:
        return e.status
    raise AssertionError("no ApiError")


def test_a_repeat_produces_nothing_and_another_body_is_409(redis_url: str) -> None:
    broker = Broker()
    first = run(redis_url, broker, U1, "k-repeat", BODY)
    assert first["replayed"] is False
    assert run(redis_url, broker, U1, "k-repeat", dict(reversed(BODY.items()))) == {**first, "replayed": True}
    assert status_of(lambda: run(redis_url, broker, U1, "k-repeat", {**BODY, "amount_cents": 1})) == 409
    assert [(t, k) for t, k, _ in broker.sent] == [(names.WITHDRAWALS, b"u1")]
    r = redis_lib.Redis.from_url(redis_url)
    ttl = r.ttl(names.KEY_IDEMPOTENCY + "k-repeat")
    assert 7 * 86_400 - 60 < ttl <= 7 * 86_400


def test_only_operator_writes_are_audited_with_their_subject(redis_url: str) -> None:
    r = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    before = r.xlen(names.KEY_AUDIT)
    broker = Broker()
    run(redis_url, broker, U1, "k-own", BODY)
    assert r.xlen(names.KEY_AUDIT) == before
    out = run(redis_url, broker, ALICE, "k-op", BODY)
    run(redis_url, broker, ALICE, "k-op", BODY)
    [(_, entry)] = r.xrevrange(names.KEY_AUDIT, count=1)
    assert r.xlen(names.KEY_AUDIT) == before + 1
    assert (entry["who"], entry["path"], entry["event_id"], entry["result_id"]) == (
        "alice",
        PATH,
        out["event_id"],
        "k-op",
    )
    assert json.loads(entry["body"]) == BODY


def test_an_outage_is_503_and_the_retry_produces_the_same_record(redis_url: str) -> None:
    broker = Broker()
    broker.down = True
    assert status_of(lambda: run(redis_url, broker, U1, "k-outage", BODY)) == 503
    assert broker.sent == []
    broker.down = False
    out = run(redis_url, broker, U1, "k-outage", BODY)
    assert len(broker.sent) == 1 and broker.sent[0][2]["event_id"] == out["event_id"]


def test_an_attempt_that_died_before_its_ack_is_redone_with_the_same_record(redis_url: str) -> None:
    # What a worker killed between SET NX and the broker's ack leaves behind: a pending record.
    cmd = commands.withdrawal_request("k-crash", "u1", BODY, now_ms=1_795_000_000_000)
    pending = {
        "h": commands.request_hash("POST", PATH, BODY),
        "id": cmd.id,
        "topic": cmd.topic,
        "key": cmd.key,
        "value": cmd.value,
        "st": "pending",
        "at": int(time.time() * 1000),
    }
    r = redis_lib.Redis.from_url(redis_url)
    r.set(names.KEY_IDEMPOTENCY + "k-crash", json.dumps(pending), ex=3600)
    broker = Broker()
    # Still young: maybe in flight on another worker, so not produced twice at once.
    assert status_of(lambda: run(redis_url, broker, U1, "k-crash", BODY)) == 409
    r.set(names.KEY_IDEMPOTENCY + "k-crash", json.dumps({**pending, "at": pending["at"] - 31_000}), ex=3600)
    out = run(redis_url, broker, U1, "k-crash", BODY)
    assert broker.sent == [(names.WITHDRAWALS, b"u1", cmd.value)], "the stored record, ts and all"
    assert out == {"id": "k-crash", "topic": names.WITHDRAWALS, "event_id": cmd.event_id, "replayed": False}
    run(redis_url, broker, U1, "k-crash", BODY)
    assert len(broker.sent) == 1


def test_concurrent_requests_with_one_key_produce_once(redis_url: str) -> None:
    broker = Broker()

    async def many() -> list[Any]:
        r = redis_lib.asyncio.Redis.from_url(redis_url, decode_responses=True)

        async def one() -> Any:
            async def build() -> commands.Command:
                return commands.withdrawal_request("k-race", "u1", BODY)

            try:
                return await api.submit(r, broker.send, U1, "POST", PATH, "k-race", BODY, build)
            except api.ApiError as e:
                return e.status

        try:
            return await asyncio.gather(*(one() for _ in range(20)))
        finally:
            await r.aclose()

    results = asyncio.run(many())
    assert len(broker.sent) == 1
    assert all(x == 409 or x["id"] == "k-race" for x in results)
