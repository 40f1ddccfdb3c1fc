"""The staged topology's credit stage: order steps become ledger entries, on every worker at once.

Each `fenxiao worker` with FENXIAO_TOPOLOGY=staged runs this stage as its child process (`fenxiao credit`). The
children form one consumer group over fenxiao.order-steps, keyed by order_id, so an order's steps are applied
by one worker in sequence order, and the group shares the partitions. A batch: load the batch's orders and
due settlements from Redis, apply each step (streams.engine.ledger.Ledger.apply_order with the terms the
attribution stage locked) and each watermark (settle what is due by it), produce the entries and dead
letters (acked), then commit the state and move the partitions' positions in one script (credit_store).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from schemas.events import Order, decode, format_ts
from streams import names
from streams.engine.config import Program
from streams.engine.ledger import Binding, Entry, Ledger, SettleIndex, State
from streams.pipeline.consume import GROUP_CONSUMER, DeadLetter
from streams.pipeline.outputs import KafkaOutputs, OutputRecord, java_partition
from streams.pipeline.sequencer import output_records
from streams.pipeline.steps import StepValue, decode_steps, terms_of
from streams.settings import Settings
from streams.state.credit_store import PositionMoved
from streams.state.referral_store import StateLost
from streams.state.stores import open_credit_store

log = logging.getLogger(__name__)

POLL_MS = 100
# Records per poll: each holds one partition's share of an attribution batch (at most steps.PACK_STEPS steps), so
# with order-steps' 12 partitions a batch stays near 5,000 steps, as 10 records did on 4.
MAX_RECORDS = 30
STATUS_TTL_MS = 5_000
STATUS_EVERY_S = 1.0
WAIT_FOR_STATE_S = 0.5
RESPAWN_PAUSE_S = 1.0
STOP_WAIT_S = 15.0


@dataclass
class CreditStats:
    """Counters for the worker's /status."""

    steps: int = 0
    batches: int = 0
    entries: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    replays_dropped: int = 0
    last_batch_ms: float = 0.0
    positions: dict[int, int] = field(default_factory=dict)


Step = tuple[StepValue, Order | None]  # a watermark has no order


