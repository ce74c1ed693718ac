"""Service exceptions and the one place that maps every failure to an HTTP status.

Every error body has the same shape, ``{"error": code, "message": text, "type": category}``, so
clients (and the UIs) can show ``message`` without knowing which layer failed.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.audio_io import AudioInputError
from engine.errors import RequestError
from engine.model.checkpoint import CheckpointError

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A failure with a known HTTP status; subclasses set the status and codes."""

    status_code = 400
    error = "bad_request"
    type = "invalid_request_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(ServiceError):
    status_code = 422
    error = "invalid_input"


class Unauthorized(ServiceError):
    status_code = 401
    error = "unauthorized"
    type = "authentication_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ForeignOrigin(ServiceError):
    """A web page from another origin, on a server without API_KEY (a browser would otherwise
    let any page use it)."""

    status_code = 403
    error = "foreign_origin"


class NotFound(ServiceError):
    status_code = 404
    error = "not_found"


class Conflict(ServiceError):
    status_code = 409
    error = "conflict"


class BrokenVoiceFile(Conflict):
    """A saved voice's file on disk is unusable: the request is fine, the library needs fixing."""

    error = "broken_voice_file"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error = "payload_too_large"


class HeadersTooLarge(ServiceError):
    status_code = 431
    error = "headers_too_large"


class LibraryFull(ServiceError):
    """The voice library's disk is full: nothing was saved."""

    status_code = 507
    error = "voice_library_full"
    type = "server_error"


class _RetryLater(ServiceError):
    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after_s)))})


class RateLimited(_RetryLater):
    status_code = 429
    error = "rate_limited"
    type = "rate_limit_error"


class QueueFull(_RetryLater):
    status_code = 429
    error = "queue_full"
    type = "rate_limit_error"


class NotReady(_RetryLater):
    status_code = 503
    error = "not_ready"
    type = "server_error"


class Unavailable(ServiceError):
    status_code = 503
    error = "unavailable"
    type = "server_error"


class LibraryReadOnly(Unavailable):
    """The voice library cannot be written (a read-only mount, no permission): nothing changed."""

    error = "voice_library_read_only"


def error_response(
    status: int, error: str, message: str, type_: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The stable error body."""
    body = {"error": error, "message": message, "type": type_}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
    return error_response(exc.status_code, exc.error, exc.message, exc.type, exc.headers)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(
        422, "validation_error", _validation_message(exc), "invalid_request_error"
    )


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    error = "not_found" if exc.status_code == 404 else f"http_{exc.status_code}"
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error_response(exc.status_code, error, str(exc.detail), kind, dict(exc.headers or {}))


async def _audio_error(_: Request, exc: AudioInputError) -> JSONResponse:
    return error_response(422, "invalid_audio", str(exc), "invalid_request_error")


async def _checkpoint_error(_: Request, exc: CheckpointError) -> JSONResponse:
    log.error("checkpoint error: %s", exc)
    return error_response(503, "checkpoint_error", str(exc), "server_error")


def error_body(exc: Exception, where: str) -> tuple[int, dict[str, str]]:
    """Status and body for an engine failure: a ``RequestError`` is the caller's (422); anything
    else is a bug (500), logged with its traceback under a request id the body carries."""
    if isinstance(exc, RequestError):
        log.info("request rejected by the engine%s: %s", where, exc)
        return 422, {"error": "invalid_input", "message": str(exc), "type": "invalid_request_error"}
    request_id = uuid.uuid4().hex[:12]
    log.error("unhandled error%s [request %s]", where, request_id, exc_info=exc)
    return 500, {
        "error": "internal_error",
        "message": f"internal server error; the server log has the details under {request_id}",
        "type": "server_error",
        "request_id": request_id,
    }


async def _engine_error(request: Request, exc: Exception) -> JSONResponse:
    """The mapped answer; a 500 also closes the connection, as the server does after it, so a
    keep-alive client does not send its next request into a connection being torn down."""
    status, body = error_body(exc, f" in {request.method} {request.url.path}")
    headers = {"Connection": "close"} if status >= 500 else None
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping; more specific classes first (Starlette picks by MRO anyway)."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(AudioInputError, _audio_error)
    app.add_exception_handler(CheckpointError, _checkpoint_error)
    app.add_exception_handler(RequestError, _engine_error)
    app.add_exception_handler(Exception, _engine_error)
