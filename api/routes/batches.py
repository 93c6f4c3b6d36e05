"""Batches: many jobs in one request, one snapshot for all of them, served on every channel a job is.

Thin routes over `jobs.actions.batches` (submit), `jobs.state.batch_state` (reading) and
`jobs.actions.batch_control` (cancel, restart); the live channels reuse the job feed's code
through `api.batch_feed`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, WebSocket
from pydantic import BaseModel, Field

from api.deps import (
    CurrentPrincipal,
    RedisDep,
    SessionDep,
    StreamPrincipal,
    TenantParam,
    readable_tenant,
    tenant_scope,
    websocket_principal,
)
from api.routes.control import OptionalBody
from api.routes.jobs import SubmitRequest, etag_matches
from api.routes.live import PollTimeout, poll_seconds, resume_point, snapshot_response
from jobs import lazy
from jobs.lazy_model import LazyModel
from jobs.status import JobStatus
from jobs.tracing import trace_id_from_headers

router = APIRouter(prefix="/api/v1", tags=["batches"])

JSON = "application/json"
MAX_PAGE = 200
TAG = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/=-]{0,63}$")]


class BatchRequest(BaseModel):
    jobs: list[SubmitRequest] = Field(
        description="The jobs, each as `POST /api/v1/jobs` takes one (`depends_on` excepted). "
        "At most `CONVEYOR_BATCH_MAX_JOBS` (default 10,000): past it, 413."
    )
    name: str | None = Field(default=None, max_length=200, description="A label shown with the batch.")
    tags: list[TAG] = Field(
        default_factory=list, max_length=16, description="Given to every job of the batch."
    )


class BatchCreated(LazyModel):
    batch_id: str
    size: int
    job_ids: list[str]


class BatchCounts(LazyModel):
    queued: int = 0
    scheduled: int = 0
    deferred: int = 0
    started: int = 0
    paused: int = 0
    finished: int = 0
    failed: int = 0
    canceled: int = 0


class BatchOut(LazyModel):
    """A batch's snapshot: the same shape on GET, the list, long poll, SSE and WebSocket."""

    batch_id: str
    name: str | None
    tags: list[str] | None
    status: JobStatus
    size: int
    counts: BatchCounts
    progress: float = Field(description="0..100: ended jobs plus running jobs' own progress, over all.")
    finished_share: float = Field(description="0..1: the share of jobs that finished.")
    running_progress: float | None = Field(description="Mean progress of the running jobs.")
    eta_seconds: float | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    duration_seconds: float | None = Field(
        description="From submission to the last job's end, once all ended."
    )
    success_rate: float | None = Field(description="0..1: finished jobs over ended jobs.")
    seq: int = Field(description="The batch's version: the sum of its jobs' seq.")


class BatchList(LazyModel):
    items: list[BatchOut]
    next_cursor: str | None = None


class BatchActionOut(LazyModel):
    batch_id: str
    applied: int = Field(description="Jobs the action reached.")
    skipped: int = Field(description="Jobs that had moved on meanwhile (already ended, or restarted).")


