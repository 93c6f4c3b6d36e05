"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


def check_dependencies() -> dict[str, Any]:
    """Each dependency's state: 'ok' or 'unavailable: <error type>'."""
    import sqlalchemy as sa

    from jobs.history.db import get_engine
    from jobs.state.redis_conn import get_redis

    checks: dict[str, Any] = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    return checks


@router.get("/readyz")
async def readyz() -> JSONResponse:
    """Ready to serve: the database and Redis answer. 503 names what does not."""
    checks = await run_in_threadpool(check_dependencies)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", **checks}, status_code=200 if ready else 503
    )
