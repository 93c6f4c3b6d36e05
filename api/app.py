"""The application factory. Nothing expensive happens here or in a lifespan:
Mangum runs the lifespan on every Lambda invocation, so engines and clients
are created lazily on first use."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.exceptions
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.limits import BodySizeLimit
from api.live_hub import close_hub
from api.pipelined_redis import close_pipelined_redis
from api.routes import control, health, history, insights, jobs, live, metrics
from api.snapshot_fast_path import SnapshotFastPath
from jobs.errors import ConveyorError
from jobs.redaction import install_log_redaction
from jobs.settings import get_settings

log = logging.getLogger(__name__)


async def conveyor_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConveyorError)
    return JSONResponse({"detail": exc.message, **exc.extra}, status_code=exc.status_code)


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.error("database unavailable: %s", exc)
    return JSONResponse(
        {"detail": "The database is unavailable. Nothing was changed; retry shortly."}, status_code=503
    )


async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.error("redis unavailable: %s", exc)
    return JSONResponse(
        {"detail": "Redis is unavailable. Nothing was changed; retry shortly."}, status_code=503
    )


class HideAccessTokens(logging.Filter):
    """Mask `access_token=` query values (keys sent by EventSource/WebSocket clients) in access logs."""

    pattern = re.compile(r"(access_token=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any("access_token=" in str(a) for a in record.args):
            record.args = tuple(
                self.pattern.sub(r"\1[REDACTED]", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def hide_access_tokens_in_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, HideAccessTokens) for f in access.filters):
        access.addFilter(HideAccessTokens())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Nothing at startup (clients are created lazily); at shutdown, close what the loop holds."""
    yield
    await close_hub()
    close_pipelined_redis()


def create_app() -> FastAPI:
    settings = get_settings()
    install_log_redaction()  # every log record this process writes is redacted
    app = FastAPI(
        title="Conveyor",
        version="0.1.0",
        description="Background jobs with live progress: submit, watch, steer and review jobs.",
        lifespan=lifespan,
    )
    app.add_middleware(SnapshotFastPath)  # first, so innermost: see its docstring
    app.add_exception_handler(ConveyorError, conveyor_error)
    for db_error in (sa.exc.OperationalError, sa.exc.InterfaceError):
        app.add_exception_handler(db_error, database_unavailable)
    for redis_error in (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        app.add_exception_handler(redis_error, redis_unavailable)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(history.router)
    app.include_router(insights.router)
    app.include_router(metrics.router)
    app.include_router(control.router)
    app.include_router(live.router)
    if settings.compat_endpoints:
        from api import compat

        app.include_router(compat.router)
    hide_access_tokens_in_access_log()
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
