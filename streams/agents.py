"""Faust agents: each reads one input topic, decodes in one place, and hands events to the sequencer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers.aiokafka import server_list

from schemas.events import Invalid, decode, format_ts
from streams import names, runtime
from streams.app import app
from streams.ledger import INVALID_EVENT, seq_key
from streams.sequencer import DeadLetter, Held
from streams.topics import clicks_topic, orders_topic, signups_topic, tiers_topic

log = logging.getLogger(__name__)


def consumer_highwater(tp: Any) -> int | None:
    """The partition's end offset as of the consumer's latest fetch, None while it has not fetched it."""
    try:
        hw = app.consumer.highwater(tp)
    except Exception:
        return None
    return None if hw is None or hw < 0 else int(hw)


class EndOffsets:
    """The partitions' end offsets as the broker has them now: a ListOffsets request, not the last fetch.

    On a client and connection of its own: the broker answers a connection's requests in order, and the
    consumer's connection usually has a fetch waiting up to fetch_max_wait_ms (1.5 s in faust) for new
    records, so app.consumer.highwaters() can take that long; this takes one round trip.
    """

    def __init__(self) -> None:
        self._client: AIOKafkaConsumer | None = None
        self._starting = asyncio.Lock()
        self._closed = False

    async def __call__(self, tps: list[Any]) -> dict[Any, int]:
        if self._closed:
            raise RuntimeError("stopping: no more end-offset requests")
        client = self._client or await self._start()
        want = {TopicPartition(tp.topic, tp.partition): tp for tp in tps}
        got = await client.end_offsets(list(want))
        return {want[k]: int(v) for k, v in got.items() if k in want}

    async def _start(self) -> AIOKafkaConsumer:
        async with self._starting:
            if self._client is None:
                client = AIOKafkaConsumer(
                    bootstrap_servers=server_list(app.conf.broker, 9092),
                    client_id=f"{app.conf.broker_client_id}-end-offsets",
                    enable_auto_commit=False,
                )
                await client.start()
                self._client = client
            return self._client

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.stop()


end_offsets = EndOffsets()


@app.on_before_shutdown.connect  # type: ignore[arg-type]
async def _close_end_offsets(sender: Any, **kwargs: Any) -> None:
    await end_offsets.close()


def _lag(tp: Any, offset: int) -> int | None:
    """Records the broker holds beyond this one, when the consumer knows its highwater."""
    hw = consumer_highwater(tp)
    return None if hw is None else max(hw - offset - 1, 0)


async def _feed(stream: Any, topic: str) -> None:
    """Decode every record; refuse the unreadable at once, hold the rest for the sequencer; ack later."""
    rank = names.TOPIC_RANK[topic]
    seq = runtime.get().sequencer
    async for event in stream.noack().events():
        msg = event.message
        raw: bytes = msg.value if msg.value is not None else b""
        decoded = decode(topic, msg.value)
        lag = _lag(msg.tp, msg.offset)
        if isinstance(decoded, Invalid):
            dl = DeadLetter(
                topic,
                msg.tp.partition,
                msg.offset,
                msg.key,
                decoded.event_id,
                INVALID_EVENT,
                decoded.detail,
                raw,
                decoded.ts or format_ts(int(msg.timestamp * 1000)),
            )
            await seq.dead_letter_now(dl)
            seq.aligner.touch(msg.tp, lag, msg.offset)
            event.ack()
            continue
        held = Held(decoded, topic, msg.tp.partition, msg.offset, msg.key, raw, event.ack)
        seq.offer(msg.tp, rank, seq_key(rank, decoded), held, lag, msg.offset)


@app.agent(clicks_topic)
async def record_clicks(stream: Any) -> None:
    """Clicks on share links, for attribution."""
    await _feed(stream, names.CLICKS)


@app.agent(signups_topic)
async def register_signups(stream: Any) -> None:
    """New users and their binding to an inviter."""
    await _feed(stream, names.SIGNUPS)


@app.agent(orders_topic)
async def credit_orders(stream: Any) -> None:
    """Paid, refunded, completed and cancelled orders: the money."""
    await _feed(stream, names.ORDERS)


@app.agent(tiers_topic)
async def assign_tiers(stream: Any) -> None:
    """Tier changes that price later orders."""
    await _feed(stream, names.TIERS)


@app.task  # type: ignore[untyped-decorator]
async def apply_in_sequence() -> None:
    """The one loop that applies aligned events in order (see streams.sequencer)."""
    try:
        await runtime.get().sequencer.run()
    except Exception:
        if not app.should_stop:
            raise
        # Stopping mid-batch (e.g. the producer already stopped): nothing was committed or acked, so the
        # next start replays the batch; an ordinary stop must not look like a crash.
        log.info("stopped during a batch; it will be applied again on the next start")


@app.on_partitions_assigned.connect  # type: ignore[arg-type]
def _on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
    """Track every assigned input partition, so an empty one still holds later events back until idle."""
    seq = runtime.get().sequencer
    seq.aligner.highwater = consumer_highwater
    seq.use_broker(end_offsets)
    for tp in assigned:
        if tp.topic in names.TOPIC_RANK:
            seq.assign(tp, names.TOPIC_RANK[tp.topic])


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
def _on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
    """Drop held events of partitions that moved away; they were not acked, the new owner reads them."""
    seq = runtime.get().sequencer
    for tp in revoked:
        if tp.topic in names.TOPIC_RANK:
            seq.revoke(tp)
