"""The Redis store against a real redis-server: the lease and epoch guards, and their own concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from streams import names
from streams.engine.ledger import Balance, State
from streams.state.referral_store import LeaseLost, RedisStore, StateLost, acquire_lease


def _fresh(stack: Any) -> None:
    r = redis.Redis.from_url(stack.redis_url)
    r.flushdb()
    r.set(names.KEY_EPOCH, "e1")


def _one_balance_batch(who: str) -> State:
    s = State()
    s.balance_deltas[who] = Balance(pending=1, available=0, earned=1)
    return s


def test_own_renewals_and_commits_never_abort_each_other(stack: Any) -> None:
    """The lease timer and the apply loop share the lease key; a worker must not trip over itself."""
    _fresh(stack)
    acquire_lease(stack.redis_url, "w1", wait_s=1)

    async def run() -> None:
        store = RedisStore(stack.redis_url, 0, owner="w1", epoch="e1")
        try:
            jobs = []
            for _ in range(300):
                jobs.append(store.commit(_one_balance_batch("u1"), None))
                jobs.append(store.renew_lease())
            await asyncio.gather(*jobs)
        finally:
            await store.close()

    asyncio.run(run())
    assert redis.Redis.from_url(stack.redis_url).hget(names.KEY_BALANCE + "u1", "p") == b"300"


def test_a_commit_after_another_worker_took_the_lease_writes_nothing(stack: Any) -> None:
    _fresh(stack)
    acquire_lease(stack.redis_url, "w1", wait_s=1)
    redis.Redis.from_url(stack.redis_url).set(names.KEY_LEASE, "w2")

    async def run() -> None:
        store = RedisStore(stack.redis_url, 0, owner="w1", epoch="e1")
        try:
            with pytest.raises(LeaseLost):
                await store.commit(_one_balance_batch("u1"), None)
        finally:
            await store.close()

    asyncio.run(run())
    assert redis.Redis.from_url(stack.redis_url).hget(names.KEY_BALANCE + "u1", "p") is None


def test_a_flushed_redis_stops_loads_and_commits(stack: Any) -> None:
    _fresh(stack)

    async def run() -> None:
        from streams.state.referral_store import BatchRequest

        store = RedisStore(stack.redis_url, 0, owner="w1", epoch="e1")
        try:
            await store.load(BatchRequest(users={"u1"}), 0)
            redis.Redis.from_url(stack.redis_url).flushall()
            with pytest.raises(StateLost):
                await store.load(BatchRequest(users={"u1"}), 0)
            with pytest.raises(StateLost):
                await store.commit(_one_balance_batch("u1"), None)
        finally:
            await store.close()

    asyncio.run(run())
    assert redis.Redis.from_url(stack.redis_url).hget(names.KEY_BALANCE + "u1", "p") is None
