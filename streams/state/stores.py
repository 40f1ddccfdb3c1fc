"""Picks the store for a Redis URL, so the single-server store and the cluster store need not know each other."""

from __future__ import annotations

from streams.state import redis_conn
from streams.state.credit_cluster import ClusterCreditStore
from streams.state.credit_store import CreditStore
from streams.state.redis_cluster import ClusterStore
from streams.state.referral_store import RedisStore


def open_store(
    url: str, attribution_window_ms: int, owner: str = "", epoch: str = "", click_window_ms: int = 60_000
) -> RedisStore:
    """The store for this URL: one server, or a Redis Cluster (streams/state/redis_cluster.py) for redis+cluster://."""
    if redis_conn.is_cluster(url):
        return ClusterStore(url, attribution_window_ms, owner, epoch, click_window_ms)
    return RedisStore(url, attribution_window_ms, owner, epoch, click_window_ms)


def open_credit_store(url: str, attribution_window_ms: int) -> CreditStore:
    """The staged topology's credit store for this URL: one server, or the cluster's journalled commit."""
    if redis_conn.is_cluster(url):
        return ClusterCreditStore(url, attribution_window_ms)
    return CreditStore(url, attribution_window_ms)