def apply_batch(
    program: Program,
    state: State,
    batch: dict[int, list[Step]],
    partitions: int,
    stats: CreditStats | None = None,
) -> list[OutputRecord]:
    """Apply each partition's steps and watermarks in offset order to state; the output records, pure.

    The due settlements state holds are split by partition, so a watermark of one partition settles only
    that partition's orders (another partition's steps up to that moment may not have been applied yet).
    """
    due = state.settle_index
    by_part: dict[int, SettleIndex] = {p: SettleIndex() for p in batch}
    for oid, at in due.items():
        p = java_partition(oid.encode(), partitions)
        if p in by_part:
            by_part[p][oid] = at
    entries: list[Entry] = []
    dead: list[DeadLetter] = []
    ledger = Ledger(program, state)
    for p, recs in batch.items():
        state.settle_index = by_part[p]
        for v, ev in recs:
            if ev is None:
                entries.extend(ledger.settle_due(v.w if v.w is not None else -1))
                continue
            res = ledger.apply_order(ev, terms_of(v))
            if stats is not None:
                stats.steps += 1
                stats.duplicates += res.duplicate
            entries.extend(res.entries)
            if res.rejection:
                dead.append(
                    DeadLetter(v.t, v.p, v.o, v.k, ev.event_id, res.rejection, res.detail, v.r, format_ts(ev.ts_ms))
                )
    state.settle_index = due
    bindings: list[Binding] = []
    if stats is not None:
        stats.entries += len(entries)
        stats.dead_letters += len(dead)
    return output_records(entries, bindings, dead)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seeks each newly assigned partition to its position in Redis (the commit point), not Kafka's."""

    def __init__(self, stage: CreditStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """A batch in flight finishes before the next poll; nothing to hand over (positions are in Redis)."""

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.stage.seek(list(assigned))


class CreditStage:
    """One credit worker: its share of fenxiao.order-steps, applied batch by batch."""

    def __init__(self, settings: Settings, program: Program, owner: str) -> None:
        self.settings = settings
        self.program = program
        self.owner = owner
        self.store = open_credit_store(settings.redis_url.get_secret_value(), program.attribution_window_ms)
        self.outputs = KafkaOutputs(settings.kafka, f"{settings.app_id}-credit-outputs", settings.compression_type)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka,
            group_id=settings.app_id + names.CREDIT_GROUP_SUFFIX,
            client_id=f"{settings.app_id}-credit",
            **GROUP_CONSUMER,
            fetch_max_wait_ms=50,
        )
        self.stats = CreditStats()
        self.partitions = 0
        self.stopping = asyncio.Event()
        self._last_status = 0.0

    async def _epoch(self) -> None:
        """Wait until the attribution stage has made the state complete; take its epoch."""
        while not self.stopping.is_set():
            epoch = await self.store.current_epoch()
            if epoch is not None:
                self.store.epoch = epoch
                return
            await asyncio.sleep(WAIT_FOR_STATE_S)

    async def seek(self, tps: list[TopicPartition]) -> None:
        """Start each partition at its Redis position, waiting for the attribution stage to set it up."""
        todo = list(tps)
        while todo and not self.stopping.is_set():
            got = await self.store.positions(tp.partition for tp in todo)
            for tp in list(todo):
                pos = got[tp.partition]
                if pos is not None:
                    self.consumer.seek(tp, pos)
                    self.stats.positions[tp.partition] = pos
                    todo.remove(tp)
            if todo:
                await asyncio.sleep(WAIT_FOR_STATE_S)
        # After the positions, before any load: a batch whose positions moved may not have reached every node yet.
        await self.store.redo_journal()
        mine = {tp.partition for tp in self.consumer.assignment()}
        self.stats.positions = {p: o for p, o in self.stats.positions.items() if p in mine}

    async def run(self) -> None:
        """Apply batches until stopped."""
        await self._epoch()
        await self.outputs.start()
        await self.consumer.start()
        self.consumer.subscribe([names.ORDER_STEPS], listener=_Listener(self))
        beat = Heartbeat(self.settings.redis_url.get_secret_value(), self.owner).start()
        try:
            while not self.stopping.is_set():
                got = await self.consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS)
                if got:
                    await self._batch(got)
                await self._publish_status()
        finally:
            beat.stop()
            await self.consumer.stop()
            await self.outputs.stop()
            await self.store.redis.delete(names.KEY_CREDIT_STATUS + self.owner)
            await self.store.redis.zrem(names.KEY_CREDIT_ALIVE, self.owner)
            await self.store.close()

    async def _batch(self, got: dict[TopicPartition, list[Any]]) -> None:
        t0 = time.perf_counter()
        if not self.partitions:
            self.partitions = len(self.consumer.partitions_for_topic(names.ORDER_STEPS) or ()) or 1
        batch: dict[int, list[Step]] = {}
        moves: dict[int, tuple[int, int]] = {}
        orders: set[str] = set()
        events: list[str] = []
        until = -1
        for tp, msgs in got.items():
            if not msgs:
                continue
            start = self.stats.positions.get(tp.partition)
            if start is None:
                continue
            recs: list[Step] = []
            for m in msgs:
                if m.offset < start:
                    continue
                for v in decode_steps(m.value):
                    if v.w is not None:
                        until = max(until, v.w)
                        recs.append((v, None))
                        continue
                    ev = decode(v.t, v.r)
                    if not isinstance(ev, Order):  # the first stage decoded it as an order: a bug, not bad input
                        raise ValueError(f"order-steps {tp.partition}@{m.offset} ({v.t}:{v.p}@{v.o}) is not an order")
                    orders.add(ev.order_id)
                    events.append(ev.event_id)
                    recs.append((v, ev))
            if not recs:
                continue
            batch[tp.partition] = recs
            moves[tp.partition] = (start, msgs[-1].offset + 1)
        if not batch:
            return
        try:
            state = await self.store.load_orders(orders, events, until)
            records = apply_batch(self.program, state, batch, self.partitions, self.stats)
            await self.outputs.send_records(records)
            await self.store.commit_credit(state, moves)
        except PositionMoved as e:
            self.stats.replays_dropped += 1
            log.info("%s: re-reading positions", e)
            await self.seek(list(self.consumer.assignment()))
            return
        except StateLost as e:
            log.warning("%s: waiting for the rebuilt state", e)
            self.store.epoch = ""
            await self._epoch()
            await self.seek(list(self.consumer.assignment()))
            return
        for p, (_, nxt) in moves.items():
            self.stats.positions[p] = nxt
        self.consumer_commit({TopicPartition(names.ORDER_STEPS, p): nxt for p, (_, nxt) in moves.items()})
        self.stats.batches += 1
        self.stats.last_batch_ms = (time.perf_counter() - t0) * 1000

    def consumer_commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Kafka's committed offsets follow Redis's positions, for lag tools only (Redis is the commit point)."""
        mine = self.consumer.assignment()
        todo = {tp: o for tp, o in offsets.items() if tp in mine}
        if todo:
            task = asyncio.ensure_future(self.consumer.commit(todo))
            task.add_done_callback(lambda t: t.exception())

    def status(self) -> dict[str, object]:
        """The credit stage's part of /status: the order-steps partitions this worker owns and its counters."""
        owned = sorted(tp.partition for tp in self.consumer.assignment())
        return {
            "owned": [f"{names.ORDER_STEPS}:{p}" for p in owned],
            "positions": {str(p): self.stats.positions.get(p) for p in owned},
            "steps": self.stats.steps,
            "batches": self.stats.batches,
            "entries": self.stats.entries,
            "dead_letters": self.stats.dead_letters,
            "duplicates": self.stats.duplicates,
            "replays_dropped": self.stats.replays_dropped,
            "last_batch_ms": round(self.stats.last_batch_ms, 2),
            "pid": os.getpid(),
        }

    async def _publish_status(self) -> None:
        now = time.monotonic()
        if now - self._last_status < STATUS_EVERY_S:
            return
        self._last_status = now
        await self.store.redis.set(names.KEY_CREDIT_STATUS + self.owner, json.dumps(self.status()), px=STATUS_TTL_MS)


