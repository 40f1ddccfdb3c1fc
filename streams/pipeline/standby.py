"""While a worker waits for the lease as a hot standby, it still answers /health and /status on its web port.

A small threaded HTTP server, closed before faust's web server takes the port: orchestrators and operators see
a live standby that owns no partitions, instead of a refused connection.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from streams.api import auth


class StandbyStatus:
    """What a waiting worker reports: its role, who holds the lease, and that it owns nothing."""

    def __init__(self, owner: str, token_key: str, credit_redis_url: str | None = None) -> None:
        self.owner = owner
        self.token_key = token_key
        self.holder: str | None = None
        self.credit_redis_url = credit_redis_url

    def body(self) -> dict[str, Any]:
        """The /status document of a standby (in the staged topology, its credit stage's partitions too)."""
        body: dict[str, Any] = {
            "role": "standby",
            "worker": self.owner,
            "lease_holder": self.holder,
            "owned": [],
            "applied": 0,
            "topology": "single",
        }
        if self.credit_redis_url is not None:
            from streams.pipeline.credit import read_status

            credit = read_status(self.credit_redis_url, self.owner)
            body |= {"topology": "staged", "role": "credit", "credit": credit}
            body["owned"] = list(credit.get("owned", [])) if credit else []  # type: ignore[call-overload]
        return body


def serve(status: StandbyStatus, host: str, port: int) -> ThreadingHTTPServer | None:
    """Start answering on host:port in a thread; None when the port is taken (the wait goes on regardless)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/health":
                self._send(200, {"ok": True, "role": "standby"})
            elif path == "/status":
                header = self.headers.get("Authorization", "")
                token = header[7:] if header.startswith("Bearer ") else None
                try:
                    p = auth.verify(status.token_key, token)
                except auth.AuthError as e:
                    self._send(401, {"error": str(e)})
                    return
                if p.role != auth.OPERATOR:
                    self._send(403, {"error": "operators only"})
                    return
                self._send(200, status.body())
            else:
                self._send(503, {"error": "this worker is a standby; ask the active worker"})

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: a probe every second is not news."""

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError:
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="standby-http", daemon=True).start()
    return server
