"""Which Redis client a URL asks for: one server (redis://) or a Redis Cluster (redis+cluster://).

Every part of fenxiao opens Redis through here, so the cluster choice is made once, by the URL in
FENXIAO_REDIS_URL, and the cluster-only steps (flushing every primary) live in one place.
"""

from __future__ import annotations

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