class Heartbeat:
    """The credit stage's entry in fx:cr:alive, renewed by a thread: a long batch under a CPU quota is not death.

    Renewed between batches, a batch that outlasted STATUS_TTL_MS let the entry lapse; the lease holder then took
    its credit share back and gave it up again a second later, two rebalances each time (seen with larger polls
    under a quarter core). The thread gets the GIL within sys.getswitchinterval() of a batch.
    """

    def __init__(self, redis_url: str, owner: str) -> None:
        self.redis_url, self.owner = redis_url, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="credit-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        """Renew the entry every STATUS_EVERY_S until stop()."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing and wait for the thread (the stage then removes the entry)."""
        self._stop.set()
        self._thread.join(STOP_WAIT_S)

    def _run(self) -> None:
        from streams.state import redis_conn

        r = redis_conn.connect(self.redis_url, socket_timeout=2)
        try:
            while True:
                with contextlib.suppress(Exception):  # Redis away: the entry lapses, as it would for a dead stage
                    r.zadd(names.KEY_CREDIT_ALIVE, {self.owner: int(time.time() * 1000) + STATUS_TTL_MS})
                if self._stop.wait(STATUS_EVERY_S):
                    return
        finally:
            r.close()


def run(settings: Settings, program: Program, loglevel: str = "info") -> int:
    """`fenxiao credit`: the credit stage in the foreground until SIGTERM/SIGINT or its worker is gone."""
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s credit %(message)s")
    owner = os.environ.get(names.ENV_CREDIT_OWNER) or f"{settings.app_id}-credit:{os.getpid()}"
    parent = os.getppid() if os.environ.get(names.ENV_CREDIT_OWNER) else None

    async def main() -> int:
        stage = CreditStage(settings, program, owner)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stage.stopping.set)

        async def watch_parent() -> None:
            while parent is not None and not stage.stopping.is_set():
                if os.getppid() != parent:
                    log.warning("the worker that spawned this credit stage (pid %d) is gone; stopping", parent)
                    stage.stopping.set()
                await asyncio.sleep(0.5)

        watcher = asyncio.create_task(watch_parent())
        try:
            await stage.run()
        finally:
            watcher.cancel()
        return 0

    import uvloop

    return uvloop.run(main())


