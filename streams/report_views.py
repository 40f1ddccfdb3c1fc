"""The worker's report pages: GET /reports/{name}?... runs a BI report on the worker's own ClickHouse connection.

Embedded chDB admits one process, and while the worker runs that process is the worker; so the CLI
falls back to this page (operator token required) and renders the JSON it returns. The report runs
in a thread: the ClickHouse backend is thread-safe (statements take turns with the sink's flushes).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from streams import auth, reports, runtime
from streams.app import app
from streams.clickhouse import ClickHouse, ClickHouseError

log = logging.getLogger(__name__)


def _token(request: Any) -> str | None:
    """The bearer token of the request, if any."""
    header = str(request.headers.get("Authorization", ""))
    return header[7:].strip() if header.startswith("Bearer ") else None


def _clickhouse() -> ClickHouse:
    """The worker's ClickHouse connection (the sink's: one per process for chDB)."""
    return runtime.get().sink._ch


@app.page("/reports/{name}")
async def report_page(web: Any, request: Any, name: str) -> Any:
    """Run report `name` with the query string as its parameters; operators only."""
    key = runtime.get().settings.token_key.get_secret_value()
    try:
        principal = auth.verify(key, _token(request))
    except auth.AuthError as e:
        return web.json({"error": str(e)}, status=401)
    if principal.role != auth.OPERATOR:
        return web.json({"error": "reports are for operators"}, status=403)
    params = {str(k): str(v) for k, v in request.query.items()}
    try:
        report = await asyncio.to_thread(reports.run, _clickhouse(), name, params)
    except reports.ReportError as e:
        return web.json({"error": str(e)}, status=400)
    except ClickHouseError as e:
        log.warning("report %s failed: %s", name[:40], e)
        return web.json({"error": f"report failed in ClickHouse: {e}"}, status=500)
    return web.json(report.to_json())
