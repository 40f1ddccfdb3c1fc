"""The dashboard's money-out parts in headless Chromium: four balances, the review queue and its buttons.

The page is the real dashboard (the worker's three files, assembled as /dashboard assembles them). The API
behind it is a small aiohttp app speaking the write API's interface as the lead fixed it in common.md (the
review queue, the action POSTs with their Idempotency-Key); it records every request, so the test checks what
the page sent, not what it drew alone. The real API's round trip is tested with it in tests/integration/test_api.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import websockets
from aiohttp import web

from streams.api.routes import WEB_DIR
from tests.integration.test_dashboard import CHROMIUM_FLAGS, OUT, Page, chromium

pytestmark = pytest.mark.integration

OPERATOR, DISTRIBUTOR = "op-token", "u1-token"
QUEUE = [
    {
        "withdrawal_id": "w-old",
        "distributor_id": "u7",
        "amount_cents": 123456,
        "channel": "alipay",
        "status": "requested",
        "requested_ts": 1794355200000,
        "updated_ts": 1794355200000,
        "fee_cents": None,
        "payout_cents": None,
    },
    {
        "withdrawal_id": "w" * 128,
        "distributor_id": "u8",
        "amount_cents": 500,
        "channel": None,
        "status": "approved",
        "requested_ts": 1794358800000,
        "updated_ts": 1794358900000,
        "fee_cents": 10,
        "payout_cents": 490,
    },
]


def page_html() -> str:
    """The dashboard page exactly as streams.api.routes.dashboard assembles it."""
    html = (WEB_DIR / "dashboard.html").read_text(encoding="utf-8")
    css = (WEB_DIR / "dashboard.css").read_text(encoding="utf-8")
    js = (WEB_DIR / "dashboard.js").read_text(encoding="utf-8")
    return html.replace("/*CSS*/", css).replace("/*JS*/", js)


class FakeApi:
    """The endpoints the page calls, answering as common.md specifies; every request is kept."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.keys: dict[str, str] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/dashboard", self.page)
        app.router.add_get("/api/me", self.me)
        app.router.add_get("/api/distributors/{id}", self.distributor)
        app.router.add_get("/api/operator/withdrawals", self.queue)
        app.router.add_post("/api/operator/withdrawals/{wid}/{action}", self.action)
        app.router.add_get("/api/live", self.live)
        app.router.add_get("/api/leaderboard", self.board)
        app.router.add_get("/api/feed", self.feed)
        app.router.add_get("/api/distributors/{id}/feed", self.feed)
        return app

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=page_html(), content_type="text/html")

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"orders_per_s": 0, "orders": 0, "gmv_cents": 0, "commission_cents": 0, "series": []})

    async def board(self, request: web.Request) -> web.Response:
        return web.json_response({"entries": []})

    def who(self, request: web.Request) -> str:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ") or request.query.get("token", "")
        return {OPERATOR: "operator", DISTRIBUTOR: "distributor"}.get(token, "")

    async def me(self, request: web.Request) -> web.Response:
        role = self.who(request)
        return web.json_response({"role": role, "distributor_id": "u1" if role == "distributor" else None})

    async def distributor(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "distributor_id": "u1",
                "pending_cents": 1500,
                "available_cents": 20000,
                "reserved_cents": 5000,
                "withdrawn_cents": 300001,
                "lifetime_earned_cents": 326501,
                "tier": "gold",
                "team": {"level1": 2, "level2": 1, "level3": 0},
            }
        )

    async def queue(self, request: web.Request) -> web.Response:
        if self.who(request) != "operator":
            return web.json_response({"error": "operators only"}, status=403)
        return web.json_response({"withdrawals": QUEUE})

    async def action(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        body = await request.text()
        self.requests.append(
            {
                "path": request.path,
                "key": key,
                "role": self.who(request),
                "body": json.loads(body),
                "type": request.headers.get("Content-Type"),
            }
        )
        return web.json_response({"id": key, "topic": "fenxiao.withdrawals", "event_id": "e1"}, status=202)

    async def feed(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"retry: 1000\n\n")
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
            await asyncio.sleep(3)  # then the stream ends and EventSource reconnects, as after a worker restart
        return resp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def drive(tmp: Path) -> dict[str, Any]:
    """Operator: read the queue, approve the first twice, mark the second paid; distributor: read the balances."""
    fake = FakeApi()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    proc = subprocess.Popen(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium'}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        endpoint = None
        for line in proc.stderr:
            if "DevTools listening on " in line:
                endpoint = line.split("DevTools listening on ", 1)[1].strip()
                break
        assert endpoint, "chromium did not print its DevTools endpoint"
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        async with websockets.connect(endpoint, max_size=64 * 2**20) as ws:
            page = Page(ws, "")
            pump = asyncio.create_task(page.pump())
            target = await page.send("Target.createTarget", session=False, url="about:blank")
            attached = await page.send(
                "Target.attachToTarget", session=False, targetId=target["targetId"], flatten=True
            )
            page.session = attached["sessionId"]
            for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
                await page.send(domain)
            base = f"http://127.0.0.1:{port}/dashboard?token="
            await page.send("Page.navigate", url=base + OPERATOR)
            rows = await page.wait_for(
                "(() => { const r = [...document.querySelectorAll('#queue tbody tr')];"
                " return r.length === 2 ? r.map(tr => [...tr.cells].map(c => c.textContent)) : null; })()",
                20,
            )
            await page.eval(
                "(() => { const b = document.querySelector('#queue tbody tr button[data-action=approve]');"
                " b.click(); b.disabled = false; b.click(); })()"
            )
            await page.wait_for("window.__fx.actions.length >= 1", 10)
            await page.eval(
                "document.querySelectorAll('#queue tbody tr')[1].querySelector('[data-action=paid]').click()"
            )
            await page.wait_for("window.__fx.actions.length >= 2", 10)
            await asyncio.sleep(1.5)
            await page.screenshot(OUT / "dashboard-review-queue.png")
            await page.send("Page.navigate", url=base + DISTRIBUTOR)
            balances = await page.wait_for(
                "(() => { const t = id => document.getElementById(id).textContent;"
                " return t('d-withdrawn') !== '¥0.00' ? [t('d-pending'), t('d-available'), t('d-reserved'),"
                " t('d-withdrawn')] : null; })()",
                20,
            )
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            return {"rows": rows, "balances": balances, "requests": fake.requests, "errors": page.errors}
    finally:
        proc.kill()
        proc.wait(10)
        await runner.cleanup()


def test_review_queue_buttons_post_to_the_write_api_with_one_key_per_action(tmp_path: Path) -> None:
    result = asyncio.run(drive(tmp_path))
    assert result["rows"] == [
        ["2026-11-11 00:00:00", "w-old", "u7", "alipay", "¥1,234.56", "requested", "approvereject"],
        ["2026-11-11 01:00:00", "w" * 128, "u8", "–", "¥5.00", "approved", "paidfailedreject"],
    ]
    sent = result["requests"]
    approvals = [r for r in sent if r["path"] == "/api/operator/withdrawals/w-old/approve"]
    # Clicked twice: the same key both times, so the API creates one approval.
    assert len(approvals) == 2 and {r["key"] for r in approvals} == {"dash:approve:w-old"}
    assert all(r["role"] == "operator" and r["type"] == "application/json" for r in sent)
    paid = [r for r in sent if r["path"] == f"/api/operator/withdrawals/{'w' * 128}/paid"]
    assert len(paid) == 1
    key = paid[0]["key"]  # "dash:paid:" + 128 characters is too long for a key: the id's digest stands in
    assert key.startswith("dash:paid:") and len(key) == len("dash:paid:") + 40 and len(key) <= 128
    assert result["balances"] == ["¥15.00", "¥200.00", "¥50.00", "¥3,000.01"]
    assert result["errors"] == [], f"console errors: {result['errors']}"
