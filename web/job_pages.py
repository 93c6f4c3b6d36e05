"""The jobs table, the job page, their polling fragments, and the control buttons.

Two fragments poll, and both are cheap: the table (`/jobs/table`, one SQL
query plus one Redis round trip for the rows still live) and the job's live
part (`/jobs/{id}/live`, one Redis read). Each answers 304 when its ETag
(the rows' or the job's `seq`, the session, the UI version) still matches,
and each stops polling by returning itself without `hx-trigger` once nothing
in it can change (htmx 2 and 4 alike; no status 286).

Imports of SQL, Redis and RQ code happen inside the routes: the Lambda cold
start never pays for them (docs/decisions.md, issue 6).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from jobs.errors import IllegalTransition, JobNotFound
from jobs.status import JobStatus
from web.job_view import table_trigger, view_of
from web.live_source import pushes
from web.rendering import PageRoute, etag_matches, is_htmx, not_modified, page, ui_version
from web.session import ChangingSession, CurrentSession, WebSession

if TYPE_CHECKING:
    from jobs.history.store import Page
    from jobs.state.reads import JobRead, JobsPage

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 25
PAGE_MODES = ("push", "fallback")  # how a job page that posts an action gets its updates
Action = Literal["cancel", "pause", "resume", "restart"]


# --- reading --------------------------------------------------------------------------------------


async def read_job(job_id: str, tenant: str | None) -> JobRead:
    """The tenant's job with its pending control request (`jobs.state.reads`: one Redis read, or SQL once
    the live state has expired). JobNotFound for another tenant's job or none."""
    from jobs.state.reads import CONTROLLED_HEAD, snapshot_for

    return await snapshot_for(job_id, tenant, fields=CONTROLLED_HEAD)


def live_headers(read: JobRead | JobsPage) -> dict[str, str]:
    """The API's mark on a page SQL answered because Redis could not be reached."""
    return {"X-Conveyor-Live": "unavailable"} if read.live_unavailable else {}


def _history(job_id: str, tenant: str | None) -> tuple[Any, list[dict[str, Any]]]:
    """The job's record (redacted, `jobs.history.records.job_record`) and its lifecycle events."""
    from jobs.access.redaction import redact, redact_text
    from jobs.history.db import session_scope
    from jobs.history.records import job_record
    from jobs.history.store import get_job, list_events

    with session_scope() as session:
        row = get_job(session, job_id=job_id, tenant=tenant)
        if row is None:
            raise JobNotFound(job_id)
        record = job_record(row)
        events = []
        for event in list_events(session, job_id=job_id):
            if event.event == "progress":
                continue  # the bar shows progress; the timeline shows what happened
            data = {k: v for k, v in (event.data or {}).items() if k != "traceback"}
            events.append(
                {
                    "seq": event.seq,
                    "event": event.event,
                    "status": event.status,
                    "attempt": event.attempt,
                    "message": redact_text(event.message) if event.message else None,
                    "data": redact(data) if data else None,
                    "created_at": event.created_at,
                }
            )
    return record, events


def _live_etag(view_seq: int, session: WebSession) -> str:
    return f'W/"j{view_seq}.{session.tag}.{ui_version()}"'


# --- the jobs table -------------------------------------------------------------------------------


def _filters(status: str | None, task: str | None, queue: str | None) -> dict[str, str]:
    values = {"status": status or "", "task": task or "", "queue": queue or ""}
    if values["status"] and values["status"] not in {s.value for s in JobStatus}:
        values["status"] = ""
    return values


def _table_rows(tenant: str | None, filters: dict[str, str], cursor: str | None) -> JobsPage:
    """One page of the tenant's jobs (one SQL query), live rows overlaid from Redis (one round trip)."""
    return _overlaid(_sql_rows(tenant, filters, cursor))


def _overlaid(found: Page) -> JobsPage:
    from jobs.state.reads import live_page
    from jobs.state.redis_conn import get_redis

    return live_page(found, client=get_redis())


