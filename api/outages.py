"""A database or Redis outage answers 503 with a clear message, never a 500.

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

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

MESSAGES = {
    "database": "The database is unavailable. Nothing was changed; retry shortly.",
    "redis": "Redis is unavailable. Nothing was changed; retry shortly.",
}


def outage_of(exc: BaseException) -> str | None:
    """'database' or 'redis' when ``exc`` means that dependency is unreachable (or, for Redis,
    refusing writes), else None."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None and isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return "database"
    redis_exc = sys.modules.get("redis.exceptions")
    if redis_exc is not None and isinstance(
        exc,
        redis_exc.ConnectionError
        | redis_exc.TimeoutError
        # Reachable but refusing writes: out of memory, a read-only replica, a failover under way.
        | redis_exc.OutOfMemoryError
        | redis_exc.ReadOnlyError
        | redis_exc.ClusterDownError,
    ):
        return "redis"
    return None


class DependencyOutages:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
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
