"""The queue page (seed 002's stats) and the analytics page (seed 003's summary), for the signed-in tenant."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from jobs import lazy
from jobs.clock import utcnow
from jobs.reports import BUCKETS
from web.charts import percentile_chart, throughput_chart
from web.rendering import PageRoute, page
from web.session import CurrentSession

router = APIRouter(route_class=PageRoute, include_in_schema=False)

RANGES = (1, 7, 30, 90)


@router.get("/queue")
def queue_page(request: Request, session: CurrentSession) -> Response:
    """Counts per status per queue, workers and what they run, the oldest wait, and health with reasons."""
    with lazy.open_session() as db:  # a sync route: FastAPI runs it in its thread pool
        report = lazy.queue_stats(db, lazy.get_redis(), tenant=session.tenant, include_rq=session.is_admin)
    return page(request, "queue.html", {"report": report, "buckets": BUCKETS})


@router.get("/analytics")
def analytics_page(
    request: Request,
    session: CurrentSession,
    days: Annotated[int, Query(ge=1, le=366)] = 7,
    queue: Annotated[str | None, Query(max_length=64)] = None,
    task: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    """Success and retry rates, throughput per day, run and wait percentiles, top errors."""
    end = utcnow()
    window = lazy.Window(
        start=end - timedelta(days=days),
        end=end,
        tenant=session.tenant,
        queue=queue or None,
        task=task or None,
    )
    with lazy.open_session() as db:
        report = lazy.summary(db, window)
    data: dict[str, Any] = report.model_dump(by_alias=True)
    context = {
        "report": report,
        "days": days,
        "ranges": RANGES,
        "queue": queue or "",
        "task": task or "",
        "throughput": throughput_chart(data["throughput"]),
        "percentiles": percentile_chart({"run": data["totals"]["run_ms"], "wait": data["totals"]["wait_ms"]}),
    }
    return page(request, "analytics.html", context)
