"""HTTP views served by the worker: health and the sequencer's status; the distributor API is streams.api.routes."""

from __future__ import annotations

import asyncio
from typing import Any

from streams.api import routes as api
from streams.pipeline import runtime
from streams.pipeline.app import app
from streams.sinks import sink_process, webhooks


@app.page("/health")
async def health(web: Any, request: Any) -> Any:
    """Liveness for orchestrators; carries nothing private."""
    return web.json({"ok": True})


@app.page("/status")
async def status(web: Any, request: Any) -> Any:
    """What the sequencer holds and has applied, and its sink child's lag (operators only: business data)."""
    try:
        api.require(request, None)
    except api.ApiError as e:
        return api.error_response(web, e)
    rt = runtime.get()
    hooks = None if rt.program.webhooks is None else await webhooks.read_status(api.redis())
    body: dict[str, Any] = {
        **rt.sequencer.status(),
        **sink_process.worker_status(),
        "webhooks": hooks,
        "topology": "single",
    }
    if rt.settings.topology == "staged":
        from streams.pipeline.credit import read_status

        credit = await asyncio.to_thread(read_status, rt.settings.redis_url.get_secret_value(), rt.store.owner)
        body |= {"topology": "staged", "role": "attribution+credit", "credit": credit}
        body["owned"] = [*body["owned"], *list((credit or {}).get("owned") or [])]  # type: ignore[call-overload]
    return web.json(body)
