"""The queue page (seed 002's stats) and the analytics page (seed 003's summary), for the signed-in tenant."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from jobs import lazy
from jobs.clock import utcnow
from jobs.errors import Forbidden, InvalidRequest
from jobs.reporting.reports import BUCKETS
from jobs.status import JobStatus
from web.charts import percentile_chart, throughput_chart
from web.rendering import PageRoute, page
from web.session import ChangingSession, CurrentSession, WebSession

router = APIRouter(route_class=PageRoute, include_in_schema=False)

RANGES = (1, 7, 30, 90)


@router.get("/queue")
def queue_page(request: Request, session: CurrentSession) -> Response:
    """Counts per status per queue, workers and what they run, the oldest wait, and health with reasons."""
    with lazy.open_session() as db:  # a sync route: FastAPI runs it in its thread pool
        report = lazy.queue_stats(db, lazy.get_redis(), tenant=session.tenant, include_rq=session.is_admin)
    return page(request, "queue.html", {"report": report, "buckets": BUCKETS})


def _steer_queue(name: str, action: str) -> None:
    from jobs.queues.queue_control import drain_queue, pause_queue, resume_queue

    {"pause": pause_queue, "resume": resume_queue, "drain": drain_queue}[action](lazy.get_redis(), name)


@router.post("/queue/{name}/{action}")
async def queue_action(
    request: Request, name: str, action: Literal["pause", "resume", "drain"], session: ChangingSession
) -> Response:
    """Pause, resume or drain a queue (operators: a queue serves every tenant)."""
    if session.scope is not None:
        raise Forbidden("A queue serves every tenant: pausing or draining it needs an operator key.")
    await run_in_threadpool(_steer_queue, name[:64], action)
    return RedirectResponse(f"{request.scope.get('root_path', '')}/queue", status_code=303)


@router.get("/analytics")
def analytics_page(
    request: Request,
    session: CurrentSession,
    days: Annotated[int, Query(ge=1, le=366)] = 7,
    queue: Annotated[str | None, Query(max_length=64)] = None,
    task: Annotated[str | None, Query(max_length=100)] = None,
    retried: Annotated[int | None, Query(ge=0)] = None,
    skipped: Annotated[int | None, Query(ge=0)] = None,
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
        "retried": retried,
        "skipped": skipped,
        "throughput": throughput_chart(data["throughput"]),
        "percentiles": percentile_chart({"run": data["totals"]["run_ms"], "wait": data["totals"]["wait_ms"]}),
    }
    return page(request, "analytics.html", context)


def _retry_failed(session: WebSession, signature: str, days: int, queue: str, task: str) -> tuple[int, int]:
    from jobs.actions.bulk import JobFilter, bulk_act

    spec = JobFilter(
        status=(JobStatus.FAILED,),
        error_signature=signature,
        ended_after=utcnow() - timedelta(days=days),
        queue=queue or None,
        task=task or None,
    )
    with lazy.open_session() as db:
        outcome = bulk_act(
            session=db,
            client=lazy.get_redis(),
            action="restart",
            spec=spec,
            tenant=session.tenant,
            by=session.key_id,
            dry_run=False,
            reason="retried from the analytics page's top errors",
        )
    return outcome.done, outcome.skipped


@router.post("/analytics/retry")
async def retry_failed(request: Request, session: ChangingSession) -> Response:
    """Restart every job of the range that failed with one error signature (the top errors' button)."""
    form = await request.form()
    signature = str(form.get("signature") or "")[:255]
    queue, task = str(form.get("queue") or "")[:64], str(form.get("task") or "")[:100]
    try:
        days = max(1, min(366, int(str(form.get("days") or "7"))))
    except ValueError:
        days = 7
    if not signature:
        raise InvalidRequest("Which error? The form carries no error signature.")
    done, skipped = await run_in_threadpool(_retry_failed, session, signature, days, queue, task)
    query = urlencode({"days": days, "queue": queue, "task": task, "retried": done, "skipped": skipped})
    return RedirectResponse(f"{request.scope.get('root_path', '')}/analytics?{query}", status_code=303)
