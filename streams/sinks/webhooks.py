"""Webhooks: every ledger entry and withdrawal state change POSTed, signed, to each [webhooks] URL, at least once.

The deliverer runs in the `fenxiao sink` process with its own consumer group `<app id>.webhooks` over
fenxiao.commissions and fenxiao.withdrawal-states, so a receiver that is down never delays the worker's
commit. Each URL has its own bounded queue and senders; a partition's offset is committed only up to the
first record some URL has not finished (a 2xx, or given up after max_attempts and recorded in
names.KEY_WEBHOOK_FAILED), so a restart re-delivers at most what was not acknowledged. Bodies carry a
stable id: a receiver dedupes by it. The signature is Stripe's scheme (docs/webhooks.md):
`Fenxiao-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

from streams import names
from streams.engine.config import WebhooksSection
from streams.pipeline.consume import unread
from streams.state import redis_conn

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Fenxiao-Signature"
EVENT_ID_HEADER = "Fenxiao-Event-Id"
ATTEMPT_HEADER = "Fenxiao-Delivery-Attempt"
LEDGER_TYPE = "ledger.entry"
WITHDRAWAL_TYPE_PREFIX = "withdrawal."
DEFAULT_TOLERANCE_S = 300  # Stripe's default: a signature older (or newer) than five minutes is refused
MIN_SECRET_CHARS = 16
FAILED_MAXLEN = 100_000  # the failed stream keeps about this many deliveries (oldest trimmed first)
STATUS_EVERY_S = 1.0
STALE_AFTER_MS = 15_000  # the worker's /status marks a deliverer status older than this as stale
TAKE_MAX = 500
REDIS_RETRY_S = 1.0
USER_AGENT = "fenxiao-webhooks/1"


class WebhookError(Exception):
    """A webhook set-up the deliverer cannot run with; the message names the key or variable to fix."""


class SignatureError(ValueError):
    """A Fenxiao-Signature header that does not prove the body came from the holder of the secret, and why."""


# ---------------------------------------------------------------- signing and verifying


def sign(secret: str, t: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of "<t>.<body>" under the secret: the v1 value of the header."""
    return hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, t: int, previous: str | None = None) -> str:
    """The Fenxiao-Signature value for a body sent at unix time t; during a rotation, a v1 per secret."""
    v1 = "".join(f",v1={sign(s, t, body)}" for s in (secret, previous) if s is not None)
    return f"t={t}{v1}"


def parse_header(header: str) -> tuple[int, list[str]]:
    """The timestamp and every v1 signature of a header (unknown schemes are ignored, as Stripe's clients do)."""
    t: int | None = None
    v1: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {SIGNATURE_HEADER} element {part.strip()!r}: expected key=value")
        if key == "t":
            if t is not None:
                raise SignatureError(f"{SIGNATURE_HEADER} has more than one t=")
            if not value.isdigit() or len(value) > 12:
                raise SignatureError(f"{SIGNATURE_HEADER} t={value!r} is not a unix timestamp")
            t = int(value)
        elif key == "v1":
            v1.append(value)
    if t is None:
        raise SignatureError(f"{SIGNATURE_HEADER} has no t= timestamp")
    if not v1:
        raise SignatureError(f"{SIGNATURE_HEADER} has no v1= signature")
    return t, v1


