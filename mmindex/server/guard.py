"""What the search server checks and adds on every request, below the web framework so that no route
can forget it: the Host header, a token, security headers and an access log line.

- `HostCheck` answers only requests whose Host names this server (loopback names by default), so a
  page on another site cannot read the API by pointing its own name at 127.0.0.1 (DNS rebinding).
- `TokenCheck` requires a shared secret, sent as `Authorization: Bearer TOKEN`, as `?token=TOKEN`
  (which also sets a cookie, so a browser that opened the page with it keeps working) or as that
  cookie. `/healthz` stays open for liveness probes.
- `SecurityHeaders` adds `nosniff`, no framing, no referrer, and a Content-Security-Policy: for the
  page, one that allows exactly its own inline script and style (by hash) and requests to this server.
- `AccessLog` writes one line per request: client, method, path and query (the token removed; query
  images travel in the body and never appear), status, bytes sent and milliseconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Iterable
from http.cookies import SimpleCookie

from mmindex.server.limits import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
TOKEN_COOKIE = "mmindex_token"
OPEN_PATHS = ("/healthz",)
DOCS_PREFIXES = ("/docs", "/redoc", "/static-offline-docs")
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'"
)
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
ACCESS_LOG = logging.getLogger("mmindex.access")


def is_loopback(host: str) -> bool:
    return host.strip("[]").lower() in LOOPBACK_HOSTS or host.startswith("127.")


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host names a server bound to `bind_host` answers: the loopback names, the address it is
    bound to (unless a wildcard) and `extra` ("*" allows any)."""
    names = {*LOOPBACK_HOSTS, *(name.strip().lower() for name in extra if name.strip())}
    if bind_host not in ("0.0.0.0", "::", ""):
        names.add(bind_host.strip("[]").lower())
    return frozenset(names)


def host_name(header: str) -> str:
    """The name in a Host header, without its port (`[::1]:8000` -> `::1`)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _refuse(send: Send, status: int, message: str, *headers: tuple[bytes, bytes]) -> None:
    body = json.dumps({"error": message}).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*start, *headers]})
    await send({"type": "http.response.body", "body": body})


class HostCheck:
    """ASGI middleware: 421 for a request whose Host header is not one of `hosts`."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.hosts:
            name = host_name(_header(scope, b"host") or "")
            if name not in self.hosts:
                await _refuse(send, 421, f"this server does not answer for host {name!r}")
                return
        await self.app(scope, receive, send)


class TokenCheck:
    """ASGI middleware: 401 unless the request carries `token` (header, query or cookie)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        authorization = _header(scope, b"authorization") or ""
        bearer = authorization[7:].strip() if authorization.lower().startswith("bearer ") else None
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        in_query = query.get("token", [None])[-1]
        cookies = SimpleCookie(_header(scope, b"cookie") or "")
        cookie = cookies[TOKEN_COOKIE].value if TOKEN_COOKIE in cookies else None
        if not (self._matches(bearer) or self._matches(cookie) or self._matches(in_query)):
            await _refuse(send, 401, "a token is required", (b"www-authenticate", b"Bearer"))
            return
        if not self._matches(in_query):
            await self.app(scope, receive, send)
            return

        async def with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                value = f"{TOKEN_COOKIE}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict"
                message["headers"] = [*message.get("headers", []), (b"set-cookie", value.encode())]
            await send(message)

        await self.app(scope, receive, with_cookie)


def page_policy(page: str) -> str:
    """A Content-Security-Policy that lets `page` run its own inline scripts and styles, and nothing
    else: no other origin, no injected script, no framing."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'"
            for block in blocks
        )

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "img-src 'self' data: blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


class SecurityHeaders:
    """ASGI middleware: nosniff, no framing, no referrer, and a Content-Security-Policy per kind of
    response (`page_csp` for the page at /, the docs' own for /docs, none allowed for the API)."""

    def __init__(self, app: ASGIApp, page_csp: str) -> None:
        self.app = app
        self.page_csp = page_csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        policy = (
            self.page_csp if path == "/" else DOCS_POLICY if path.startswith(DOCS_PREFIXES) else API_POLICY
        )
        extra = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-security-policy", policy.encode()),
        ]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def _logged_query(query_string: bytes) -> str:
    if not query_string:
        return ""
    pairs = urllib.parse.parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    kept = [(name, "***" if name == "token" else value) for name, value in pairs]
    return "?" + urllib.parse.urlencode(kept)


class AccessLog:
    """ASGI middleware: one line per request on the `mmindex.access` logger."""

    def __init__(self, app: ASGIApp, logger: logging.Logger = ACCESS_LOG) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, sent = 500, 0

        async def counted(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            client = scope.get("client") or ("-", 0)
            self.logger.info(
                '%s "%s %s%s" %d %d B %.1f ms',
                client[0],
                scope.get("method", "-"),
                scope["path"],
                _logged_query(scope.get("query_string", b"")),
                status,
                sent,
                (time.perf_counter() - started) * 1000,
            )
