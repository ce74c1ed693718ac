"""The gate in front of every route: the client's address, the size of the headers, the page a
browser request comes from, the API key, then the body size, before any body is read.

Behind a balancer every connection comes from the balancer, so the client's address is taken
from ``X-Forwarded-For``, but only when the connection comes from a TRUSTED_PROXIES address and,
when PROXY_SECRET is set, carries it in ``X-Proxy-Secret`` (the balancer sets both headers itself;
anyone else could write any address there, and any local process can reach a loopback replica).
Without API_KEY a browser is the threat: any page it opens may send requests here, so a request
whose ``Origin`` is neither this server's own nor in CORS_ORIGINS is refused (403). A pure ASGI
middleware, because ``BaseHTTPMiddleware`` buffers the body it should be refusing: a
request without the key, or declaring a body over its cap, is answered from its headers alone; a
body of unknown length (chunked) is counted as the route reads it and refused once it passes the
cap, so the server never holds (or spools to its temp dir) more than the cap plus one read.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

from fastapi import FastAPI
from pydantic import IPvAnyNetwork
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import (
    ForeignOrigin,
    HeadersTooLarge,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    error_response,
)
from serving.services.ratelimit import AuthFailureLimiter
from serving.settings import Settings

log = logging.getLogger(__name__)

MIB = 2**20
# Multipart bodies carry form fields beside the file: boundaries and part headers, and the text and
# transcript (up to MAX_TEXT_CHARS characters each, at most 4 UTF-8 bytes per character).
FORM_OVERHEAD_BYTES = 64 * 1024
FORM_TEXT_FIELDS = 2
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
PROXY_SECRET_HEADER = "x-proxy-secret"


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a body passes its cap; the guard answers 413 instead."""


def bearer_token(authorization: str | None) -> str:
    """The token of ``Authorization: Bearer <token>`` ('' when absent or another scheme)."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def key_matches(token: str, keys: frozenset[str]) -> bool:
    """Constant-time comparison against every key (no early exit that times which one is close)."""
    given = token.encode()
    results = [secrets.compare_digest(given, key.encode()) for key in keys]
    return any(results)


def body_limits(settings: Settings) -> tuple[int, int]:
    """(multipart cap, cap for every other body) in bytes."""
    text_bytes = FORM_TEXT_FIELDS * 4 * settings.max_text_chars
    form = settings.max_upload_bytes + FORM_OVERHEAD_BYTES + text_bytes
    return form, int(settings.max_body_mb * MIB)


def open_paths(app: FastAPI, settings: Settings) -> frozenset[str]:
    """Paths served without the key: ``/health``, and the API docs when PUBLIC_DOCS is set."""
    docs = (app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url, app.openapi_url)
    public = {path for path in docs if path} if settings.public_docs else set()
    return frozenset({"/health", *public})


def check_exposure(settings: Settings) -> str | None:
    """Why serving on HOST would expose an open server (None when it is safe to start).

    Without API_KEY anyone who reaches the port can use the GPU and the voice library, so a
    non-loopback HOST needs a key or an explicit ALLOW_NO_AUTH=true.
    """
    if settings.api_keys or settings.allow_no_auth or _is_loopback(settings.host):
        return None
    return (
        f"refusing to serve on HOST={settings.host or '(all interfaces)'} without API_KEY: "
        "set API_KEY, bind HOST=127.0.0.1, or set ALLOW_NO_AUTH=true to run an open server"
    )


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def head_bytes(target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The size of a request's target and headers as sent (``name: value\r\n`` each)."""
    return len(target) + sum(len(name) + len(value) + 4 for name, value in headers)


def proxy_warning(settings: Settings) -> str | None:
    """Why X-Forwarded-For can be forged here (None when it cannot)."""
    if settings.trusted_proxies and not settings.proxy_secret_value:
        return (
            "TRUSTED_PROXIES is set without PROXY_SECRET: any process that can connect from "
            "those addresses can name any client address in X-Forwarded-For and escape the "
            "wrong-key throttle; set PROXY_SECRET here and have the balancer send it"
        )
    return None


def _from_balancer(scope: Scope, peer: str, trusted: list[IPvAnyNetwork], secret: str) -> bool:
    """Whether the connection is the balancer's: from a TRUSTED_PROXIES address (when any is
    set) and carrying PROXY_SECRET (when one is set)."""
    if trusted and not _within(peer, trusted):
        return False
    if not secret:
        return bool(trusted)
    sent = Headers(scope=scope).get(PROXY_SECRET_HEADER, "")
    return secrets.compare_digest(sent.encode(), secret.encode())


def client_address(scope: Scope, trusted: list[IPvAnyNetwork], secret: str = "") -> str:
    """The client's address: the peer's, or, when the peer is the balancer (see
    ``_from_balancer``), the last address in ``X-Forwarded-For`` that is not itself a trusted
    proxy (the one the balancer saw)."""
    peer = scope["client"][0] if scope.get("client") else "unknown"
    if not _from_balancer(scope, peer, trusted, secret):
        return peer
    forwarded = ",".join(Headers(scope=scope).getlist("x-forwarded-for")).split(",")
    for entry in reversed([entry.strip() for entry in forwarded if entry.strip()]):
        try:
            address = ipaddress.ip_address(entry)
        except ValueError:
            return peer  # not written by a balancer: the connection's own address stands
        if not any(address in network for network in trusted):
            return str(address)
    return peer


