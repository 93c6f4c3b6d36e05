"""A database or Redis outage answers 503 with a clear message, never a 500.

Reads SQL can answer do not fail with Redis: `jobs.state.reads` answers them from
SQL and says so (`live_unavailable`), the route passes the answer through
`noting_outage()`, and its response carries `X-Conveyor-Live: unavailable`
(the snapshot may trail the running job; control actions and submits still
answer 503).

A pure ASGI middleware rather than exception handlers registered by class:
registering `sqlalchemy.exc.OperationalError` would import SQLAlchemy when the
app is created, and the Lambda cold start must not pay for that. An outage
exception can only come from a library that is already loaded, so the classes
are looked up in `sys.modules` when one happens.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from typing import Protocol, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.state.reads import redis_unreachable

log = logging.getLogger(__name__)

MESSAGES = {
    "database": "The database is unavailable. Nothing was changed; retry shortly.",
    "redis": "Redis is unavailable. Nothing was changed; retry shortly.",
}


LIVE_HEADER = (b"x-conveyor-live", b"unavailable")

# One mutable mark per request: a list, so that a route running in a thread pool (a copy of the
# context) still marks the request's own holder.
_live_marks: ContextVar[list[bool] | None] = ContextVar("conveyor_live_marks", default=None)


def live_state_unavailable() -> None:
    """Note that this response was answered from SQL because Redis could not be reached."""
    marks = _live_marks.get()
    if marks is not None:
        marks.append(True)
    log.warning("Redis unavailable: answering from SQL")


class FromSql(Protocol):
    @property
    def live_unavailable(self) -> bool: ...


Read = TypeVar("Read", bound=FromSql)


def noting_outage(read: Read) -> Read:
    """``read`` (one of `jobs.state.reads`' answers), its response marked when SQL answered for Redis."""
    if read.live_unavailable:
        live_state_unavailable()
    return read


def outage_of(exc: BaseException) -> str | None:
    """'database' or 'redis' when ``exc`` means that dependency is unreachable (or, for Redis,
    refusing writes), else None."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None and isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return "database"
    return "redis" if redis_unreachable(exc) else None


class DependencyOutages:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        marks: list[bool] = []
        _live_marks.set(marks)

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if marks:
                    message = {**message, "headers": [*message.get("headers", []), LIVE_HEADER]}
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            kind = outage_of(exc)
            if kind is None or started:
                raise
            log.error("%s unavailable: %s", kind, exc)
            body = json.dumps({"detail": MESSAGES[kind]}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
