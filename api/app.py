"""The application factory. Nothing expensive happens here or in a lifespan:
Mangum runs the lifespan on every Lambda invocation, so engines and clients
are created lazily on first use."""

from __future__ import annotations

import logging

import redis.exceptions
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.limits import BodySizeLimit
from api.routes import control, health, history, insights, jobs, metrics
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


def create_app() -> FastAPI:
    settings = get_settings()
    install_log_redaction()  # every log record this process writes is redacted
    app = FastAPI(
        title="Conveyor",
        version="0.1.0",
        description="Background jobs with live progress: submit, watch, steer and review jobs.",
    )
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
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