def _within(host: str, networks: list[IPvAnyNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


class _CountedReceive:
    """``receive`` that counts body bytes and raises ``BodyTooLarge`` past ``limit``."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.received = 0
        self.exceeded = False

    async def __call__(self) -> Message:
        if self.exceeded:
            return {"type": "http.disconnect"}
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                raise BodyTooLarge(f"body passed {self.limit} bytes")
        return message


class RequestGuard:
    """Find the client's address, authenticate (throttling wrong keys per address and key) and
    cap the body, ahead of the routes."""

    def __init__(self, app: ASGIApp, settings: Settings, open_paths: frozenset[str]) -> None:
        self.app = app
        self.keys = settings.api_keys
        self.open_paths = open_paths
        self.trusted = settings.trusted_proxies
        self.secret = settings.proxy_secret_value
        self.origins = frozenset(settings.cors_origins)
        self.max_head = settings.max_header_bytes
        self.failures = AuthFailureLimiter(settings.auth_failures_per_minute)
        self.form_limit, self.body_limit = body_limits(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.trusted or self.secret:  # what the routes, the rate limit and the logs see
            scope = {**scope, "client": (client_address(scope, self.trusted, self.secret), 0)}
        if scope["type"] == "websocket":
            await self._guard_websocket(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            self._admit(scope, headers)
            limit, setting = self._limit(headers)
        except ServiceError as exc:
            await _reject(exc, scope, receive, send)
            return
        await self._run_capped(scope, receive, send, limit, setting)

    async def _guard_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The same checks before the handshake; a refusal is the HTTP answer a request would
        get (401, 403, 429, 431), or a closed handshake (HTTP 403) where the server cannot send
        one."""
        try:
            self._admit(scope, Headers(scope=scope))
        except ServiceError as exc:
            await receive()  # websocket.connect
            if "websocket.http.response" in scope.get("extensions", {}):
                await _reject(exc, scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})
            return
        await self.app(scope, receive, send)

    def _admit(self, scope: Scope, headers: Headers) -> None:
        """Everything decided from the headers alone: their size, the page, the key."""
        target = scope.get("raw_path", b"") + b"?" + scope.get("query_string", b"")
        if head_bytes(target, scope["headers"]) > self.max_head:
            raise HeadersTooLarge(
                f"the request's headers exceed {self.max_head} bytes (MAX_HEADER_KB)"
            )
        self._check_origin(headers)
        self._authenticate(scope, headers)

    def _check_origin(self, headers: Headers) -> None:
        """Without a key, only pages of this server's own origin or of CORS_ORIGINS may call it;
        requests without ``Origin`` (not sent by a browser page) are not concerned."""
        origin = headers.get("origin")
        if self.keys or origin is None or "*" in self.origins or origin in self.origins:
            return
        host = urlsplit(origin).netloc.lower()
        if host and host == headers.get("host", "").lower():
            return
        raise ForeignOrigin(
            f"requests from the web page origin {origin[:100]!r} are refused: this server has "
            "no API_KEY, so only its own pages and CORS_ORIGINS may call it"
        )

    def _authenticate(self, scope: Scope, headers: Headers) -> None:
        if not self.keys or _route_path(scope) in self.open_paths:
            return
        token = bearer_token(headers.get("authorization"))
        if not token:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <API_KEY>'")
        address = scope["client"][0] if scope.get("client") else "unknown"
        self.failures.check(address, token)
        if not key_matches(token, self.keys):
            log.warning("wrong API key from %s for %s", address, scope["path"])
            self.failures.record(address, token)
            raise Unauthorized("wrong API key: send 'Authorization: Bearer <API_KEY>'")
        self.failures.worked(address, token)

    def _limit(self, headers: Headers) -> tuple[int, str]:
        """This content type's body cap and its setting; a larger declared length is refused."""
        form = headers.get("content-type", "").lower().startswith("multipart/form-data")
        limit, setting = (
            (self.form_limit, "MAX_UPLOAD_MB") if form else (self.body_limit, "MAX_BODY_MB")
        )
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit, setting)
        return limit, setting

    async def _run_capped(
        self, scope: Scope, receive: Receive, send: Send, limit: int, setting: str
    ) -> None:
        counted = _CountedReceive(receive, limit)
        started = False

        async def forward(message: Message) -> None:
            nonlocal started
            if counted.exceeded and not started:
                return  # whatever the route made of the cut-off body, the answer is 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, forward)
        except Exception:
            if not counted.exceeded or started:
                raise
        if counted.exceeded and not started:
            await _reject(_too_large(limit, setting), scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the routes see (without a ROOT_PATH prefix a proxy may add)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _too_large(limit: int, setting: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds {limit} bytes ({setting})")


async def _reject(exc: ServiceError, scope: Scope, receive: Receive, send: Send) -> None:
    """The standard error body; the connection closes so an unread body is not drained."""
    headers = {**exc.headers, "Connection": "close"}
    response = error_response(exc.status_code, exc.error, exc.message, exc.type, headers)
    await response(scope, receive, send)
