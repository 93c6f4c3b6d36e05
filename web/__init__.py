"""The HTMX UI: server-rendered pages and the fragments that refresh them, over the same job domain.

`mount_web(app)` adds the page routes and `/static` (htmx, vendored; the CSS).
Everything here is cheap to import: SQL, Redis, RQ and Jinja2 are loaded by
the first request that needs them, not by the Lambda cold start.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from web.live_source import LiveSource

STATIC = Path(__file__).parent / "static"


class StaticAssets(StaticFiles):
    """StaticFiles whose versioned URLs (`?v=<ui version>`) may be cached for a year."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        if scope.get("query_string", b"").startswith(b"v="):
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def mount_web(app: FastAPI, *, live: LiveSource | None = None) -> None:
    """Add the pages and their static files to ``app``; with ``live``, pages that follow jobs
    get their updates pushed over one stream each (web/live_pages.py), else they poll."""
    from web import batch_pages, insight_pages, job_pages, live_pages, sign_in, submit_pages, webhook_pages

    app.state.conveyor_live = live
    app.include_router(live_pages.router)  # before job_pages: /jobs/{id}/stream is not an action

    app.include_router(sign_in.router)
    app.include_router(submit_pages.router)  # before job_pages: /jobs/new is not a job id
    app.include_router(batch_pages.router)
    app.include_router(job_pages.router)
    app.include_router(insight_pages.router)
    app.include_router(webhook_pages.router)
    app.mount("/static", StaticAssets(directory=STATIC), name="static")