class CreditChild:
    """`fenxiao credit` as the worker's child: started before the worker waits for the lease, restarted if it dies.

    The lease holder also runs the attribution stage, the one serial part: while other workers' credit stages
    are alive it leaves the credit group to them (`wanted` false), and takes its share back when it is alone.
    """

    def __init__(self, owner: str, loglevel: str, config_path: str, redis_url: str) -> None:
        self.owner = owner
        self.loglevel = loglevel
        self.redis_url = redis_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.wanted = True
        self.balancing = False
        self._stopping = threading.Event()
        self._env = {**os.environ, names.ENV_CREDIT_OWNER: owner}
        self._config = config_path
        self._thread = threading.Thread(target=self._watch, name="credit-child", daemon=True)

    def start(self) -> CreditChild:
        """Spawn the child and the thread that restarts it."""
        self._spawn()
        self._thread.start()
        return self

    def _spawn(self) -> None:
        cmd = [sys.executable, "-m", "streams.cli", "credit", "--config", self._config, "--loglevel", self.loglevel]
        self.proc = subprocess.Popen(cmd, env=self._env)

    def _watch(self) -> None:
        from streams.state import redis_conn

        # One client for the thread's life: redis-py reads package metadata for every new connection.
        r = redis_conn.connect(self.redis_url, decode_responses=True, socket_timeout=2)
        try:
            self._watch_with(r)
        finally:
            r.close()

    def _watch_with(self, r: Any) -> None:
        while not self._stopping.wait(1.0):
            if self.balancing:
                others = others_alive(r, self.owner)
                if others >= 0:
                    self.wanted = others == 0
            proc = self.proc
            running = proc is not None and proc.poll() is None
            if self.wanted and not running:
                if proc is not None and proc.returncode not in (0, None):
                    print(f"fenxiao: the credit stage exited with {proc.returncode}; starting it again", flush=True)
                if self._stopping.wait(RESPAWN_PAUSE_S):
                    return
                self._spawn()
            elif not self.wanted and running:
                print("fenxiao: other workers credit the orders; this lease holder leaves them its share", flush=True)
                self._terminate()

    def _terminate(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def stop(self) -> None:
        """SIGTERM the child and wait for it; SIGKILL if it does not stop in time."""
        self._stopping.set()
        self._terminate()


def others_alive(r: Any, owner: str) -> int:
    """How many other workers' credit stages published a status within its TTL (-1: Redis did not answer).

    One sorted set of owner -> expiry ms, not a SCAN for status keys: a SCAN walks the whole keyspace (every
    user's keys) once a second, and it was a tenth of the lease holder's CPU.
    """
    try:
        now_ms = int(time.time() * 1000)
        pipe = r.pipeline(transaction=False)
        pipe.zremrangebyscore(names.KEY_CREDIT_ALIVE, "-inf", now_ms)
        pipe.zrangebyscore(names.KEY_CREDIT_ALIVE, now_ms, "+inf")
        alive = pipe.execute()[1]
        return sum(1 for k in alive if k != owner)
    except Exception:
        return -1


def read_status(redis_url: str, owner: str) -> dict[str, object] | None:
    """A worker's credit stage status as its child last published it (None: not running or not staged)."""
    from streams.state import redis_conn

    try:
        raw = redis_conn.shared(redis_url).get(names.KEY_CREDIT_STATUS + owner)
    except Exception:
        return None
    if raw is None:
        return None
    got: dict[str, object] = json.loads(str(raw))
    return got


def claim_topology(redis_url: str, bootstrap: str, topology: str) -> str | None:
    """Record which topology builds this Redis's state (refused if another did); staged: set up the positions.

    A state built by one topology lacks what the other keeps (the attribution stage's order marks, the
    credit stage's positions), so switching needs a rebuild. A new staged state starts the credit stage at
    the end of fenxiao.order-steps: steps already there were forwarded for an earlier state.
    """
    from streams.state import redis_conn

    r = redis_conn.connect(redis_url, decode_responses=True, socket_timeout=10)
    try:
        r.set(names.KEY_TOPOLOGY, topology, nx=True)
        found = r.get(names.KEY_TOPOLOGY)
        if found != topology:
            return (
                f"this Redis's state was built with {names.ENV_TOPOLOGY}={found}; start the workers with "
                f"{names.ENV_TOPOLOGY}={found}, or rebuild the state in {topology} (stop every worker, FLUSHALL "
                "Redis, start them: the input topics are replayed)"
            )
        if topology != "staged":
            return None
        if not redis_conn.is_cluster(redis_url) and r.exists(names.KEY_CREDIT_POS_BEFORE):
            r.renamenx(names.KEY_CREDIT_POS_BEFORE, names.KEY_CREDIT_POS)  # a state staged before the {m} name
        ends = asyncio.run(_step_ends(bootstrap))
        with r.pipeline(transaction=False) as p:  # each HSETNX alone is atomic, and a cluster has no MULTI here
            for part, end in ends.items():
                p.hsetnx(names.KEY_CREDIT_POS, str(part), str(end))
            p.execute()
        return None
    finally:
        r.close()


async def _step_ends(bootstrap: str) -> dict[int, int]:
    """fenxiao.order-steps' end offset per partition, now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(names.ORDER_STEPS) or set()
        if not parts:
            await consumer._client._wait_on_metadata(names.ORDER_STEPS)
            parts = consumer.partitions_for_topic(names.ORDER_STEPS) or set()
        tps = [TopicPartition(names.ORDER_STEPS, p) for p in sorted(parts)]
        got = await consumer.end_offsets(tps)
        return {tp.partition: int(o) for tp, o in got.items()}
    finally:
        await consumer.stop()
