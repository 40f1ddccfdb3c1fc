"""The worker's report pages: GET /reports/{name}?... is forwarded to the `fenxiao sink` process, which owns ClickHouse.

API clients keep calling the worker; the sink process runs the report on its connection (chDB admits
one process) and answers on 127.0.0.1:FENXIAO_SINK_PORT. The caller's token goes along unchanged, so
the sink checks it exactly as the worker would.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from streams.pipeline import runtime
from streams.pipeline.app import app

log = logging.getLogger(__name__)

FORWARD_TIMEOUT_S = 300.0


@app.page("/reports/{name}")
async def report_page(web: Any, request: Any, name: str) -> Any:
    """Forward the report request (query and Authorization) to the sink process and relay its answer."""
    port = runtime.get().settings.sink_port
    url = f"http://127.0.0.1:{port}/reports/{quote(name, safe='')}"
    headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
    timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, params=list(request.query.items()), headers=headers) as resp,
        ):
            body = await resp.read()
            return web.bytes(body, status=resp.status, content_type="application/json")
    except (aiohttp.ClientError, TimeoutError) as e:
        log.warning("report %s: the sink process on port %d did not answer: %s", name[:40], port, e)
        return web.json(
            {"error": f"the sink process (reports, port {port}) does not answer: {e}; is it running?"}, status=503
        )
