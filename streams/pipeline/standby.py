"""While a worker waits for the lease as a hot standby, it still answers on its web port.

A small threaded HTTP server, closed before faust's web server takes the port: /health and /status are its
own (orchestrators and operators see a live standby, in the staged topology with its credit partitions),
every other path is passed to the active worker (its advertised URL in Redis), so any worker answers the API.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from streams.api import auth

# What a waiting worker passes on to the active one, and what it does not copy back (it closes each answer).
FORWARDED_HEADERS = {"authorization", "content-type", "idempotency-key", "last-event-id", "accept"}
HOP_HEADERS = {"connection", "transfer-encoding", "keep-alive", "content-length", "server", "date"}
PROXY_TIMEOUT_S = 60.0


class StandbyStatus:
    """What a waiting worker reports: its role, who holds the lease, and that it owns nothing."""

    def __init__(
        self,
        owner: str,
        token_key: str,
        credit_redis_url: str | None = None,
        leader_url: Callable[[], str | None] | None = None,
    ) -> None:
        self.owner = owner
        self.token_key = token_key
        self.holder: str | None = None
        self.credit_redis_url = credit_redis_url
        self.leader_url = leader_url

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
                self._forward("GET")

        def do_POST(self) -> None:
            self._forward("POST")

        def _forward(self, method: str) -> None:
            """Any other path: the active worker's answer, streamed (SSE feeds too), so every worker serves the API."""
            base = status.leader_url() if status.leader_url is not None else None
            if not base:
                self._send(503, {"error": "no worker holds the lease yet; retry in a few seconds"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else None
            headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED_HEADERS}
            req = urllib.request.Request(base + self.path, data=body, method=method, headers=headers)
            try:
                resp = urllib.request.urlopen(req, timeout=PROXY_TIMEOUT_S)
            except urllib.error.HTTPError as e:
                resp = e
            except OSError as e:
                self._send(502, {"error": f"the active worker at {base} did not answer ({e}); retry"})
                return
            with resp:
                self.send_response(resp.status)
                for k, v in resp.headers.items():
                    if k.lower() not in HOP_HEADERS:
                        self.send_header(k, v)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    while chunk := resp.read1(65536):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except OSError:
                    return

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