def verify(
    secret: str, header: str | None, body: bytes, tolerance_s: int = DEFAULT_TOLERANCE_S, now: float | None = None
) -> int:
    """For receivers: the header's timestamp when a v1 signature matches the raw body within the tolerance.

    Raises SignatureError otherwise. Pass the body exactly as received (before any JSON parsing);
    tolerance_s <= 0 skips the age check (replay protection is then the receiver's dedupe by id).
    """
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    t, candidates = parse_header(header)
    if tolerance_s > 0:
        age = (time.time() if now is None else now) - t
        if abs(age) > tolerance_s:
            raise SignatureError(f"timestamp t={t} is {int(age)} s from now, outside the tolerance of {tolerance_s} s")
    expected = sign(secret, t, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("no v1 signature matches the body (wrong secret, or the body was changed)")
    return t


# ---------------------------------------------------------------- what is sent


@dataclass(frozen=True, slots=True)
class Event:
    """One webhook event: its stable id, its type and the JSON body every URL receives."""

    id: str
    type: str
    body: bytes


def event_of(topic: str, record: Mapping[str, Any]) -> Event:
    """The event of a fenxiao.commissions or fenxiao.withdrawal-states record; ValueError when it lacks its id."""
    if topic == names.COMMISSIONS:
        eid, kind = record.get("entry_id"), LEDGER_TYPE
    elif topic == names.WITHDRAWAL_STATES:
        eid, status = record.get("id"), record.get("status")
        if not isinstance(status, str) or not status:
            raise ValueError("a withdrawal state without a status")
        kind = WITHDRAWAL_TYPE_PREFIX + status
    else:
        raise ValueError(f"{topic} is not a webhook source")
    if not isinstance(eid, str) or not eid:
        raise ValueError(f"a {topic} record without its id")
    doc = {"id": eid, "type": kind, "created": record.get("ts"), "data": dict(record)}
    return Event(eid, kind, json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode())


def backoff_ms(attempt: int, rules: WebhooksSection, u: float) -> int:
    """The wait after failed attempt n (1-based): initial * 2^(n-1), capped, minus up to jitter_percent of it.

    u in [0, 1) is the random draw (0 = the full exponential step), so many URLs failing together spread out.
    """
    step = min(rules.backoff_max_ms, rules.backoff_initial_ms * 2 ** min(attempt - 1, 40))
    return int(step - int(step * rules.jitter_percent * u) // 100)


def redact(url: str) -> str:
    """A URL fit for /status and logs: scheme, host, port and path; a query or user info may hold a token."""
    p = urlsplit(url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{p.port}" if p.port else ""
    return f"{p.scheme}://{host}{port}{p.path}"


def _secret(key: str, variable: str, environ: Mapping[str, str]) -> str:
    value = environ.get(variable, "")
    if not value:
        raise WebhookError(f"webhooks.{key}: {variable} is not set (the secret that signs webhooks)")
    if len(value) < MIN_SECRET_CHARS:
        raise WebhookError(f"webhooks.{key}: {variable} is shorter than {MIN_SECRET_CHARS} characters")
    return value


def secret_of(rules: WebhooksSection, environ: Mapping[str, str] = os.environ) -> str:
    """The signing secret from the variable secret_env names; a missing or short one names the variable."""
    return _secret("secret_env", rules.secret_env, environ)


def previous_secret_of(rules: WebhooksSection, environ: Mapping[str, str] = os.environ) -> str | None:
    """During a rotation, the old secret (previous_secret_env), also signed with until receivers have the new one."""
    if rules.previous_secret_env is None:
        return None
    return _secret("previous_secret_env", rules.previous_secret_env, environ)


# ---------------------------------------------------------------- delivery


@dataclass(slots=True)
class Pending:
    """One record on its way to every URL; done once each URL acknowledged it or gave it up."""

    offset: int
    left: int

    @property
    def done(self) -> bool:
        """Every URL has finished with the record."""
        return self.left <= 0


@dataclass(slots=True)
class Item:
    """A record's event as one URL's queue holds it."""

    event: Event
    pending: Pending


class Tracker:
    """Per partition, the records in flight in offset order: what may be committed is the done prefix."""

    def __init__(self) -> None:
        self.parts: dict[Any, deque[Pending]] = {}
        self.next: dict[Any, int] = {}

    def add(self, tp: Any, pending: Pending) -> None:
        """A record read from tp, in offset order."""
        self.parts.setdefault(tp, deque()).append(pending)

    def committable(self) -> dict[Any, int]:
        """Partitions whose done prefix grew, with the offset to commit (the first record not yet done)."""
        out = {}
        for tp, q in self.parts.items():
            moved = False
            while q and q[0].done:
                self.next[tp] = q.popleft().offset + 1
                moved = True
            if moved:
                out[tp] = self.next[tp]
        return out

    def unfinished(self) -> int:
        """Records read but not yet finished by every URL."""
        return sum(1 for q in self.parts.values() for p in q if not p.done)

    def forget(self, tps: Sequence[Any]) -> None:
        """Partitions taken away by a rebalance: their next owner re-reads from the committed offset."""
        for tp in tps:
            self.parts.pop(tp, None)
            self.next.pop(tp, None)


@dataclass
class UrlStats:
    """What one URL has seen, for /status."""

    delivered: int = 0
    failed: int = 0
    attempts: int = 0
    retrying: int = 0
    last_ok_ms: int | None = None
    last_error: str | None = None
    last_error_ms: int | None = None


class Endpoint:
    """One URL: a bounded queue, `concurrency` senders, retries with backoff, and a breaker while it is down.

    A URL that gave a record up is "down": until it answers 2xx again, each record gets one attempt only,
    so a dead receiver empties its queue into the failed list instead of holding every other URL back.
    """

    def __init__(self, url: str, rules: WebhooksSection, deliverer: Deliverer) -> None:
        self.url, self.rules, self.deliverer = url, rules, deliverer
        self.name = redact(url)
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=rules.queue_size)
        self.stats = UrlStats()
        self.down = False
        self.session: Any = None

    def status(self) -> dict[str, object]:
        """This URL's part of /status."""
        state = "down" if self.down else ("retrying" if self.stats.retrying else "up")
        s = self.stats
        return {
            "url": self.name,
            "state": state,
            "queued": self.queue.qsize(),
            "delivered": s.delivered,
            "failed": s.failed,
            "attempts": s.attempts,
            "retrying": s.retrying,
            "last_ok_ms": s.last_ok_ms,
            "last_error": s.last_error,
            "last_error_ms": s.last_error_ms,
        }

    async def send(self) -> None:
        """One sender: take the next record, deliver or give it up, mark it finished for this URL."""
        while True:
            item = await self.queue.get()
            try:
                if await self.deliver(item.event):
                    item.pending.left -= 1
            finally:
                self.queue.task_done()

    async def deliver(self, ev: Event) -> bool:
        """Try until a 2xx or max_attempts; False only when stopping cut it short (the record is not finished)."""
        d = self.deliverer
        attempt, reason = 0, ""
        while attempt < self.rules.max_attempts:
            attempt += 1
            self.stats.attempts += 1
            reason = await self.attempt(ev, attempt)
            if not reason:
                self.stats.delivered += 1
                self.stats.last_ok_ms = d.now_ms()
                self.down = False
                return True
            self.stats.last_error, self.stats.last_error_ms = reason, d.now_ms()
            if self.down or attempt >= self.rules.max_attempts:
                break
            self.stats.retrying += 1
            try:
                wait_s = backoff_ms(attempt, self.rules, d.rng()) / 1000
                if await d.sleep_or_stop(wait_s):
                    return False
            finally:
                self.stats.retrying -= 1
        if not await d.record_failure(self, ev, attempt, reason):
            return False
        self.stats.failed += 1
        if not self.down:
            log.warning("webhooks: %s gave up %s after %d attempts (%s); it is down", self.name, ev.id, attempt, reason)
        self.down = True
        return True

    async def attempt(self, ev: Event, attempt: int) -> str:
        """One POST; '' on a 2xx, else why it failed (status, timeout or connection error)."""
        import aiohttp

        t = int(self.deliverer.clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature_header(self.deliverer.secret, ev.body, t, self.deliverer.previous_secret),
            EVENT_ID_HEADER: ev.id,
            ATTEMPT_HEADER: str(attempt),
        }
        try:
            async with self.session.post(self.url, data=ev.body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return ""
                return f"HTTP {resp.status}"
        except TimeoutError:
            return f"timeout after {self.rules.timeout_ms} ms"
        except aiohttp.ClientError as e:
            return f"{type(e).__name__}: {e}"[:300]

    async def open(self) -> None:
        """The URL's HTTP session: keep-alive connections, at most `concurrency` at a time, the attempt timeout."""
        import aiohttp

        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.rules.timeout_ms / 1000),
            connector=aiohttp.TCPConnector(limit=self.rules.concurrency),
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        if self.session is not None:
            await self.session.close()


class Deliverer:
    """Consumes the webhook sources with its own group and fans each record out to every URL's queue."""

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        redis_url: str,
        rules: WebhooksSection,
        secret: str,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        previous_secret: str | None = None,
    ) -> None:
        self.bootstrap, self.group_id, self.rules, self.secret = bootstrap, group_id, rules, secret
        self.previous_secret = previous_secret
        self.clock, self.rng = clock, rng
        self.redis: Any = redis_conn.connect_async(redis_url, decode_responses=True)
        self.endpoints = [Endpoint(u, rules, self) for u in rules.urls]
        self.tracker = Tracker()
        self.state = "starting"
        self.lag: int | None = None
        self.read = 0
        self.undecodable = 0
        self.error: str | None = None
        self._stopping = asyncio.Event()

    def now_ms(self) -> int:
        """Wall-clock ms for the status."""
        return int(self.clock() * 1000)

    def stop(self) -> None:
        """Stop soon: unfinished records stay uncommitted and are delivered again by the next run."""
        self._stopping.set()

    async def sleep_or_stop(self, seconds: float) -> bool:
        """Wait out a backoff; True when the deliverer is stopping instead."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    def status(self) -> dict[str, object]:
        """For the sink's /status and the Redis status hash the worker's /status reads."""
        return {
            "state": self.state,
            "group": self.group_id,
            "lag": self.lag,
            "read": self.read,
            "in_flight": self.tracker.unfinished(),
            "undecodable": self.undecodable,
            "delivered": sum(e.stats.delivered for e in self.endpoints),
            "failed": sum(e.stats.failed for e in self.endpoints),
            "error": self.error,
            "urls": [e.status() for e in self.endpoints],
            "updated_ms": self.now_ms(),
        }

    async def record_failure(
        self, ep: Endpoint | None, ev: Event | None, attempts: int, reason: str, **extra: str
    ) -> bool:
        """Append a given-up delivery to the failed stream, retrying Redis until it takes it; False if stopping."""
        fields = {
            "url": ep.name if ep is not None else "",
            "id": ev.id if ev is not None else "",
            "type": ev.type if ev is not None else "",
            "attempts": str(attempts),
            "reason": reason,
            "failed_ms": str(self.now_ms()),
            "body": ev.body.decode() if ev is not None else "",
            **extra,
        }
        while True:
            try:
                await self.redis.xadd(names.KEY_WEBHOOK_FAILED, fields, maxlen=FAILED_MAXLEN, approximate=True)
                return True
            except Exception as e:
                log.warning("webhooks: cannot record a failed delivery in Redis (%s); retrying", e)
                if await self.sleep_or_stop(REDIS_RETRY_S):
                    return False

    async def publish_status(self) -> None:
        """Write the status hash; a Redis hiccup only delays it."""
        try:
            doc = json.dumps(self.status(), separators=(",", ":"))
            await self.redis.hset(names.KEY_WEBHOOK_STATUS, mapping={"s": doc})
        except Exception as e:
            log.debug("webhooks: status not written: %s", e)

    async def run(self, stopping: asyncio.Event | None = None) -> None:
        """Deliver until stop() (or `stopping`); raises on a broker failure, which the caller restarts."""
        self._stopping.clear()
        watcher = asyncio.create_task(self._follow(stopping)) if stopping is not None else None
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self.rules.start,
            max_poll_records=TAKE_MAX,
            isolation_level="read_committed",  # an aborted transaction's entries were never real: never sent
        )
        senders: list[asyncio.Task[None]] = []
        self.tracker = Tracker()
        try:
            for ep in self.endpoints:
                await ep.open()
                senders += [asyncio.create_task(ep.send()) for _ in range(self.rules.concurrency)]
            await consumer.start()
            consumer.subscribe(names.WEBHOOK_SOURCES, listener=_Rebalance(self, consumer))
            self.state, self.error = "running", None
            await self._loop(consumer)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"[:300]  # the sink process logs it and starts the loop again
            raise
        finally:
            self.state = "stopped"
            for t in senders:
                t.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._commit(consumer)
            await consumer.stop()
            for ep in self.endpoints:
                await ep.close()
                while not ep.queue.empty():
                    ep.queue.get_nowait()
            await self.publish_status()
            if watcher is not None:
                watcher.cancel()

    async def _follow(self, stopping: asyncio.Event) -> None:
        """Stop when the process's stop event is set."""
        await stopping.wait()
        self.stop()

    async def _loop(self, consumer: Any) -> None:
        """Read while every queue has room (partitions paused otherwise, still polling), fan out, commit."""
        published = 0.0
        while not self._stopping.is_set():
            room = min(ep.queue.maxsize - ep.queue.qsize() for ep in self.endpoints)
            parts = consumer.assignment()
            if room <= 0:
                consumer.pause(*parts)
                await consumer.getmany(timeout_ms=100)  # keeps the group membership alive while paused
            else:
                consumer.resume(*parts)
                got = await consumer.getmany(timeout_ms=200, max_records=min(room, TAKE_MAX))
                for tp, records in got.items():
                    for r in records:
                        await self._fan_out(tp, r)
            await self._commit(consumer)
            self.lag = await self._lag(consumer)
            if time.monotonic() - published >= STATUS_EVERY_S:
                await self.publish_status()
                published = time.monotonic()

    async def _fan_out(self, tp: Any, r: Any) -> None:
        """Queue one record to every URL; a record that is no event is recorded as failed and passed."""
        self.read += 1
        pending = Pending(r.offset, len(self.endpoints))
        self.tracker.add(tp, pending)
        if r.value is None:
            pending.left = 0
            return
        try:
            ev = event_of(tp.topic, json.loads(r.value))
        except (ValueError, TypeError, AttributeError) as e:
            self.undecodable += 1
            where = f"{tp.topic}:{tp.partition}:{r.offset}"
            log.error("webhooks: %s is not a webhook event (%s); recorded as failed", where, e)
            if await self.record_failure(None, None, 0, f"undecodable record at {where}: {e}"[:300], at=where):
                pending.left = 0
            return
        for ep in self.endpoints:
            ep.queue.put_nowait(Item(ev, pending))

    async def _commit(self, consumer: Any) -> None:
        """Commit each partition's done prefix; a failed commit only means those records are sent again."""
        from aiokafka.errors import CommitFailedError, IllegalStateError

        offsets = self.tracker.committable()
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as e:
            log.warning("webhooks: offsets not committed (%s); those records will be delivered again", e)

    async def _lag(self, consumer: Any) -> int | None:
        """Records not yet finished by every URL: unread ones plus those in flight; None until fetched once."""
        parts = consumer.assignment()
        if not parts:
            return None
        left = await unread(consumer, parts)
        return None if left is None else left + self.tracker.unfinished()

    async def close(self) -> None:
        """Close the Redis client."""
        await self.redis.aclose()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    """Commit what is finished before partitions go, and forget their records (their next owner re-reads them)."""

    def __init__(self, deliverer: Deliverer, consumer: Any) -> None:
        self.deliverer, self.consumer = deliverer, consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Called by aiokafka before a rebalance takes partitions away."""
        await self.deliverer._commit(self.consumer)
        self.deliverer.tracker.forget(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        """Nothing to do: a partition's records are read from its committed offset."""


def from_settings(settings: Any, rules: WebhooksSection, environ: Mapping[str, str] = os.environ) -> Deliverer:
    """The deliverer of a running sink process: group <app id>.webhooks, the secret from secret_env."""
    return Deliverer(
        settings.kafka,
        settings.app_id + names.WEBHOOK_GROUP_SUFFIX,
        settings.redis_url.get_secret_value(),
        rules,
        secret_of(rules, environ),
        previous_secret=previous_secret_of(rules, environ),
    )


async def read_status(redis: Any, now_ms: int | None = None) -> dict[str, object] | None:
    """The deliverer's last published status (for the worker's /status), marked stale when it stopped writing."""
    try:
        raw = await redis.hget(names.KEY_WEBHOOK_STATUS, "s")
        failed = int(await redis.xlen(names.KEY_WEBHOOK_FAILED))
    except Exception as e:  # /status must answer even when Redis does not
        return {"state": "unknown", "stale": True, "error": f"reading Redis failed: {e}"}
    if raw is None:
        return {"state": "not started", "stale": True, "failed_recorded": failed}
    doc: dict[str, object] = json.loads(raw)
    updated = doc.get("updated_ms")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    doc["stale"] = not isinstance(updated, int) or now - updated > STALE_AFTER_MS
    doc["failed_recorded"] = failed
    return doc


@dataclass
class Failure:
    """One entry of the failed stream, for `fenxiao webhooks failed` and tests."""

    stream_id: str
    fields: dict[str, str] = field(default_factory=dict)


async def failures(redis: Any, count: int = 100) -> list[Failure]:
    """The oldest `count` given-up deliveries."""
    rows = await redis.xrange(names.KEY_WEBHOOK_FAILED, count=count)
    return [Failure(sid, dict(f)) for sid, f in rows]


@dataclass
class Redelivered:
    """What `fenxiao webhooks redeliver` did: sent (2xx, removed from the failed list), failed again, skipped."""

    sent: int = 0
    failed: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)


