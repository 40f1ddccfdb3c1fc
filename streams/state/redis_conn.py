"""Which Redis client a URL asks for: one server (redis://) or a Redis Cluster (redis+cluster://).

Every part of fenxiao opens Redis through here, so the cluster choice is made once, by the URL in
FENXIAO_REDIS_URL, and the cluster-only steps (flushing every primary) live in one place.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster(url: str) -> bool:
    """Whether the URL names a Redis Cluster (scheme redis+cluster:// or rediss+cluster://)."""
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def plain_url(url: str) -> str:
    """The URL redis-py understands: a cluster URL's scheme without "+cluster" (any one node is a seed)."""
    scheme, sep, rest = url.partition("://")
    return f"{CLUSTER_SCHEMES.get(scheme, scheme)}{sep}{rest}"


def connect(url: str, **kwargs: Any) -> Any:
    """A blocking client: redis.Redis, or RedisCluster for a cluster URL (same command methods)."""
    if is_cluster(url):
        kwargs.pop("db", None)
        return RedisCluster.from_url(plain_url(url), **kwargs)
    return redis.Redis.from_url(url, **kwargs)


_SHARED: dict[str, Any] = {}
_SHARED_LOCK = threading.Lock()


def shared(url: str) -> Any:
    """One blocking client per URL for a process's small repeated reads (each new client reads package metadata).

    redis-py's clients are thread-safe (a connection pool), so the API threads and the status reads share it.
    """
    with _SHARED_LOCK:
        client = _SHARED.get(url)
        if client is None:
            client = _SHARED[url] = connect(url, decode_responses=True, socket_timeout=2, socket_connect_timeout=2)
        return client


def connect_async(url: str, **kwargs: Any) -> Any:
    """An asyncio client: redis.asyncio.Redis, or its RedisCluster for a cluster URL."""
    if is_cluster(url):
        return AsyncRedisCluster.from_url(plain_url(url), **kwargs)
    return aioredis.Redis.from_url(url, **kwargs)


def flush(url: str) -> None:
    """Empty the database (on a cluster: every primary), for tests, the benchmark and the demo's fresh start."""
    r = connect(url)
    try:
        if is_cluster(url):
            r.flushdb(target_nodes=RedisCluster.PRIMARIES)
        else:
            r.flushdb()
    finally:
        r.close()


async def flush_async(url: str) -> None:
    """flush() for callers already inside an event loop."""
    r = connect_async(url)
    try:
        if is_cluster(url):
            await r.flushdb(target_nodes=AsyncRedisCluster.PRIMARIES)
        else:
            await r.flushdb()
    finally:
        await r.aclose()
