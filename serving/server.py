"""The HTTP server under the app: uvicorn, with limits on what may arrive before a request exists.

uvicorn's httptools protocol reads a request's headers for as long as the client sends them, with
no size cap and no deadline, and accepts every connection: 200 clients each sending a
never-ending 4 MB header held 824 MB, and idle connections stayed open for good. The protocol here
answers 431 as soon as the request line and headers pass MAX_HEADER_KB (ended or not), 408 when
they have not all arrived HEADER_TIMEOUT_S after their first byte (a connection that sends nothing
at all is closed then), and 503 to a connection beyond MAX_CONNECTIONS, each with the service's
error body. It then stops sending and discards what still arrives for up to ``LINGER_S`` before
closing: closing a socket with unread data resets it, and the reset would destroy the answer
before a client still sending its headers reads it. ``python -m serving`` runs it; ``uvicorn
serving.app:app`` run by hand has none of it (the guard still refuses complete headers over the
cap).
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import math
import time
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from serving.guard import head_bytes
from serving.settings import Settings

log = logging.getLogger(__name__)

LINGER_S = 2.0


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request whose headers are over the cap."""


class _RefusalLog:
    """One WARNING per kind of refusal per minute, with the count since the last: a flood of
    refusals (the point of an attack) must not flood the log."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self.counts: dict[str, int] = {}
        self.last: dict[str, float] = {}

    def note(self, kind: str, message: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = time.monotonic()
        if now - self.last.get(kind, -math.inf) >= self.every_s:
            log.warning("%s (%d such refusals since the last line)", message, self.counts.pop(kind))
            self.last[kind] = now


_refusals = _RefusalLog()


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header size cap, a header deadline and a connection
    cap; ``limited_http_protocol`` sets them from the settings."""

    max_head = 32 * 1024
    head_timeout_s = 10.0
    max_connections = 512

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request's line and headers (or waiting for one)
        self._head_seen = 0  # bytes received since that request's head began
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_refused = False
        self._draining = False  # refused: what arrives is discarded until the close

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(
                503,
                "too_many_connections",
                f"the server holds {self.max_connections} connections (MAX_CONNECTIONS); retry",
                "server_error",
            )
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the head's bytes counted and a refusal from a callback answered."""
        if self._draining or self.transport.is_closing():
            return
        if self._in_head:
            self._head_seen += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._head_refused:
                self._refuse_head()
            else:
                message = "Invalid HTTP request received."
                self.logger.warning(message)
                self.send_400_response(message)
            return
        if self._in_head and self._head_seen > self.max_head:
            self._refuse_head()  # still no end of the headers, and already over the cap
        elif self._in_head and self._head_seen and self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        if head_bytes(self.url, self.headers) > self.max_head:
            self._head_refused = True
            raise _HeadTooLarge
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_seen = True, 0

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._responding():
            self._arm_head_timer()  # a pipelined head waits while the previous answer goes out
        elif not self._head_seen:
            self.transport.close()  # nothing sent at all: nothing to answer
        else:
            self._refuse(
                408,
                "header_timeout",
                f"the request's headers did not arrive within {self.head_timeout_s:g} s "
                "(HEADER_TIMEOUT_S)",
                "invalid_request_error",
            )

    def _refuse_head(self) -> None:
        self._refuse(
            431,
            "headers_too_large",
            f"the request's headers exceed {self.max_head} bytes (MAX_HEADER_KB)",
            "invalid_request_error",
        )

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse(self, status: int, error: str, message: str, kind: str) -> None:
        """The error body with ``Connection: close``, then the end of what this side sends, and
        a close once the client has finished or ``LINGER_S`` later; only a close while an answer
        to an earlier request is still going out (a second answer would corrupt it)."""
        _refusals.note(error, f"refused a connection from {self.client}: {message}")
        self._cancel_head_timer()
        if self._responding() or not self.transport.can_write_eof():
            self.transport.close()
            return
        body = json.dumps({"error": error, "message": message, "type": kind}).encode()
        phrase = http.HTTPStatus(status).phrase
        head = (
            f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.write_eof()
        self._draining = True
        self.loop.call_later(LINGER_S, self.transport.close)


def limited_http_protocol(settings: Settings) -> type[LimitedHttpProtocol]:
    """``LimitedHttpProtocol`` with MAX_HEADER_KB, HEADER_TIMEOUT_S and MAX_CONNECTIONS."""
    limits = {
        "max_head": settings.max_header_bytes,
        "head_timeout_s": settings.header_timeout_s,
        "max_connections": settings.max_connections,
    }
    return type("ServiceHttpProtocol", (LimitedHttpProtocol,), limits)


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, except that a handshake the app answered with an HTTP
    response (ASGI's ``websocket.http.response``: how the guard refuses one with 401, 403 or 429)
    counts as finished: uvicorn otherwise logs every such refusal as an ERROR ("ASGI callable
    returned without completing handshake"), which lets anyone fill the error log."""

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True
