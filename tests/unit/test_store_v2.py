"""Contract v2 state through the store: stage -> write -> load_all on a private redis-server, in common.md layout."""

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
import redis

from schemas.events import Invalid, decode, parse_ts_ms
from streams import names
from streams.engine.config import parse
from streams.engine.ledger import Ledger, Outcome, State
from streams.ops.stack import pick_free_ports
from streams.state.referral_store import CachedState, RedisStore, StagedCommands

TOML = """
[program]
levels = 1
freeze_seconds = 60
max_total_bps = 3000
[tiers.standard]
rates_bps = [1000]
[withdrawals]
min_cents = 100
fee_bps = 60
fee_min_cents = 10
"""


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server without persistence on a free port; failing to start fails the tests."""
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed (make deps)"
    (port,) = pick_free_ports(1)
    workdir: Path = tmp_path_factory.mktemp("redis")
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def ms(second: float) -> int:
    return parse_ts_ms("2026-11-11T00:00:00.000Z") + int(second * 1000)


def ev(topic: str, event_id: str, second: float, **fields: Any) -> tuple[Any, tuple[int, int, str]]:
    """A decoded event at 00:00:<second> and its sequence key."""
    whole, frac = divmod(int(second * 1000), 1000)
    value = {"event_id": event_id, "ts": f"2026-11-11T00:00:{whole:02d}.{frac:03d}Z", **fields}
    decoded = decode(topic, json.dumps(value).encode())
    assert not isinstance(decoded, Invalid), decoded
    return decoded, (decoded.ts_ms, names.TOPIC_RANK[topic], event_id)


S, D, A, W = names.SIGNUPS, names.DISTRIBUTORS, names.ADJUSTMENTS, names.WITHDRAWALS
FIRST = [
    ev(S, "s1", 0, user_id="u1"),
    ev(S, "s2", 1, user_id="b1", ref="u1"),
    ev(S, "s3", 2, user_id="u2", distributor=False),
    ev(S, "s4", 2.5, user_id="u3"),
    ev(A, "a1-e", 3, adjustment_id="a1", distributor_id="u1", amount_cents=5000, reason="launch bonus"),
    ev(A, "a2-e", 3.5, adjustment_id="a2", distributor_id="u2", amount_cents=300, reason="correction"),
    ev(D, "d1", 4, user_id="u2", status="active"),
    ev(D, "d2", 5, user_id="u3", status="frozen"),
    ev(W, "w1-r", 6, withdrawal_id="w1", distributor_id="u1", type="requested", amount_cents=1000),
    ev(W, "w1-a", 7, withdrawal_id="w1", distributor_id="u1", type="approved"),
    ev(W, "w1-p", 8, withdrawal_id="w1", distributor_id="u1", type="paid"),
]
SECOND = [
    ev(W, "w2-r", 9, withdrawal_id="w2", distributor_id="u1", type="requested", amount_cents=2000, channel="alipay"),
    ev(W, "w2-a", 10, withdrawal_id="w2", distributor_id="u1", type="approved"),
    ev(W, "w3-r", 11, withdrawal_id="w3", distributor_id="u2", type="requested", amount_cents=300),
    ev(W, "w3-x", 12, withdrawal_id="w3", distributor_id="u2", type="rejected"),
]


def apply_all(ledger: Ledger, events: list[tuple[Any, tuple[int, int, str]]]) -> list[Outcome]:
    return [ledger.step(e, k) for e, k in events]


async def write_batches(url: str, state: CachedState, ledger: Ledger) -> None:
    store = RedisStore(url, 0, owner="w1", epoch="e1")
    try:
        for batch in (FIRST, SECOND):
            for out in apply_all(ledger, batch):
                assert out.rejection is None, out.detail
            staged: StagedCommands = store.stage(state, batch[-1][1])
            assert not state.dirty_withdrawals and not state.dirty_adjustments, "stage resets the dirty sets"
            await store.write(staged)
    finally:
        await store.close()


async def load(url: str) -> CachedState:
    store = RedisStore(url, 0, owner="w1", epoch="e1")
    try:
        return await store.load_all()
    finally:
        await store.close()


def fresh(url: str) -> redis.Redis:
    r = redis.Redis.from_url(url, decode_responses=True)
    r.flushdb()
    r.set(names.KEY_EPOCH, "e1")
    return r


def test_v2_state_lands_in_the_common_layout_and_loads_back_equal(redis_url: str) -> None:
    r = fresh(redis_url)
    program = parse(TOML)
    mem = CachedState()
    asyncio.run(write_batches(redis_url, mem, Ledger(program, mem)))

    # The layout of common.md, values by hand: fee = max(10, (amount * 60 + 5000) // 10000).
    assert json.loads(r.hget(names.KEY_WITHDRAWAL + "w1", "s")) == {
        "withdrawal_id": "w1",
        "distributor_id": "u1",
        "amount_cents": 1000,
        "channel": None,
        "status": "paid",
        "requested_ts": ms(6),
        "updated_ts": ms(8),
        "fee_cents": 10,
        "payout_cents": 990,
    }
    assert json.loads(r.hget(names.KEY_WITHDRAWAL + "w2", "s")) == {
        "withdrawal_id": "w2",
        "distributor_id": "u1",
        "amount_cents": 2000,
        "channel": "alipay",
        "status": "approved",
        "requested_ts": ms(9),
        "updated_ts": ms(10),
        "fee_cents": 12,
        "payout_cents": 1988,
    }
    w3 = json.loads(r.hget(names.KEY_WITHDRAWAL + "w3", "s"))
    assert (w3["status"], w3["fee_cents"], w3["payout_cents"]) == ("rejected", None, None)
    assert r.zrange(names.KEY_WITHDRAWAL_QUEUE, 0, -1, withscores=True) == [("w2", float(ms(9)))]
    assert r.zrange(names.KEY_DISTRIBUTOR_WITHDRAWALS + "u1", 0, -1, withscores=True) == [
        ("w1", float(ms(6))),
        ("w2", float(ms(9))),
    ]
    assert r.zrange(names.KEY_DISTRIBUTOR_WITHDRAWALS + "u2", 0, -1) == ["w3"]
    assert r.hgetall(names.KEY_ADJUSTMENTS) == {"a1": "a1-e", "a2": "a2-e"}
    assert [r.hget(names.KEY_USER + u, "s") for u in ("u1", "u2", "u3")] == [None, "active", "frozen"]
    # u1: +5000, held 1000 and paid, held 2000 still reserved. u2: +300, held 300 and released.
    b1 = r.hgetall(names.KEY_BALANCE + "u1")
    assert {k: int(b1.get(k, 0)) for k in "parwl"} == {"p": 0, "a": 2000, "r": 2000, "w": 1000, "l": 0}
    b2 = r.hgetall(names.KEY_BALANCE + "u2")
    assert {k: int(b2.get(k, 0)) for k in "parwl"} == {"p": 0, "a": 300, "r": 0, "w": 0, "l": 0}

    loaded = asyncio.run(load(redis_url))
    assert loaded.users == mem.users
    assert loaded.withdrawals == mem.withdrawals
    assert loaded.withdrawals["w2"] is not None and loaded.withdrawals["w2"].fee_cents == 12
    assert loaded.adjustments == mem.adjustments
    assert loaded.balances == mem.balances


def test_the_reloaded_state_decides_what_follows_as_the_uninterrupted_one(redis_url: str) -> None:
    """After a restart: redeliveries change nothing, ids stay taken, a frozen user stays frozen, w2 pays its fee."""
    fresh(redis_url)
    program = parse(TOML)
    mem = CachedState()
    asyncio.run(write_batches(redis_url, mem, Ledger(program, mem)))
    loaded: State = asyncio.run(load(redis_url))
    ledger = Ledger(program, loaded)
    redelivered = apply_all(ledger, [FIRST[-1], SECOND[0], FIRST[4]])
    assert [o.duplicate for o in redelivered] == [True, True, True]
    assert all(not o.entries for o in redelivered)
    later = apply_all(
        ledger,
        [
            ev(A, "a2-again", 13, adjustment_id="a2", distributor_id="u2", amount_cents=300, reason="twice"),
            ev(W, "w4-r", 14, withdrawal_id="w4", distributor_id="u3", type="requested", amount_cents=100),
            ev(W, "w3-a", 15, withdrawal_id="w3", distributor_id="u2", type="approved"),
            ev(W, "w1-r2", 16, withdrawal_id="w1", distributor_id="u1", type="requested", amount_cents=100),
            ev(W, "w2-p", 17, withdrawal_id="w2", distributor_id="u1", type="paid"),
        ],
    )
    assert [o.rejection for o in later] == [
        "duplicate_adjustment",
        "distributor_frozen",
        "invalid_transition",
        "duplicate_withdrawal",
        None,
    ]
    paid = later[-1].entries
    assert [(e.kind, e.amount_cents, e.fee_cents, e.payout_cents) for e in paid] == [("withdrawn", -2000, 12, 1988)]
    u1 = loaded.balance("u1")
    assert (u1.available, u1.reserved, u1.withdrawn) == (2000, 0, 3000)
