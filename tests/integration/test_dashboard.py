"""The dashboard in headless Chromium (driven over the DevTools protocol) while a scenario is replayed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import websockets

from streams.api import auth
from tests.integration import scenario
from tests.integration.scenario import Env

OUT = Path(__file__).resolve().parents[2] / "test-output"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1280,900",
]


def chromium() -> str:
    """The system Chromium (`make deps` installs it); its absence fails the test instead of skipping it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: run `make deps` (apt-get install chromium)", pytrace=False)
    return path


class Page:
    """One page target over CDP: commands, and every console error or uncaught exception it reports."""

    def __init__(self, ws: Any, session: str) -> None:
        self.ws, self.session = ws, session
        self.ids = itertools.count(1000)
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.errors: list[str] = []

    async def pump(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.waiting:
                self.waiting.pop(msg["id"]).set_result(msg)
            elif msg.get("method") == "Runtime.consoleAPICalled" and msg["params"]["type"] in ("error", "assert"):
                self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in msg["params"]["args"]))
            elif msg.get("method") == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(msg["params"]["exceptionDetails"])[:500])
            elif msg.get("method") == "Log.entryAdded" and msg["params"]["entry"]["level"] == "error":
                self.errors.append(msg["params"]["entry"]["text"])

    async def send(self, method: str, session: bool = True, **params: Any) -> Any:
        i = next(self.ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[i] = fut
        msg: dict[str, Any] = {"id": i, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        await self.ws.send(json.dumps(msg))
        reply = await asyncio.wait_for(fut, 30)
        assert "error" not in reply, reply
        return reply["result"]

    async def eval(self, expr: str) -> Any:
        r = await self.send("Runtime.evaluate", expression=expr, returnByValue=True)
        return r["result"].get("value")

    async def wait_for(self, expr: str, timeout: float) -> Any:
        """Poll a JS expression until it is truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.eval(expr)
            if value:
                return value
            await asyncio.sleep(0.5)
        return None

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


async def drive(port: int, tmp: Path, produce: Any) -> dict[str, Any]:
    """Open the operator view, start the replay, wait for data; then the distributor view. Screenshots both."""
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
            await page.send("Page.navigate", url=base + scenario.operator_token())
            await page.wait_for("document.readyState === 'complete'", 20)
            replay = asyncio.create_task(asyncio.to_thread(produce))
            op = await page.wait_for(
                "(() => { const t = document.querySelectorAll('#ticker li').length;"
                " const p = +document.getElementById('chart').dataset.points;"
                " const b = document.querySelectorAll('#board tbody tr').length;"
                " return t > 5 && p > 0 && b > 0 ? {ticker: t, points: p, board: b} : null; })()",
                90,
            )
            await replay
            await asyncio.sleep(2.5)
            await page.screenshot(OUT / "dashboard-operator.png")
            url_after = await page.eval("location.href")
            await page.send(
                "Page.navigate", url=base + auth.issue(scenario.TEST_TOKEN_KEY, auth.DISTRIBUTOR, "u1-0", 600)
            )
            dist = await page.wait_for(
                "(() => { const t = document.querySelectorAll('#my-ticker li').length;"
                " const p = document.getElementById('d-available').textContent;"
                " const hidden = document.getElementById('operator').offsetParent === null;"
                " return t > 0 && p !== '¥0.00' && hidden ? {ticker: t, available: p} : null; })()",
                30,
            )
            await page.screenshot(OUT / "dashboard-distributor.png")
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            return {"operator": op, "distributor": dist, "errors": page.errors, "url_after": url_after}
    finally:
        proc.kill()
        proc.wait(10)


def test_dashboard_shows_live_data_without_console_errors(pipe: Env) -> None:
    w = pipe.worker("basic")
    try:
        result = asyncio.run(drive(pipe.web_port, pipe.tmp, lambda: pipe.produce(scenario.load_records("basic"))))
    finally:
        w.stop()
    assert result["operator"], f"the operator view showed no ticker, chart or leaderboard data: {result}"
    assert result["distributor"], f"the distributor view showed no balance or feed: {result}"
    assert "token=" not in result["url_after"], "the token must be removed from the address bar"
    assert result["errors"] == [], f"console errors: {result['errors']}"
