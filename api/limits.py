"""Refuse request bodies over the configured size (413), JSON nested too deep (422) and NUL in a
query (422), before any route reads them."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.storable import nesting_exceeds

_NO_BODY = ("GET", "HEAD", "OPTIONS", "DELETE")


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body a middleware already read, then the rest."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class BodySizeLimit:
    """Pure ASGI middleware: checks Content-Length, and counts chunked bodies as they arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int, larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = larger or {}  # exact paths with a cap of their own (a batch is many bodies in one)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _NO_BODY:
            await self.app(scope, receive, send)
            return
        max_bytes = self.larger.get(scope["path"], self.max_bytes)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await self._refuse(send, max_bytes)
                return
            await self.app(scope, receive, send)
            return

        # No Content-Length (chunked): buffer up to the limit, then replay the body.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                await self._refuse(send, max_bytes)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replaying(b"".join(chunks), receive), send)

    async def _refuse(self, send: Send, max_bytes: int) -> None:
        await _refuse(send, 413, f"Request body too large: the limit is {max_bytes} bytes.")


class JsonNestingLimit:
    """Pure ASGI middleware: a JSON body nested deeper than ``max_depth`` is a 422, found by a linear
    scan of the raw bytes, so no parser, validator or redactor ever recurses that deep.

    Sits inside BodySizeLimit: the body it buffers is already bounded.
    """

    def __init__(self, app: ASGIApp, max_depth: int) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _NO_BODY or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if nesting_exceeds(body, self.max_depth):
            detail = (
                f"The JSON body nests arrays or objects more than {self.max_depth} levels deep; "
                f"that is the limit (CONVEYOR_MAX_JSON_DEPTH). Flatten the data, or send it as a string."
            )
            await _refuse(send, 422, detail)
            return
        await self.app(scope, replaying(body, receive), send)


def _is_json(scope: Scope) -> bool:
    """FastAPI parses a body as JSON when its type says so, and also when it names no type."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return b"json" in value.lower()
    return True


class NulInQuery:
    """Pure ASGI middleware: a NUL character (`%00`) in a query parameter is a 422 naming it.

    PostgreSQL text cannot hold NUL, so a filter such as `?task=%00` would reach
    the database only to fail there (a 500); SQLite would answer. Refusing it
    here keeps one behaviour on both, for the API and the pages alike.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query: bytes = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if b"%00" in query or b"\x00" in query:
            pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            names = [name for name, value in pairs if "\x00" in name + value]
            if names:
                shown = _printable(names[0])
                await _refuse(
                    send,
                    422,
                    f"The query parameter `{shown}` contains a NUL character (%00), which no "
                    "job, task, queue or tag can hold; remove it.",
                )
                return
        await self.app(scope, receive, send)


def _printable(name: str) -> str:
    return name.replace("\x00", "%00")[:64]
