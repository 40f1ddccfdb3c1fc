"""Rebuilding Redis from Kafka: the input topics are the system of record, Redis is derived state.

Redis carries an epoch key, written only once the state in it is complete with respect to the consumer
group's committed offsets. A worker that starts and finds no epoch (a new deployment, FLUSHALL, a restart
without persistence) rewinds the group's input offsets to the beginning before consuming, so every event
is applied again to empty state; the outputs of the replay have the same ids as the first time.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from streams import names
from streams.state import redis_conn

log = logging.getLogger(__name__)


async def rewind_inputs(bootstrap: str, group: str) -> dict[str, int]:
    """Commit each input partition's earliest offset for `group` (no member may be consuming); returns counts."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        md = await c._client.fetch_all_metadata()
        tps = [TopicPartition(t, p) for t in names.INPUT_TOPICS for p in sorted(md.partitions_for_topic(t) or ())]
        c.assign(tps)
        earliest = await c.beginning_offsets(tps)
        await c.commit({tp: OffsetAndMetadata(off, "") for tp, off in earliest.items()})
        return {t: sum(1 for tp in tps if tp.topic == t) for t in names.INPUT_TOPICS}
    finally:
        await c.stop()


def ensure_state(redis_url: str, bootstrap: str, group: str, owner: str = "") -> tuple[str, bool]:
    """The state epoch; if Redis has none, rewind the inputs first and then create it. Returns (epoch, rebuilt)."""
    if redis_conn.is_cluster(redis_url):
        return _ensure_cluster_state(redis_url, bootstrap, group, owner)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        epoch = r.get(names.KEY_EPOCH)
        if epoch:
            return str(epoch), False
        log.warning("Redis holds no state: rewinding %s's input offsets to rebuild it from the topics", group)
        asyncio.run(rewind_inputs(bootstrap, group))
        new = uuid.uuid4().hex
        if not r.set(names.KEY_EPOCH, new, nx=True):
            return str(r.get(names.KEY_EPOCH)), True
        return new, True
    finally:
        r.close()


def _ensure_cluster_state(redis_url: str, bootstrap: str, group: str, owner: str) -> tuple[str, bool]:
    """ensure_state on a cluster: a node that lost its slots (markers gone) means the whole state is rebuilt.

    The surviving nodes' keys would disagree with the replay, so every primary is emptied first; the
    lease (emptied with it) is put back for `owner` at once.
    """
    from streams.state.redis_cluster import fence_slots, slots_lost
    from streams.state.referral_store import LEASE_TTL_MS

    r = redis_conn.connect(redis_url, decode_responses=True)
    try:
        epoch = r.get(names.KEY_EPOCH)
        lost = slots_lost(r, str(epoch)) if epoch else []
        if epoch and not lost:
            return str(epoch), False
        if epoch:
            log.warning("%d of the cluster's hash slots lost their state: rebuilding all of it", len(lost))
        log.warning("Redis holds no state: rewinding %s's input offsets to rebuild it from the topics", group)
        redis_conn.flush(redis_url)
        if owner:
            r.set(names.KEY_LEASE, owner, px=LEASE_TTL_MS)
        asyncio.run(rewind_inputs(bootstrap, group))
        new = uuid.uuid4().hex
        fence_slots(r, new)
        r.set(names.KEY_EPOCH, new)
        return new, True
    finally:
        r.close()