def _json(body: bytes, *, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(content=body, status_code=status_code, media_type=JSON, headers=headers)


@router.post(
    "/batches",
    status_code=201,
    response_model=BatchCreated,
    responses={
        200: {"description": "An Idempotency-Key replayed an earlier batch."},
        413: {"description": "More jobs than `CONVEYOR_BATCH_MAX_JOBS`, or a body over its size cap."},
        422: {"description": "A job cannot be accepted: the message names its index and field."},
    },
)
def submit_batch(
    body: BatchRequest,
    principal: CurrentPrincipal,
    request: Request,
    session: SessionDep,
    redis: RedisDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    traceparent: Annotated[str | None, Header(max_length=128)] = None,
    x_trace_id: Annotated[str | None, Header(max_length=128)] = None,
    x_request_id: Annotated[str | None, Header(max_length=128)] = None,
) -> Response:
    """Submit many jobs at once: every one is validated before anything is stored (all or none).

    Answers the batch's id and its jobs' ids in the order given; the jobs carry the batch's
    tags and trace id. Watch the batch on `/batches/{id}` and its live channels.
    """
    jobs = [
        lazy.JobRequest(
            task=j.task,
            payload=j.payload,
            queue=j.queue,
            timeout=j.timeout,
            tags=j.tags,
            run_at=j.run_at,
            delay=j.delay,
            depends_on=j.depends_on or (),
        )
        for j in body.jobs
    ]
    submission = lazy.submit_batch(
        session=session,
        client=redis,
        tenant=principal.tenant,
        owner=principal.key_id,
        jobs=jobs,
        name=body.name,
        tags=body.tags,
        idempotency_key=idempotency_key,
        trace_id=trace_id_from_headers(traceparent, x_trace_id or x_request_id),
    )
    from jobs.access.admission import rate_headers

    headers = {"Location": str(request.url_for("get_batch", batch_id=submission.batch_id)), **rate_headers()}
    if not submission.created:
        headers["Idempotent-Replayed"] = "true"
    out = {"batch_id": submission.batch_id, "size": len(submission.job_ids), "job_ids": submission.job_ids}
    return _json(json.dumps(out).encode(), status_code=201 if submission.created else 200, headers=headers)


@router.get(
    "/batches/{batch_id}",
    response_model=BatchOut,
    name="get_batch",
    responses={304: {"description": "Not modified: the batch's seq still matches If-None-Match."}},
)
def get_batch(
    batch_id: str,
    principal: CurrentPrincipal,
    session: SessionDep,
    redis: RedisDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The batch's snapshot: counts per status, one progress figure, ETA. `ETag` is its `seq`."""
    from jobs.state.batch_state import snapshot_doc

    snapshot = lazy.read_batch(session, redis, batch_id=batch_id, tenant=readable_tenant(principal))
    etag = f'"{snapshot.seq}"'
    if etag_matches(etag, if_none_match):
        return Response(status_code=304, headers={"ETag": etag})
    return _json(snapshot_doc(snapshot), headers={"ETag": etag, "Cache-Control": "no-cache"})


@router.get("/batches", response_model=BatchList)
def get_batches(
    principal: CurrentPrincipal,
    session: SessionDep,
    tenant: TenantParam = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    """The caller's batches, newest first (their counts as SQL has them); follow `next_cursor`."""
    from jobs.state.batch_state import snapshot_doc

    page = lazy.list_batches(session, tenant=tenant_scope(principal, tenant), limit=limit, cursor=cursor)
    items = b",".join(snapshot_doc(s) for s in page.items)
    return _json(b'{"items":[' + items + b'],"next_cursor":' + json.dumps(page.next_cursor).encode() + b"}")


@router.post("/batches/{batch_id}/cancel", response_model=BatchActionOut)
def cancel_batch(
    batch_id: str,
    principal: CurrentPrincipal,
    session: SessionDep,
    redis: RedisDep,
    body: OptionalBody = None,
) -> BatchActionOut:
    """Cancel every job of the batch that has not ended (running ones are asked to stop)."""
    done = lazy.cancel_batch(
        session=session,
        client=redis,
        batch_id=batch_id,
        tenant=principal.scope,
        by=principal.key_id,
        reason=body.reason if body else None,
    )
    return BatchActionOut(batch_id=done.batch_id, applied=done.applied, skipped=done.skipped)


@router.post("/batches/{batch_id}/restart", response_model=BatchActionOut)
def restart_batch(
    batch_id: str,
    principal: CurrentPrincipal,
    session: SessionDep,
    redis: RedisDep,
    body: OptionalBody = None,
) -> BatchActionOut:
    """Run the batch's failed and canceled jobs again, each under its id as its next attempt."""
    done = lazy.restart_batch(
        session=session,
        client=redis,
        batch_id=batch_id,
        tenant=principal.scope,
        by=principal.key_id,
        reason=body.reason if body else None,
    )
    return BatchActionOut(batch_id=done.batch_id, applied=done.applied, skipped=done.skipped)


# --- live: long poll, SSE, WebSocket, as a job's --------------------------------------------------------


@router.get("/batches/{batch_id}/poll", response_model=BatchOut)
async def poll_batch(
    batch_id: str,
    principal: CurrentPrincipal,
    request: Request,
    timeout: PollTimeout = 30,
    since: Annotated[int | None, Query(ge=0, description="Answer once the batch's seq is past this.")] = None,
) -> Response:
    """Long poll: the batch's snapshot as soon as it changes (past `since`), or at `timeout`."""
    from api.batch_feed import BatchFeed
    from api.live_feed import long_poll

    feed = await BatchFeed.open_batch(batch_id, principal.scope, key_id=principal.key_id)
    try:
        after = feed.current.seq if since is None else since
        found = await long_poll(
            feed,
            timeout=poll_seconds(timeout, request),
            is_news=lambda item: item.seq > after,
            receive=request.receive,
        )
    finally:
        feed.close()
    return snapshot_response(found)


@router.get(
    "/batches/{batch_id}/stream",
    status_code=200,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "One event per batch snapshot (`id:` its seq), coalesced (at most one "
            "per `CONVEYOR_BATCH_LIVE_INTERVAL`), ending after the terminal one.",
        },
        204: {"description": "Resumed (Last-Event-ID) after the terminal snapshot: nothing more."},
    },
)
async def stream_batch(
    batch_id: str,
    principal: StreamPrincipal,
    request: Request,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    since: Annotated[int | None, Query(ge=0, description="Resume after this seq.")] = None,
) -> Response:
    """Server-Sent Events of the batch's snapshots. Reconnect with Last-Event-ID to resume."""
    from api.batch_feed import BatchFeed
    from api.event_stream import EventStream
    from api.lambda_limits import LAMBDA_MAX_WAIT, under_lambda

    after = resume_point(last_event_id, since)
    feed = await BatchFeed.open_batch(batch_id, principal.scope, key_id=principal.key_id)
    if feed.current.is_terminal and feed.current.seq <= after:
        feed.close()
        return Response(status_code=204)
    lambda_mode = under_lambda(request.scope)
    return EventStream(
        feed, since=after, once=lambda_mode, max_seconds=LAMBDA_MAX_WAIT if lambda_mode else None
    )


@router.websocket("/batches/{batch_id}/ws")
async def websocket_batch(
    websocket: WebSocket,
    batch_id: str,
    since: Annotated[int, Query(ge=0, description="Skip snapshots up to this seq.")] = 0,
) -> None:
    """The batch's snapshots over a WebSocket; closes 1000 after the terminal one (4401, 4404,
    4429 and 1011 as a job's WebSocket)."""
    import redis.exceptions
    import sqlalchemy as sa

    from api.batch_feed import BatchFeed
    from api.event_stream import pump_websocket
    from api.routes.live import WS_NOT_FOUND, WS_UNAUTHORIZED
    from api.stream_limits import WS_TOO_MANY, StreamLimitReached
    from jobs.state.batch_state import BatchNotFound

    principal = await websocket_principal(websocket)
    await websocket.accept()
    if principal is None:
        await websocket.close(code=WS_UNAUTHORIZED, reason="Missing, invalid or revoked API key.")
        return
    try:
        feed = await BatchFeed.open_batch(batch_id, principal.scope, key_id=principal.key_id)
    except BatchNotFound as exc:
        await websocket.close(code=WS_NOT_FOUND, reason=exc.message[:120])
        return
    except StreamLimitReached as exc:
        await websocket.close(code=WS_TOO_MANY, reason=f"Too many streams: the {exc.cap} cap is reached.")
        return
    except (redis.exceptions.RedisError, sa.exc.SQLAlchemyError):
        await websocket.close(code=1011, reason="Redis or the database is unavailable; retry shortly.")
        return
    await pump_websocket(websocket, feed, since=since)
