"""The application factory. Nothing expensive happens here or in a lifespan:
Mangum runs the lifespan on every Lambda invocation, so engines and clients
are created lazily on first use, and creating the app imports no database or
Redis client at all (tests/test_cold_start.py holds us to it): a Lambda cold
start is mostly import time."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from api.error_responses import conveyor_error, document_error_shapes, invalid_request
from api.lambda_limits import under_lambda
from api.limits import BodySizeLimit, JsonNestingLimit, NulInQuery
from api.outages import DependencyOutages
from api.routes import (
    api_docs,
    batches,
    bulk,
    control,
    health,
    history,
    insights,
    jobs,
    journal,
    limits,
    live,
    logs,
    metrics,
    queues,
    webhooks,
)
from api.snapshot_fast_path import SnapshotFastPath
from jobs.access.redaction import install_log_redaction
from jobs.errors import ConveyorError
from jobs.settings import get_settings
from web import mount_web
from web.live_source import LiveSource

log = logging.getLogger(__name__)


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
    # Only what was used: importing these here would load Redis's client for nothing.
    hub = sys.modules.get("api.live_hub")
    if hub is not None:
        await hub.close_hub()
    pipelined = sys.modules.get("jobs.state.pipelined_redis")
    if pipelined is not None:
        pipelined.close_pipelined_redis()


async def _open_page_feed(job_id: str, tenant: str | None, key_id: str) -> Any:
    from api.live_feed import JobFeed  # loads Redis's asyncio client: only when a page streams

    return await JobFeed.open(job_id, tenant, key_id=key_id)


def _hold_stream(key_id: str) -> Callable[[], None]:
    from api.stream_limits import stream_slots

    return stream_slots.acquire(key_id).release


def page_feeds() -> LiveSource:
    """What the pages' streams use: this process's snapshot hub, and whether streams are served."""
    return LiveSource(
        open_feed=_open_page_feed,
        streams_served=lambda scope: not under_lambda(scope),
        hold_stream=_hold_stream,
    )


def create_app() -> FastAPI:
    from api.json_headers import JsonResponseHeaders

    settings = get_settings()
    install_log_redaction()  # every log record this process writes is redacted
    app = FastAPI(
        title="Conveyor",
        version="0.1.0",
        description="Background jobs with live progress: submit, watch, steer and review jobs.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load from a CDN: ours serve vendored assets (api/routes/api_docs.py)
        redoc_url=None,
    )
    app.add_middleware(SnapshotFastPath)  # first, so innermost: see its docstring
    app.add_exception_handler(ConveyorError, conveyor_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    generate_schema = app.openapi
    app.openapi = lambda: document_error_shapes(generate_schema())  # type: ignore[method-assign]
    app.include_router(health.router)
    app.include_router(api_docs.router)
    app.include_router(jobs.router)
    app.include_router(history.router)
    app.include_router(insights.router)
    app.include_router(metrics.router)
    app.include_router(journal.router)
    app.include_router(bulk.router)  # before control: /jobs/bulk/cancel is not a job's cancel
    app.include_router(control.router)
    app.include_router(live.router)
    app.include_router(limits.router)
    app.include_router(logs.router)
    app.include_router(webhooks.router)
    app.include_router(queues.router)
    app.include_router(batches.router)
    if settings.compat_endpoints:
        from api import compat

        app.include_router(compat.router)
    mount_web(app, live=page_feeds())  # the HTMX pages and /static
    hide_access_tokens_in_access_log()
    app.add_middleware(NulInQuery)
    app.add_middleware(JsonNestingLimit, max_depth=settings.max_json_depth)  # inside: bodies are bounded
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        larger={
            "/api/v1/batches": settings.batch_max_body_bytes,
            "/batches/new": settings.batch_max_body_bytes,
        },
    )
    app.add_middleware(JsonResponseHeaders)  # job data: never cached, never sniffed
    app.add_middleware(DependencyOutages)  # last, so outermost: a 503 for an outage anywhere below
    return app
