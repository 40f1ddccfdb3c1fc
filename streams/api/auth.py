"""Signed bearer tokens: HMAC-SHA256 over (role, subject, expiry) with FENXIAO_TOKEN_KEY; no server state."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import time
from dataclasses import dataclass

from streams import names

OPERATOR = "operator"
DISTRIBUTOR = "distributor"
DEV_TOKEN_KEY = "dev-only-change-me"  # the public default of FENXIAO_TOKEN_KEY: anyone can mint tokens with it


class AuthError(Exception):
    """A token that is missing, malformed, forged or expired."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token speaks for."""

    role: str
    subject: str | None
    expires_at: int

    def may_read(self, distributor_id: str) -> bool:
        """Operators read everything; a distributor only their own data."""
        return self.role == OPERATOR or (self.role == DISTRIBUTOR and self.subject == distributor_id)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(key: str, role: str, subject: str | None, ttl_seconds: int, now: float | None = None) -> str:
    """A token for an operator (subject None) or a distributor (subject = user_id)."""
    if role not in (OPERATOR, DISTRIBUTOR):
        raise ValueError(f"unknown role {role!r}")
    if role == DISTRIBUTOR and not subject:
        raise ValueError("a distributor token needs the distributor's user_id")
    exp = int((now if now is not None else time.time()) + ttl_seconds)
    body = _b64(json.dumps({"r": role, "s": subject, "e": exp}, separators=(",", ":")).encode())
    sig = _b64(hmac.new(key.encode(), body.encode(), hashlib.sha256).digest())
    return f"fx1.{body}.{sig}"


def verify(key: str, token: str | None, now: float | None = None) -> Principal:
    """The principal of a valid token; AuthError otherwise (the message never echoes the token)."""
    if not token:
        raise AuthError("missing token: send Authorization: Bearer <token> (issue one with `fenxiao token`)")
    if not token.isascii():
        raise AuthError("malformed token")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != "fx1":
        raise AuthError("malformed token")
    body, sig = parts[1], parts[2]
    want = _b64(hmac.new(key.encode(), body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(want, sig):
        raise AuthError("invalid token signature")
    try:
        claims = json.loads(_unb64(body))
        role, subject, exp = claims["r"], claims["s"], int(claims["e"])
    except (ValueError, KeyError, TypeError) as e:
        raise AuthError("malformed token") from e
    if exp <= (now if now is not None else time.time()):
        raise AuthError("token expired")
    return Principal(role, subject, exp)


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name (or "" = every interface) may resolve to anything


def exposure_problem(web_host: str, key: str) -> str | None:
    """Why serving the API on web_host with this token key would let anyone mint an operator token, or None."""
    if key != DEV_TOKEN_KEY or is_loopback(web_host):
        return None
    return (
        f"{names.ENV_WEB_HOST}={web_host!r} serves the API beyond this machine, but {names.ENV_TOKEN_KEY} is the "
        f"public development key {DEV_TOKEN_KEY!r}: anyone could mint an operator token and move money. "
        f"Set {names.ENV_TOKEN_KEY} to a long random secret (e.g. `openssl rand -hex 32`), "
        f"or serve on 127.0.0.1 ({names.ENV_WEB_HOST}=127.0.0.1)."
    )
