"""The canonical JSON API for jobs: submit, read, list, events, and the task catalogue."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URLPath

from api.deps import CurrentPrincipal, TenantParam, readable_tenant, tenant_scope
from api.outages import noting_outage
from jobs import lazy
from jobs.access.redaction import redact, redact_text
from jobs.errors import JobNotFound
from jobs.lazy_model import LazyModel
from jobs.settings import get_settings
from jobs.snapshot import JobSnapshot
from jobs.state.reads import live_page, snapshot_for, valid_job_id
from jobs.status import JobStatus
from jobs.tasks import load_tasks
from jobs.tracing import trace_id_from_headers

if TYPE_CHECKING:
    from jobs.actions.submit import Submission

# Modules that load the SQL or Redis clients are imported inside the routes that use
# them, so that declaring the routes stays cheap (a Lambda cold start is import time).

router = APIRouter(prefix="/api/v1", tags=["jobs"])

JSON = "application/json"
MAX_PAGE = 200


class SubmitRequest(BaseModel):
    task: str = Field(min_length=1, max_length=100, examples=["long_task"])
    payload: dict[str, Any] = Field(default_factory=dict, examples=[{"n": 50, "delay": 0.05}])
    queue: str | None = Field(default=None, min_length=1, max_length=64)
    timeout: int | None = Field(
        default=None, ge=1, le=7 * 86400, description="Seconds; overrides the task's."
    )
    tags: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/=-]{0,63}$")]] = Field(
        default_factory=list, max_length=16, description="Labels to find the job by (`?tag=` on the list)."
    )
    run_at: AwareDatetime | None = Field(
        default=None, description="Run at this time (ISO 8601 with a timezone); the job waits as `scheduled`."
    )
    delay: float | None = Field(
        default=None, ge=0, le=366 * 86400, description="Run after this many seconds (`scheduled`)."
    )
    depends_on: list[str] | None = Field(
        default=None,
        max_length=20,
        description="Ids of your jobs that must finish first; the job waits as `deferred`. "
        "Or one batch's id: the job waits for the whole batch (see `batch_dependency`).",
    )
    batch_dependency: Literal["all_finished", "all_ended"] = Field(
        default="all_finished",
        description="When `depends_on` names a batch: run once every job of it finished (else the "
        "job fails as `DependencyFailed`), or once every job ended, however.",
    )


class JobList(LazyModel):
    items: list[JobSnapshot]
    next_cursor: str | None = None


class EventOut(LazyModel):
    seq: int
    event: str
    status: JobStatus
    attempt: int
    progress: float | None
    message: str | None
    data: dict[str, Any] | None
    created_at: datetime


class EventList(LazyModel):
    job_id: str
    items: list[EventOut]


class TaskInfo(LazyModel):
    name: str
    description: str
    queue: str
    timeout: int
    retries: int
    payload_schema: dict[str, Any]
    max_timeout_seconds: int = 0  # the longest `timeout` a submission may ask for (0: no task cap)
    max_running: int = 0  # how many may run at once over all workers (0: no task cap)


def etag_of(seq: int | str) -> str:
    return f'"{seq}"'


def _doc_response(doc: bytes, *, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(content=doc, status_code=status_code, media_type=JSON, headers=headers)


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobSnapshot,
    responses={200: {"description": "An Idempotency-Key replayed an earlier submission."}},
)
async def submit(
    body: SubmitRequest,
    principal: CurrentPrincipal,
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    traceparent: Annotated[str | None, Header(max_length=128)] = None,
    x_trace_id: Annotated[str | None, Header(max_length=128)] = None,
    x_request_id: Annotated[str | None, Header(max_length=128)] = None,
) -> Response:
    """Submit a job. The payload is validated against the task's schema before anything is stored.

    The job's trace id comes from `traceparent` (W3C), else `X-Trace-Id` / `X-Request-Id`,
    else a new one; it is stored with the job and tagged on the worker's log lines.
    """
    submission, rates = await run_in_threadpool(
        _submit_in_thread,
        body,
        tenant=principal.tenant,
        owner=principal.key_id,
        idempotency_key=idempotency_key,
        trace_id=trace_id_from_headers(traceparent, x_trace_id or x_request_id),
    )
    headers = {"Location": _snapshot_url(request, submission.job_id), **rates}
    if not submission.created:
        headers["Idempotent-Replayed"] = "true"
    return _doc_response(submission.doc, status_code=201 if submission.created else 200, headers=headers)


def _snapshot_url(request: Request, job_id: str) -> str:
    """`request.url_for("get_job_snapshot", ...)` without searching the routes on every submit
    (~50 µs of a 2 ms submit): the path up to the id is the same for every job of the app."""
    state = request.app.state
    prefix = getattr(state, "snapshot_path_prefix", None)
    if prefix is None:
        prefix = state.snapshot_path_prefix = request.app.url_path_for("get_job_snapshot", job_id="-")[:-1]
    return str(URLPath(prefix + job_id).make_absolute_url(base_url=request.base_url))


def _submit_in_thread(
    body: SubmitRequest, *, tenant: str, owner: str | None, idempotency_key: str | None, trace_id: str
) -> tuple[Submission, dict[str, str]]:
    """The whole submission in one thread-pool hop: a sync session dependency and a sync route
    cost three (open, run, close), a third of a submit's time in the API (issue 16). Returns it
    with its `RateLimit-*` headers (set in this thread's context, which the route does not see)."""
    from jobs.access.admission import rate_headers

    with lazy.open_session() as session:
        client = lazy.get_redis()
        batch_id = (
            lazy.batch_named(session, tenant=tenant, depends_on=body.depends_on) if body.depends_on else None
        )
        if batch_id is not None and body.run_at is None and body.delay is None:
            return lazy.submit_after_batch(
                session=session,
                client=client,
                tenant=tenant,
                owner=owner,
                batch_id=batch_id,
                mode=body.batch_dependency,
                task=body.task,
                payload=body.payload,
                queue=body.queue,
                idempotency_key=idempotency_key,
                timeout=body.timeout,
                tags=body.tags,
                trace_id=trace_id,
            ), rate_headers()
        submission = lazy.submit_job(
            session=session,
            client=client,
            tenant=tenant,
            owner=owner,
            task=body.task,
            payload=body.payload,
            queue=body.queue,
            idempotency_key=idempotency_key,
            timeout=body.timeout,
            tags=body.tags,
            trace_id=trace_id,
            run_at=body.run_at,
            delay=body.delay,
            depends_on=body.depends_on or (),
        )
    return submission, rate_headers()


@router.get(
    "/jobs/{job_id}",
    response_model=JobSnapshot,
    name="get_job_snapshot",
    responses={304: {"description": "Not modified: the job's seq still matches If-None-Match."}},
)
async def get_snapshot(
    job_id: str,
    principal: CurrentPrincipal,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The job's current snapshot. `ETag` is its `seq`; `If-None-Match` answers 304 when unchanged.

    Most of these requests never reach this function: `api.snapshot_fast_path` answers
    them first when the key is cached and Redis has the job (same checks, same bytes).
    """
    read = noting_outage(await snapshot_for(job_id, readable_tenant(principal)))
    etag = etag_of(read.seq)
    if etag_matches(etag, if_none_match):
        return Response(status_code=304, headers={"ETag": etag})
    return _doc_response(read.doc, headers={"ETag": etag, "Cache-Control": "no-cache"})


def etag_matches(etag: str, if_none_match: str | None) -> bool:
    return if_none_match is not None and etag in [t.strip() for t in if_none_match.split(",")]


@router.get("/jobs", response_model=JobList)
def get_jobs(
    principal: CurrentPrincipal,
    status: Annotated[list[JobStatus] | None, Query(description="Repeat to match several.")] = None,
    task: Annotated[str | None, Query(max_length=100)] = None,
    queue: Annotated[str | None, Query(max_length=64)] = None,
    owner: Annotated[str | None, Query(max_length=64, description="The submitting key's id.")] = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    trace_id: Annotated[str | None, Query(max_length=64)] = None,
    batch: Annotated[str | None, Query(max_length=36, description="A batch's id: its jobs only.")] = None,
    tenant: TenantParam = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    """The caller's jobs, newest first; follow `next_cursor` for the next page."""
    scope = tenant_scope(principal, tenant)
    from jobs.history.db import session_scope
    from jobs.history.store import list_jobs
    from jobs.state.redis_conn import get_redis

    with session_scope() as session:
        found = list_jobs(
            session,
            tenant=scope,
            status=status or (),
            task=task,
            queue=queue,
            owner=owner,
            tag=tag,
            trace_id=trace_id,
            batch_id=batch,
            limit=limit,
            cursor=cursor,
        )
    page = noting_outage(live_page(found, client=get_redis()))
    cursor_json = json.dumps(page.next_cursor).encode()
    body = b'{"items":[' + b",".join(page.docs) + b'],"next_cursor":' + cursor_json + b"}"
    return _doc_response(body)


@router.get("/jobs/{job_id}/events", response_model=EventList)
def get_events(job_id: str, principal: CurrentPrincipal) -> EventList:
    """The job's lifecycle events, oldest first (one per accepted state change), secrets redacted."""
    if not valid_job_id(job_id):
        raise JobNotFound(job_id)
    from jobs.history.db import session_scope
    from jobs.history.store import get_job, list_events

    with session_scope() as session:
        if get_job(session, job_id=job_id, tenant=readable_tenant(principal)) is None:
            raise JobNotFound(job_id)
        events = list_events(session, job_id=job_id)
        items = [
            EventOut(
                seq=e.seq,
                event=e.event,
                status=JobStatus(e.status),
                attempt=e.attempt,
                progress=e.progress,
                message=redact_text(e.message) if e.message else e.message,
                data=_redacted_event_data(e.data),
                created_at=e.created_at,
            )
            for e in events
        ]
    return EventList(job_id=job_id, items=items)


def _redacted_event_data(data: dict[str, Any] | None) -> dict[str, Any] | None:
    if not data:
        return data
    cleaned = redact(data)
    if isinstance(cleaned.get("traceback"), str):
        cleaned["traceback"] = redact_text(cleaned["traceback"])
    error = cleaned.get("error")
    if isinstance(error, dict) and isinstance(error.get("detail"), str):
        cleaned["error"] = {**error, "detail": redact_text(error["detail"])}
    return cleaned


def _caps(spec: Any) -> dict[str, int]:
    from jobs.access.limits import task_caps

    caps = task_caps(spec)
    return {"max_timeout_seconds": caps.max_timeout_seconds, "max_running": caps.max_running}


@router.get("/tasks", response_model=list[TaskInfo], tags=["tasks"])
def get_tasks(principal: CurrentPrincipal) -> list[TaskInfo]:
    """Every task you can submit, with its payload's JSON Schema."""
    settings = get_settings()
    return [
        TaskInfo(
            name=spec.name,
            description=spec.description,
            queue=spec.queue or settings.default_queue,
            timeout=spec.timeout or settings.job_timeout,
            retries=spec.retries,
            payload_schema=spec.schema(),
            **_caps(spec),
        )
        for spec in sorted(load_tasks().values(), key=lambda s: s.name)
    ]