def _sql_rows(tenant: str | None, filters: dict[str, str], cursor: str | None) -> Page:
    from jobs.history.db import session_scope
    from jobs.history.store import list_jobs

    with session_scope() as session:
        return list_jobs(
            session,
            tenant=tenant,
            status=[JobStatus(filters["status"])] if filters["status"] else (),
            task=filters["task"] or None,
            queue=filters["queue"] or None,
            limit=PAGE_SIZE,
            cursor=cursor,
        )


def _table_context(
    request: Request,
    session: WebSession,
    status: str | None,
    task: str | None,
    queue: str | None,
    cursor: str | None,
    found: JobsPage | None = None,
) -> tuple[dict[str, Any], str, dict[str, str]]:
    filters = _filters(status, task, queue)
    if found is None:
        found = _table_rows(session.scope, filters, cursor)
    rows, next_cursor = [view_of(doc, with_actions=False) for doc in found.docs], found.next_cursor
    query = request.url.query
    digest = hashlib.sha256(f"{query}|{next_cursor}".encode())
    for row in rows:
        digest.update(f"{row.job_id}:{row.seq};".encode())
    etag = f'W/"t{digest.hexdigest()[:16]}.{session.tag}.{ui_version()}"'
    context = {
        "rows": rows,
        "filters": filters,
        "cursor": cursor or "",
        "next_cursor": next_cursor,
        "trigger": table_trigger([row.status for row in rows]),
        "query": query,
    }
    return context, etag, live_headers(found)


StatusFilter = Annotated[str | None, Query(max_length=16)]
TaskFilter = Annotated[str | None, Query(max_length=100)]
QueueFilter = Annotated[str | None, Query(max_length=64)]
CursorParam = Annotated[str | None, Query(max_length=500)]


@router.get("/")
def home(request: Request) -> RedirectResponse:
    """The jobs page is the home page (it sends signed-out visitors on to the sign-in form)."""
    return RedirectResponse(f"{request.scope.get('root_path', '')}/jobs", status_code=303)


@router.get("/jobs")
def jobs_page(
    request: Request,
    session: CurrentSession,
    status: StatusFilter = None,
    task: TaskFilter = None,
    queue: QueueFilter = None,
    cursor: CursorParam = None,
) -> Response:
    """The tenant's jobs, newest first, filtered and paged; the table refreshes itself while jobs run."""
    from jobs.settings import get_settings
    from jobs.tasks import load_tasks

    context, _, headers = _table_context(request, session, status, task, queue, cursor)
    context["push"] = pushes(request) and context["trigger"] is not None
    context["task_names"] = sorted(load_tasks())
    context["queue_names"] = get_settings().queues
    context["statuses"] = [s.value for s in JobStatus]
    context["batches"] = []  # recent batches head the first page only
    if not cursor:
        from web.batch_pages import recent_batches

        context["batches"], _ = recent_batches(session.scope)
    return page(request, "jobs.html", context, headers=headers)


@router.get("/jobs/table")
def jobs_table(
    request: Request,
    session: CurrentSession,
    status: StatusFilter = None,
    task: TaskFilter = None,
    queue: QueueFilter = None,
    cursor: CursorParam = None,
    fallback: Annotated[bool, Query()] = False,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The jobs table alone: the page's one poller (``fallback``: while the page's stream is down)."""
    context, etag, headers = _table_context(request, session, status, task, queue, cursor)
    context["mode"] = "fallback" if fallback else "poll"
    if etag_matches(etag, if_none_match):
        return not_modified(etag)
    headers["ETag"] = etag
    return page(request, "_jobs_table.html", context, headers=headers, cache="private, no-cache")


# --- one job --------------------------------------------------------------------------------------


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str, session: CurrentSession) -> Response:
    """The job: live part (status, progress, result or error, buttons), details and timeline."""
    from web.live_pages import PANEL_LINES, first_lines

    read = await read_job(job_id, session.scope)
    job = view_of(read.doc, control=read.control)
    record, events = await run_in_threadpool(_history, job_id, session.scope)
    lines = await first_lines(job_id)
    context = {
        "job": job,
        "record": record,
        "events": events,
        "notice": None,
        "push": pushes(request) and not job.is_terminal,
        "lines": lines,
        "after": lines[-1].seq if lines else 0,
        "panel_lines": PANEL_LINES,
    }
    return page(request, "job.html", context, headers=live_headers(read))


@router.get("/jobs/{job_id}/live")
async def job_live(
    request: Request,
    job_id: str,
    session: CurrentSession,
    fallback: Annotated[bool, Query()] = False,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The job page's live part; it stops polling (no hx-trigger) once the job is terminal.
    ``fallback``: polled while the page's stream is down (it keeps its place for the stream)."""
    read = await read_job(job_id, session.scope)
    etag = _live_etag(read.seq, session) + ("f" if fallback else "")
    if etag_matches(etag, if_none_match):
        return not_modified(etag)
    job = view_of(read.doc, control=read.control)
    headers = {**live_headers(read), "ETag": etag}
    if job.is_terminal:
        headers["HX-Trigger"] = "job-ended"  # the timeline reloads itself once
    context = {"job": job, "notice": None, "mode": "fallback" if fallback else "poll"}
    return page(request, "_job_live.html", context, headers=headers, cache="private, no-cache")