async def redeliver(
    redis_url: str, rules: WebhooksSection, secret: str, only: str | None, limit: int, previous: str | None = None
) -> Redelivered:
    """POST failed deliveries once more (fresh signature, same body and id); a 2xx removes them from the list.

    Rows whose URL is no longer in [webhooks] (or not `only`, a URL as /status shows it) are skipped.
    """
    redis = redis_conn.connect_async(redis_url, decode_responses=True)
    out = Redelivered()
    d = Deliverer("", "", redis_url, rules.model_copy(update={"max_attempts": 1}), secret, previous_secret=previous)
    by_name = {ep.name: ep for ep in d.endpoints}
    try:
        for ep in d.endpoints:
            await ep.open()
        for row in await failures(redis, limit):
            target = by_name.get(row.fields.get("url", ""))
            body = row.fields.get("body", "")
            if target is None or not body or (only is not None and target.name != only):
                out.skipped += 1
                continue
            ev = Event(row.fields["id"], row.fields.get("type", ""), body.encode())
            reason = await target.attempt(ev, int(row.fields.get("attempts", "0") or 0) + 1)
            if reason:
                out.failed += 1
                out.reasons.append(f"{ev.id} to {target.name}: {reason}")
            else:
                await redis.xdel(names.KEY_WEBHOOK_FAILED, row.stream_id)
                out.sent += 1
    finally:
        for ep in d.endpoints:
            await ep.close()
        await d.close()
        await redis.aclose()
    return out
