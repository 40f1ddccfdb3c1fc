"""The distributor API and the dashboard, served by every worker; views read only Redis, so any worker answers.

Contract: docs/openapi.yaml. Auth, caps and trade-offs: docs/api.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web as aioweb
from faust.web import View
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams import names
from streams.api import auth, commands
from streams.pipeline.app import app
from streams.settings import get_settings
from streams.state import redis_conn
from streams.state.projections import (
    METRICS,
    PERIODS,
    TEAM_LEVELS,
    board_key,
    bucket,
    entry_from_fields,
    feed_key,
    live_key,
    team_key,
)

WEB_DIR = Path(__file__).resolve().parent / "web"
STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
FEED_BLOCK_MS = 2000
FEED_RETRY_S = 0.2  # a slow or restarting Redis must not end an open feed
FEED_HEARTBEAT_S = 15.0
DEFAULT_TIER = "standard"

_redis: Any = None


def redis() -> Any:
    """The views' own pool (blocking XREADs must not starve the sequencer's connections); decoded str replies."""
    global _redis
    if _redis is None:
        _redis = redis_conn.connect_async(get_settings().redis_url.get_secret_value(), decode_responses=True)
    return _redis


class ApiError(Exception):
    """An HTTP error with a JSON body {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def error_response(view: Any, e: ApiError) -> Any:
    headers = {"WWW-Authenticate": 'Bearer realm="fenxiao"'} if e.status == 401 else None
    return view.json({"error": e.message}, status=e.status, headers=headers)


def _token(request: Any, allow_query: bool) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return str(header[7:].strip())
    if allow_query:
        return request.query.get("token") or None
    return None


def principal(request: Any, allow_query: bool = False) -> auth.Principal:
    """The caller, from the Bearer header (or ?token= where a browser cannot send headers); 401 otherwise."""
    try:
        return auth.verify(get_settings().token_key.get_secret_value(), _token(request, allow_query))
    except auth.AuthError as e:
        raise ApiError(401, str(e)) from None


def require(request: Any, distributor_id: str | None, allow_query: bool = False) -> auth.Principal:
    """401 without a valid token; 403 when it may not read this distributor (or operator-only data if None)."""
    p = principal(request, allow_query)
    if distributor_id is None:
        if p.role != auth.OPERATOR:
            raise ApiError(403, "operators only")
    elif not p.may_read(distributor_id):
        raise ApiError(403, "a distributor may only read their own data")
    return p


def _int_param(request: Any, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _stream_id(raw: str | None, message: str) -> str | None:
    """A Redis stream id (two unsigned 64-bit numbers) in canonical form; 400 for anything else."""
    if raw is None:
        return None
    if not STREAM_ID.fullmatch(raw):
        raise ApiError(400, message)
    ms, seq = (int(part) for part in raw.split("-"))
    if ms >= 2**64 or seq >= 2**64:
        raise ApiError(400, message)
    return f"{ms}-{seq}"


def entry_record(stream_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """The fenxiao.commissions value plus its stream id (the cursor and SSE id)."""
    return {"id": stream_id, **entry_from_fields(fields).as_record()}


def wrap(fn: Any) -> Any:
    """Turn ApiError into its JSON response, so handlers just raise."""

    async def handler(view: Any, request: Any, **kw: Any) -> Any:
        try:
            return await fn(view, request, **kw)
        except ApiError as e:
            return error_response(view, e)

    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


@app.page("/api/me")
@wrap
async def me(view: Any, request: Any) -> Any:
    """Who the token speaks for, so the dashboard knows which view to show."""
    p = principal(request)
    distributor_id = p.subject if p.role == auth.DISTRIBUTOR else None
    return view.json(
        {"role": p.role, "distributor_id": distributor_id, "subject": p.subject, "expires_at": p.expires_at}
    )


@app.page("/api/distributors/{id}")
@wrap
async def distributor(view: Any, request: Any, id: str) -> Any:
    """Balances, tier, inviter and team sizes, all from Redis."""
    require(request, id)
    async with redis().pipeline(transaction=False) as p:
        p.hgetall(names.KEY_BALANCE + id)
        p.hgetall(names.KEY_USER + id)
        for level in range(1, TEAM_LEVELS + 1):
            p.zcard(team_key(level, id))
        bal, user, *team = await p.execute()
    if not bal and not user:
        raise ApiError(404, f"unknown distributor {id}")
    return view.json(
        {
            "distributor_id": id,
            "signed_up": bool(user.get("t")),
            "distributor": user.get("d", "1") == "1",
            "pending_cents": int(bal.get("p", 0)),
            "available_cents": int(bal.get("a", 0)),
            "reserved_cents": int(bal.get("r", 0)),  # contract v2: fx:b field r (提现中)
            "withdrawn_cents": int(bal.get("w", 0)),  # contract v2: fx:b field w (已提现)
            "status": user.get("s"),
            "lifetime_earned_cents": int(bal.get("l", 0)),
            "tier": user.get("r") or DEFAULT_TIER,
            "inviter": user.get("i"),
            "team": {f"level{i}": int(n) for i, n in enumerate(team, start=1)},
        }
    )


@app.page("/api/distributors/{id}/ledger")
@wrap
async def ledger(view: Any, request: Any, id: str) -> Any:
    """Newest first; cursor = the last stream id of the previous page (exclusive), so pages never overlap."""
    require(request, id)
    limit = _int_param(request, "limit", 50, 1, 200)
    cursor = _stream_id(request.query.get("cursor") or None, "cursor must be the next_cursor of a previous page")
    if cursor == "0-0":
        rows = []  # nothing is older than the first possible id (and Redis refuses the range "(0-0")
    else:
        rows = await redis().xrevrange(feed_key(id), max=f"({cursor}" if cursor else "+", min="-", count=limit + 1)
    page = rows[:limit]
    return view.json(
        {
            "distributor_id": id,
            "entries": [entry_record(sid, f) for sid, f in page],
            "next_cursor": page[-1][0] if len(rows) > limit else None,
        }
    )


@app.page("/api/distributors/{id}/team")
@wrap
async def team(view: Any, request: Any, id: str) -> Any:
    """Most recently bound first; the cursor is the last member of the previous page."""
    require(request, id)
    level = _int_param(request, "level", 1, 1, TEAM_LEVELS)
    limit = _int_param(request, "limit", 50, 1, 500)
    cursor = request.query.get("cursor") or None
    key = team_key(level, id)
    async with redis().pipeline(transaction=False) as p:
        p.zcard(key)
        p.zrevrangebylex(key, f"({cursor}" if cursor else "+", "-", start=0, num=limit + 1)
        size, rows = await p.execute()
    page = rows[:limit]
    members = []
    for m in page:
        ts, _, uid = m.partition("|")
        members.append({"user_id": uid, "joined_at": _iso(int(ts))})
    return view.json(
        {
            "distributor_id": id,
            "level": level,
            "size": int(size),
            "members": members,
            "next_cursor": page[-1] if len(rows) > limit else None,
        }
    )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@app.page("/api/leaderboard")
@wrap
async def leaderboard(view: Any, request: Any) -> Any:
    """Top N of a period bucket (UTC); any valid token may read it (distributors compete on it)."""
    principal(request)
    q = request.query
    period = q.get("period", "day")
    metric = q.get("metric", "earnings")
    campaign = q.get("campaign") or None
    if period not in PERIODS:
        raise ApiError(400, f"period must be one of {', '.join(PERIODS)}")
    if metric not in METRICS:
        raise ApiError(400, f"metric must be one of {', '.join(METRICS)}")
    if metric == "recruits" and campaign is not None:
        raise ApiError(400, "recruits are counted program-wide: bindings carry no campaign")
    at = q.get("at") or None
    if at is not None and not DAY.match(at):
        raise ApiError(400, "at must be a UTC date YYYY-MM-DD")
    try:
        at_ms = int(datetime.strptime(at, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000) if at else None
    except ValueError:
        raise ApiError(400, f"at is not a date: {at}") from None
    limit = _int_param(request, "limit", 10, 1, 100)
    b = bucket(period, at_ms if at_ms is not None else int(time.time() * 1000))
    rows = await redis().zrevrange(board_key(metric, period, b, campaign), 0, limit - 1, withscores=True)
    return view.json(
        {
            "period": period,
            "bucket": b,
            "metric": metric,
            "campaign": campaign,
            "entries": [
                {"rank": i, "distributor_id": who, "value": int(score)} for i, (who, score) in enumerate(rows, start=1)
            ],
        }
    )


def share_url(distributor_id: str, campaign: str | None, product: str | None) -> str:
    """The landing link that carries the distributor as ref (the click's ref on the shop side)."""
    base = get_settings().share_base_url
    params = {"ref": distributor_id}
    if campaign:
        params["campaign"] = campaign
    if product:
        params["product"] = product
    return f"{base}{'&' if '?' in base else '?'}{urlencode(params)}"


async def _share_target(request: Any, id: str) -> str:
    require(request, id)
    user = await redis().hgetall(names.KEY_USER + id)
    if not user:
        raise ApiError(404, f"unknown distributor {id}")
    if user.get("d") == "0":
        raise ApiError(409, f"{id} is not a distributor: their links would earn nothing")
    return share_url(id, request.query.get("campaign") or None, request.query.get("product") or None)


@app.page("/api/distributors/{id}/share")
@wrap
async def share(view: Any, request: Any, id: str) -> Any:
    """A share link and where its QR code is."""
    url = await _share_target(request, id)
    qs = urlencode({k: v for k in ("campaign", "product") if (v := request.query.get(k))})
    return view.json(
        {
            "distributor_id": id,
            "url": url,
            "qr_png": f"/api/distributors/{quote(id, safe='')}/share.png" + (f"?{qs}" if qs else ""),
        }
    )


@app.page("/api/distributors/{id}/share.png")
@wrap
async def share_png(view: Any, request: Any, id: str) -> Any:
    """The share link as a QR code (PNG)."""
    import io

    import segno

    url = await _share_target(request, id)
    buf = io.BytesIO()
    try:
        qr = segno.make(url, error="m")
    except segno.DataOverflowError:
        raise ApiError(400, "the share link is too long for a QR code: shorten campaign or product") from None
    qr.save(buf, kind="png", scale=6, border=2)
    return view.bytes(buf.getvalue(), content_type="image/png")


async def _live(view: Any, request: Any, campaign: str | None) -> Any:
    require(request, None)
    window = _int_param(request, "window", 300, 10, 3600)
    now = int(time.time())
    seconds = list(range(now - window + 1, now + 1))
    async with redis().pipeline(transaction=False) as p:
        for s in seconds:
            p.hgetall(live_key(s, campaign))
        p.zrevrange(board_key("earnings", "all", "all", campaign), 0, 9, withscores=True)
        *buckets, top = await p.execute()
    series = [
        {"t": s, "orders": int(h.get("o", 0)), "gmv_cents": int(h.get("g", 0)), "commission_cents": int(h.get("c", 0))}
        for s, h in zip(seconds, buckets, strict=True)
    ]
    last10 = series[-10:]
    return view.json(
        {
            "campaign": campaign,
            "window_s": window,
            "orders_per_s": round(sum(x["orders"] for x in last10) / len(last10), 2),
            "orders": sum(x["orders"] for x in series),
            "gmv_cents": sum(x["gmv_cents"] for x in series),
            "commission_cents": sum(x["commission_cents"] for x in series),
            "series": series,
            "top_earners": [{"distributor_id": w, "earnings_cents": int(v)} for w, v in top],
        }
    )


@app.page("/api/live")
@wrap
async def live_all(view: Any, request: Any) -> Any:
    """The whole program in the last minutes, per second of commit time (operators)."""
    return await _live(view, request, None)


@app.page("/api/campaigns/{id}/live")
@wrap
async def live_campaign(view: Any, request: Any, id: str) -> Any:
    """One campaign in the last minutes, per second of commit time (operators)."""
    return await _live(view, request, id)


async def _sse(request: Any, key: str, p: auth.Principal) -> Any:
    """Stream entries of a Redis stream as SSE: id = stream id, so Last-Event-ID resumes exactly after it."""
    r = redis()
    last = _stream_id(
        request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or None,
        "Last-Event-ID must be an id this feed sent",
    )
    backlog = _int_param(request, "backlog", 0, 0, 200)
    resp = aioweb.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    await resp.write(b"retry: 1000\n\n")
    if last is None:
        rows = await r.xrevrange(key, count=max(backlog, 1))
        if backlog:
            await _send(resp, key, list(reversed(rows)))
        last = rows[0][0] if rows else "0-0"
    beat = time.monotonic()
    with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
        while p.expires_at > time.time():
            try:
                got = await r.xread({key: last}, count=500, block=FEED_BLOCK_MS)
            except (RedisTimeoutError, RedisConnectionError):
                await asyncio.sleep(FEED_RETRY_S)
                continue
            rows = got[0][1] if got else []
            if rows:
                await _send(resp, key, rows)
                last = rows[-1][0]
            elif time.monotonic() - beat >= FEED_HEARTBEAT_S:
                await resp.write(b": keep-alive\n\n")
                beat = time.monotonic()
        await resp.write(b"event: expired\ndata: {}\n\n")
    return resp


async def _send(resp: Any, key: str, rows: list[tuple[str, dict[str, str]]]) -> None:
    out = []
    for sid, f in rows:
        data = json.dumps(entry_record(sid, f), separators=(",", ":"), ensure_ascii=False)
        out.append(f"id: {sid}\nevent: entry\ndata: {data}\n\n")
    await resp.write("".join(out).encode("utf-8"))


@app.page("/api/distributors/{id}/feed")
@wrap
async def feed(view: Any, request: Any, id: str) -> Any:
    """Server-Sent Events of this distributor's new entries (?token= allowed: EventSource cannot set headers)."""
    p = require(request, id, allow_query=True)
    return await _sse(request, feed_key(id), p)


@app.page("/api/feed")
@wrap
async def feed_all(view: Any, request: Any) -> Any:
    """Server-Sent Events of every new entry, for the operator ticker."""
    p = require(request, None, allow_query=True)
    return await _sse(request, names.KEY_FEED_ALL, p)


@app.page("/dashboard")
@wrap
async def dashboard(view: Any, request: Any) -> Any:
    """The live dashboard: one self-contained page (no CDN); its script uses the token as a Bearer header."""
    principal(request, allow_query=True)
    html = (WEB_DIR / "dashboard.html").read_text(encoding="utf-8")
    css = (WEB_DIR / "dashboard.css").read_text(encoding="utf-8")
    js = (WEB_DIR / "dashboard.js").read_text(encoding="utf-8")
    page = html.replace("/*CSS*/", css).replace("/*JS*/", js)
    return view.html(page, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


# ---- the write API: one more producer onto the input topics (the topics stay the system of record) ----------

IDEMPOTENCY_TTL_S = 7 * 86_400
IN_FLIGHT_MS = 30_000  # a key whose first request is younger than this and not yet acked answers 409 (retry)
AUDIT_MAXLEN = 100_000

Send = Callable[[str, bytes, bytes], Awaitable[None]]


async def produce(topic: str, key: bytes, value: bytes) -> None:
    """One record through the faust app's producer (acks=all); returns only once the broker acked it."""
    await app.producer.send_and_wait(topic, key, value, partition=None, timestamp=None, headers=None)


sender: Send = produce  # the seam tests replace to see what would be produced


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _answer(rec: dict[str, Any], replayed: bool = False) -> dict[str, Any]:
    """The 202 body; `replayed` says the key's request was produced earlier and nothing new was (the CLI shows it)."""
    return {"id": rec["id"], "topic": rec["topic"], "event_id": rec["value"]["event_id"], "replayed": replayed}


async def submit(
    r: Any,
    send: Send,
    who: auth.Principal,
    method: str,
    path: str,
    key: str,
    body: dict[str, Any],
    build: Callable[[], Awaitable[commands.Command]],
) -> dict[str, Any]:
    """Produce the command once per Idempotency-Key: a repeat answers the first id, another body under it is 409."""
    h = commands.request_hash(method, path, body)
    rkey = names.KEY_IDEMPOTENCY + key
    stored = await r.get(rkey)
    if stored is None:
        cmd = await build()
        rec: dict[str, Any] = {"h": h, "id": cmd.id, "topic": cmd.topic, "key": cmd.key, "value": cmd.value}
        rec.update(st="pending", at=_now_ms())
        if await r.set(rkey, json.dumps(rec, ensure_ascii=False), nx=True, ex=IDEMPOTENCY_TTL_S):
            return await _deliver(r, send, rkey, rec, who, method, path, key, body)
        stored = await r.get(rkey)  # a concurrent request with the same key won the SET
        if stored is None:
            raise ApiError(409, "a request with this Idempotency-Key is in progress; retry it")
    rec = json.loads(stored)
    if rec["h"] != h:
        raise ApiError(409, "this Idempotency-Key was already used for a different request; use a new key")
    if rec["st"] == "done":
        return _answer(rec, replayed=True)
    if _now_ms() - int(rec["at"]) < IN_FLIGHT_MS:
        raise ApiError(409, "a request with this Idempotency-Key is in progress; retry in a few seconds")
    # The first attempt died before its ack was recorded: produce the very same record again (same event_id,
    # so if the broker had it already, the engine takes this one as a redelivery and changes nothing).
    return await _deliver(r, send, rkey, rec, who, method, path, key, body)


async def _deliver(
    r: Any,
    send: Send,
    rkey: str,
    rec: dict[str, Any],
    who: auth.Principal,
    method: str,
    path: str,
    key: str,
    body: dict[str, Any],
) -> dict[str, Any]:
    """Send, wait for the broker's ack, then record the operator's write in the audit and mark the key done."""
    value = json.dumps(rec["value"], separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    try:
        await send(rec["topic"], rec["key"].encode("utf-8"), value)
    except Exception as e:
        # Retryable at once: the next request with this key produces the same stored record.
        await r.set(rkey, json.dumps({**rec, "at": 0}, ensure_ascii=False), keepttl=True)
        raise ApiError(503, f"Kafka did not accept the record ({type(e).__name__}); retry with the same key") from e
    if who.role == auth.OPERATOR:
        await r.xadd(
            names.KEY_AUDIT,
            {
                "who": who.subject or auth.OPERATOR,
                "at": _iso(_now_ms()),
                "method": method,
                "path": path,
                "body": commands.canonical(body),
                "idempotency_key": key,
                "topic": rec["topic"],
                "event_id": rec["value"]["event_id"],
                "result_id": rec["id"],
            },
            maxlen=AUDIT_MAXLEN,
            approximate=True,
        )
    await r.set(rkey, json.dumps({**rec, "st": "done"}, ensure_ascii=False), keepttl=True)
    return _answer(rec)


def write(fn: Any) -> Any:
    """Turn ApiError and CommandError (400) into their JSON responses, so write handlers just raise."""

    async def handler(view: Any, request: Any, **kw: Any) -> Any:
        try:
            return await fn(view, request, **kw)
        except commands.CommandError as e:
            return error_response(view, ApiError(400, str(e)))
        except ApiError as e:
            return error_response(view, e)

    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


async def _write(
    view: Any,
    request: Any,
    who: auth.Principal,
    allowed: tuple[str, ...],
    build: Callable[[str, dict[str, Any]], Awaitable[commands.Command]],
) -> Any:
    """The common steps of every POST: key, body, then produce once; answers 202."""
    key = commands.check_key(request.headers.get("Idempotency-Key"))
    length = request.content_length
    if length is not None and length > commands.MAX_BODY_BYTES:
        raise commands.CommandError(f"body is {length} bytes; at most {commands.MAX_BODY_BYTES}")
    body = commands.parse_body(await request.read(), allowed)

    async def built() -> commands.Command:
        return await build(key, body)

    out = await submit(redis(), sender, who, request.method, request.path, key, body, built)
    return view.json(out, status=202)


def _withdrawal_view(raw: str) -> dict[str, Any]:
    """A stored withdrawal state (fx:w:<id> field s) for the API, with its times also in ISO form."""
    w: dict[str, Any] = json.loads(raw)
    w["requested_at"] = _iso(int(w["requested_ts"])) if w.get("requested_ts") is not None else None
    w["updated_at"] = _iso(int(w["updated_ts"])) if w.get("updated_ts") is not None else None
    return w


async def _withdrawals(ids: list[str]) -> list[dict[str, Any]]:
    async with redis().pipeline(transaction=False) as p:
        for wid in ids:
            p.hget(names.KEY_WITHDRAWAL + wid, "s")
        states = await p.execute()
    return [_withdrawal_view(s) for s in states if s]


@app.page("/api/distributors/{id}/withdrawals")
class DistributorWithdrawals(View):
    """A distributor's withdrawals: GET lists them newest first, POST requests one (withdrawal_id = the key)."""

    @wrap
    async def get(self, request: Any, id: str) -> Any:
        """Newest first, from fx:wu:<id> and fx:w:<withdrawal_id>."""
        require(request, id)
        limit = _int_param(request, "limit", 50, 1, 500)
        r = redis()
        async with r.pipeline(transaction=False) as p:
            p.zcard(names.KEY_DISTRIBUTOR_WITHDRAWALS + id)
            p.zrevrange(names.KEY_DISTRIBUTOR_WITHDRAWALS + id, 0, limit - 1)
            total, ids = await p.execute()
        return self.json({"distributor_id": id, "total": int(total), "withdrawals": await _withdrawals(ids)})

    @write
    async def post(self, request: Any, id: str) -> Any:
        """Request a withdrawal: the distributor's own token, or an operator's on their behalf."""
        who = principal(request)
        if not who.may_read(id):
            raise ApiError(403, "a distributor may only withdraw from their own balance")
        commands.check_id("distributor id", id)

        async def build(key: str, body: dict[str, Any]) -> commands.Command:
            return commands.withdrawal_request(key, id, body)

        return await _write(self, request, who, ("amount_cents", "channel"), build)


@app.page("/api/operator/withdrawals")
@wrap
async def review_queue(view: Any, request: Any) -> Any:
    """The review queue: requested and approved withdrawals, oldest first (operators)."""
    require(request, None)
    limit = _int_param(request, "limit", 100, 1, 500)
    r = redis()
    async with r.pipeline(transaction=False) as p:
        p.zcard(names.KEY_WITHDRAWAL_QUEUE)
        p.zrange(names.KEY_WITHDRAWAL_QUEUE, 0, limit - 1)
        total, ids = await p.execute()
    return view.json({"total": int(total), "withdrawals": await _withdrawals(ids)})


@app.page("/api/operator/withdrawals/{withdrawal_id}/{action}")
class WithdrawalAction(View):
    """approve, reject, paid or failed: the withdrawals event of that type for a known withdrawal (operators)."""

    @write
    async def post(self, request: Any, withdrawal_id: str, action: str) -> Any:
        """The distributor comes from the stored state, so an operator names only the withdrawal."""
        who = require(request, None)
        if action not in commands.ACTIONS:
            raise ApiError(404, f"unknown action {action!r}: use one of {', '.join(commands.ACTIONS)}")
        commands.check_id("withdrawal id", withdrawal_id)

        async def build(key: str, body: dict[str, Any]) -> commands.Command:
            raw = await redis().hget(names.KEY_WITHDRAWAL + withdrawal_id, "s")
            if not raw:
                raise ApiError(404, f"unknown withdrawal {withdrawal_id} (not requested, or not applied yet)")
            distributor_id = str(json.loads(raw)["distributor_id"])
            return commands.withdrawal_transition(key, withdrawal_id, distributor_id, action, body)

        return await _write(self, request, who, ("reason",), build)


@app.page("/api/operator/distributors/{id}/status")
class DistributorStatusView(View):
    """Approve (active), freeze or revoke a distributor (operators)."""

    @write
    async def post(self, request: Any, id: str) -> Any:
        """The status event; the engine dead-letters an unknown user (unknown_user)."""
        who = require(request, None)
        commands.check_id("distributor id", id)

        async def build(key: str, body: dict[str, Any]) -> commands.Command:
            return commands.distributor_status(key, id, body)

        return await _write(self, request, who, ("status", "reason"), build)


@app.page("/api/operator/adjustments")
class Adjustments(View):
    """A manual credit or debit on a distributor's available balance (operators); adjustment_id = the key."""

    @write
    async def post(self, request: Any) -> Any:
        """The adjustment event; the engine refuses a repeated adjustment_id (duplicate_adjustment)."""
        who = require(request, None)

        async def build(key: str, body: dict[str, Any]) -> commands.Command:
            return commands.adjustment(key, body)

        return await _write(self, request, who, ("distributor_id", "amount_cents", "reason"), build)


@app.page("/api/operator/audit")
@wrap
async def audit(view: Any, request: Any) -> Any:
    """Every operator write, newest first; cursor = the last id of the previous page (exclusive)."""
    require(request, None)
    limit = _int_param(request, "limit", 50, 1, 500)
    cursor = _stream_id(request.query.get("cursor") or None, "cursor must be the next_cursor of a previous page")
    if cursor == "0-0":
        rows = []
    else:
        rows = await redis().xrevrange(names.KEY_AUDIT, max=f"({cursor}" if cursor else "+", min="-", count=limit + 1)
    page = rows[:limit]
    entries = [{"id": sid, **f, "body": json.loads(f.get("body") or "{}")} for sid, f in page]
    return view.json({"entries": entries, "next_cursor": page[-1][0] if len(rows) > limit else None})
