"""Form bodies read strictly: a form field that is not text in its charset (UTF-8 unless the
request names another) is a 400 naming the field, as a JSON body that is not UTF-8 is.

Starlette decodes such a field as Latin-1 instead (``h\\xffi`` arrives as ``hÿi`` and is saved
so) and URL-encoded forms replace bad bytes with U+FFFD, both silently. The routes that take
forms use ``StrictFormRoute``, whose request parses them with the parsers below.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import aclosing
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from serving.schemas import lone_surrogate


def _text(data: bytes, charset: str, field: str) -> None:
    """Refuse ``data`` unless it decodes strictly in ``charset`` to Unicode text."""
    try:
        text = data.decode(charset)
    except (UnicodeDecodeError, LookupError):
        text = None
    if text is None or lone_surrogate(text):
        raise MultiPartException(
            f"form field {field[:40]!r} is not valid {charset} text: send text as UTF-8"
        )


class _StrictMultiPartParser(MultiPartParser):
    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            _text(bytes(part.data), self._charset or "utf-8", part.field_name)
        super().on_part_end()


def _unquoted(data: bytearray) -> bytes:
    return unquote_to_bytes(bytes(data).replace(b"+", b" "))


class _StrictFormParser(FormParser):
    def on_field_end(self) -> None:
        name = _unquoted(self._field_name)
        shown = name.decode("utf-8", "replace")
        _text(name, "utf-8", shown)
        _text(_unquoted(self._field_value), "utf-8", shown)
        super().on_field_end()


class StrictFormRequest(Request):
    """A request whose ``form()`` uses the strict parsers (the rest is Starlette's own)."""

    async def _get_form(
        self,
        *,
        max_files: int | float = 1000,
        max_fields: int | float = 1000,
        max_part_size: int = 1024 * 1024,
    ) -> FormData:
        if self._form is None:
            content_type, _ = parse_options_header(self.headers.get("content-type"))
            limits: dict[str, Any] = {"max_fields": max_fields, "max_part_size": max_part_size}
            if content_type == b"multipart/form-data":
                parser: Any = _StrictMultiPartParser
                limits["max_files"] = max_files
            elif content_type == b"application/x-www-form-urlencoded":
                parser = _StrictFormParser
            else:
                self._form = FormData()
                return self._form
            try:
                async with aclosing(self.stream()) as stream:
                    self._form = await parser(self.headers, stream, **limits).parse()
            except MultiPartException as exc:
                raise HTTPException(status_code=400, detail=exc.message) from exc
        return self._form


class StrictFormRoute(APIRoute):
    """A route whose form fields must be text (see the module docstring)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictFormRequest(request.scope, request.receive))

        return strict