@router.get("/jobs/{job_id}/timeline")
async def job_timeline(request: Request, job_id: str, session: CurrentSession) -> Response:
    """The job's events, re-read when the live part reports the job ended."""
    _, events = await run_in_threadpool(_history, job_id, session.scope)
    return page(request, "_timeline.html", {"job_id": job_id, "events": events}, cache="private, no-cache")


@router.get("/jobs/{job_id}/result")
async def job_result(job_id: str, session: CurrentSession) -> Response:
    """A finished job's result as JSON: the API's `/result`, behind the session (large results live here)."""
    from jobs.state.reads import result_of, snapshot_for

    read = await snapshot_for(job_id, session.scope)
    result = await result_of(job_id, read)
    headers = {
        **live_headers(read),
        **result.cache_headers,
        "Content-Disposition": f'inline; filename="{job_id}-result.json"',
        "X-Content-Type-Options": "nosniff",
    }
    return Response(content=result.body, media_type="application/json", headers=headers)


def _act(action: Action, job_id: str, session: WebSession) -> None:
    from jobs import lazy
    from jobs.actions import control

    steer = {
        "cancel": control.cancel_job,
        "pause": control.pause_job,
        "resume": control.resume_job,
        "restart": control.restart_job,
    }[action]
    with lazy.open_session() as db:  # the edge: the page opens what the domain is handed
        steer(session=db, client=lazy.get_redis(), job_id=job_id, tenant=session.scope, by=session.key_id)


@router.post("/jobs/{job_id}/{action}")
async def job_action(request: Request, job_id: str, action: Action, session: ChangingSession) -> Response:
    """Cancel, pause, resume or restart. htmx gets the live part back; a plain form, a redirect.
    An action the job's status no longer allows answers 409 with the job as it is now."""
    from web.live_pages import PANEL_LINES, first_lines

    notice = None
    status_code = 200
    try:
        await run_in_threadpool(_act, action, job_id, session)
    except IllegalTransition as exc:
        notice, status_code = exc.message, 409
    if not is_htmx(request) and status_code == 200:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/jobs/{job_id}", status_code=303)
    read = await read_job(job_id, session.scope)
    job = view_of(read.doc, control=read.control)
    headers = live_headers(read)
    if is_htmx(request):
        mode = (await request.form()).get("mode")
        shown = mode if mode in PAGE_MODES else "poll"
        context: dict[str, Any] = {"job": job, "notice": notice, "mode": shown}
        return page(request, "_job_live.html", context, status_code=status_code, headers=headers)
    record, events = await run_in_threadpool(_history, job_id, session.scope)
    lines = await first_lines(job_id)
    context = {
        "job": job,
        "record": record,
        "events": events,
        "notice": notice,
        "push": False,
        "lines": lines,
        "after": lines[-1].seq if lines else 0,
        "panel_lines": PANEL_LINES,
    }
    return page(request, "job.html", context, status_code=status_code, headers=headers)
