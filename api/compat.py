"""The seeds' endpoints, each in its own seed's shape and vocabulary, over the same model.

A thin translation layer: every route here reads or writes through the same
functions as the canonical API (`/api/v1/jobs...`) and only renames fields and
statuses, so a client written against any seed tutorial works unchanged
(with an `Authorization` header added). `CONVEYOR_COMPAT_ENDPOINTS=false`
turns all of them off.

- seed 004: POST /submit-job, GET /job-status/{id} (RQ's status names).
- seeds 000/001: GET /status/{id} (200 with status "unknown" for an unknown id),
  WS /ws/{id}, POST /workflow/run (runs `long_task`).
- seed 002: GET /api/v1/jobs/status/{id}[/poll|/stream], GET /api/v1/jobs/queue/stats,
  POST /api/v1/jobs/cancel/{id} and /restart/{id} (pending/running/completed/failed/cancelled).
- seed 003: GET /analytics/summary?days=7 (its flat `AnalyticsOut`).
"""

from __future__ import annotations

import json
import os
import resource
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, WebSocket
from pydantic import BaseModel, Field

from api.deps import CurrentPrincipal, RedisDep, SessionDep, StreamPrincipal
from api.event_stream import EventStream, sse_event
from api.lambda_limits import LAMBDA_MAX_WAIT, under_lambda
from api.outages import noting_outage
from api.routes.live import PollTimeout, poll_seconds, resume_point, serve_websocket
from jobs.errors import JobNotFound, UnknownTask
from jobs.state.reads import snapshot_for, with_live_overlay
from jobs.status import JobStatus

if TYPE_CHECKING:
    from api.live_hub import Delivery

# The SQL and Redis layers and the live feed load inside the routes that use them, so that
# declaring these routes stays cheap (a Lambda cold start is import time).

router = APIRouter(tags=["seed compatibility"])

S = JobStatus
Snap = dict[str, Any]


def error_text(error: dict[str, str] | None) -> str | None:
    """A {type, detail} error as the one-line string the seeds show ("ValueError: disk on fire")."""
    if not error:
        return None
    return f"{error['type']}: {error['detail']}" if error.get("detail") else error["type"]


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


# --- seed 004: /submit-job, /job-status/{id} ----------------------------------------------------


class SeedJobPayload(BaseModel):
    task: str = Field(min_length=1, max_length=100, examples=["heavy_compute"])
    payload: dict[str, Any] = Field(default_factory=dict)


@router.post("/submit-job")
def submit_job_seed004(
    body: SeedJobPayload, principal: CurrentPrincipal, session: SessionDep, redis: RedisDep
) -> dict[str, Any]:
    """Seed 004: enqueue a whitelisted task; an unknown task is 400 `Unknown task: <name>`."""
    from jobs.actions.submit import submit_job

    try:
        submission = submit_job(
            session=session,
            client=redis,
            tenant=principal.tenant,
            owner=principal.key_id,
            task=body.task,
            payload=body.payload,
        )
    except UnknownTask:
        raise HTTPException(status_code=400, detail=f"Unknown task: {body.task}") from None
    snap = json.loads(submission.doc)
    return {"job_id": snap["job_id"], "status": snap["status"], "submitted_at": snap["created_at"]}


@router.get("/job-status/{job_id}")
def job_status_seed004(job_id: str, principal: CurrentPrincipal) -> dict[str, Any]:
    """Seed 004: RQ's view of a job (status, meta, timestamps, result, exc_info); 404 if unknown."""
    from jobs.access.redaction import redact, redact_text
    from jobs.history.db import session_scope
    from jobs.history.store import get_job, list_events
    from jobs.state.redis_conn import get_redis

    with session_scope() as session:
        job = get_job(session, job_id=job_id, tenant=principal.scope)
        if job is None:
            raise HTTPException(status_code=404, detail="Job not found")
        snap = json.loads(noting_outage(with_live_overlay([job], client=get_redis())).docs[0])
        exc_info = None
        if snap["status"] == S.FAILED:
            failures = [e for e in list_events(session, job_id=job_id) if e.event == "failed" and e.data]
            exc_info = (failures[-1].data or {}).get("traceback") if failures else None
            exc_info = redact_text(exc_info or error_text(snap["error"]) or "")
        meta = {
            "job_id": job.job_id,
            "submitted_at": snap["created_at"],
            "payload": redact(job.params),
            "task_name": job.task,
            "tags": ["api", "v1"],
        }
    return {
        "job_id": job_id,
        "status": snap["status"],
        "meta": meta,
        "enqueued_at": snap["enqueued_at"],
        "started_at": snap["started_at"],
        "ended_at": snap["ended_at"],
        "result": redact(snap["result"]) if snap["status"] == S.FINISHED else None,
        "exc_info": exc_info,
    }


# --- seeds 000 and 001: /status/{id}, /ws/{id}, /workflow/run -----------------------------------


def status_seed001(snap: Snap) -> Snap:
    """Seeds 000 and 001 share /status/{id}: 000's fields (progress as an int, error as a string,
    timestamps) and 001's (percent, message, updated_at) side by side."""
    progress = snap["progress"]
    percent = int(progress) if progress is not None else None
    return {
        "job_id": snap["job_id"],
        "status": snap["status"],
        "progress": percent,
        "percent": percent or 0,
        "message": snap["message"] or "",
        "result": snap["result"],
        "error": error_text(snap["error"]),
        "created_at": snap["created_at"],
        "enqueued_at": snap["enqueued_at"],
        "started_at": snap["started_at"],
        "ended_at": snap["ended_at"],
        "updated_at": snap["updated_at"],
    }


def unknown_seed001(job_id: str) -> Snap:
    return {
        "job_id": job_id,
        "status": "unknown",
        "progress": None,
        "percent": 0,
        "message": "",
        "result": None,
        "error": None,
        "created_at": None,
        "enqueued_at": None,
        "started_at": None,
        "ended_at": None,
        "updated_at": None,
    }


def _seed001_text(delivery: Delivery) -> str:
    return _json(status_seed001(json.loads(delivery.doc))).decode()


@router.get("/status/{job_id}")
async def status_seed000(job_id: str, principal: CurrentPrincipal) -> Response:
    """Seeds 000/001: the job's status; 200 with status `unknown` for an id this tenant does not have."""
    try:
        read = noting_outage(await snapshot_for(job_id, principal.scope))
    except JobNotFound:
        return Response(_json(unknown_seed001(job_id)), media_type="application/json")
    return Response(_json(status_seed001(json.loads(read.doc))), media_type="application/json")


@router.websocket("/ws/{job_id}")
async def websocket_seed001(websocket: WebSocket, job_id: str) -> None:
    """Seed 001: the current progress snapshot, then each update, in /status/{id}'s shape;
    closed (1000) after the terminal one."""
    await serve_websocket(websocket, job_id, since=0, render=lambda d: d.render(_seed001_text, _seed001_text))


class WorkflowRun(BaseModel):
    n_steps: int = Field(default=5, ge=1, le=100_000)
    step_seconds: float = Field(default=1.0, ge=0, le=60, description="Seconds per step (the seed's 1 s).")


@router.post("/workflow/run")
def workflow_run_seed001(
    body: WorkflowRun, principal: CurrentPrincipal, session: SessionDep, redis: RedisDep
) -> dict[str, str]:
    """Seed 001: start its n-step workflow, which is `long_task` (messages "step i/n")."""
    from jobs.actions.submit import submit_job

    submission = submit_job(
        session=session,
        client=redis,
        tenant=principal.tenant,
        owner=principal.key_id,
        task="long_task",
        payload={"n": body.n_steps, "delay": body.step_seconds},
    )
    return {"job_id": submission.job_id}


# --- seed 002: /api/v1/jobs/status/{id}[/poll|/stream], queue stats, cancel, restart -----------

Seed002Status = Literal["pending", "running", "completed", "failed", "cancelled"]
SEED002_STATUS: dict[str, Seed002Status] = {
    S.QUEUED: "pending",
    S.SCHEDULED: "pending",
    S.DEFERRED: "pending",
    S.STARTED: "running",
    S.PAUSED: "running",  # seed 002 has no paused: the job is mid-run, not waiting to start
    S.FINISHED: "completed",
    S.FAILED: "failed",
    S.CANCELED: "cancelled",
}


def status_seed002(snap: Snap) -> Snap:
    return {
        "job_id": snap["job_id"],
        "status": SEED002_STATUS[snap["status"]],
        "progress": float(snap["progress"] or 0.0),
        "current_step": snap["message"] or "",
        "result": snap["result"],
        "error": error_text(snap["error"]) if snap["status"] == S.FAILED else None,
        "created_at": snap["created_at"],
        "started_at": snap["started_at"],
        "completed_at": snap["ended_at"],
        "updated_at": snap["updated_at"],
    }


def _seed002_event(delivery: Delivery) -> bytes:
    """A stream event as seed 002 shows it; `error` only on failure and `result` only on
    completion (its client stops reading when an event has an `error` key)."""
    snap = json.loads(delivery.doc)
    event: Snap = {
        "job_id": snap["job_id"],
        "status": SEED002_STATUS[snap["status"]],
        "progress": float(snap["progress"] or 0.0),
        "current_step": snap["message"] or "",
        "timestamp": snap["updated_at"],
    }
    if snap["status"] == S.FAILED:
        event["error"] = error_text(snap["error"])
    if snap["status"] == S.FINISHED:
        event["result"] = snap["result"]
    return sse_event(delivery.seq, _json(event))


@router.get("/api/v1/jobs/status/{job_id}")
async def status_seed002_route(job_id: str, principal: CurrentPrincipal) -> dict[str, Any]:
    """Seed 002: the job's status (pending/running/completed/failed/cancelled); 404 if unknown."""
    read = noting_outage(await snapshot_for(job_id, principal.scope))
    return status_seed002(json.loads(read.doc))


@router.get("/api/v1/jobs/status/{job_id}/poll")
async def poll_seed002(
    job_id: str,
    principal: CurrentPrincipal,
    request: Request,
    timeout: PollTimeout = 30,
    current_status: Seed002Status | None = None,
) -> dict[str, Any]:
    """Seed 002: wait for the status to differ from `current_status` (or, without it, for any change)."""
    from api.live_feed import JobFeed, long_poll

    feed = await JobFeed.open(job_id, principal.scope, key_id=principal.key_id)
    try:
        first = feed.current.seq

        def is_news(item: Delivery) -> bool:
            if current_status is None:
                return item.seq > first
            return SEED002_STATUS[item.status] != current_status

        found = await long_poll(
            feed, timeout=poll_seconds(timeout, request), is_news=is_news, receive=request.receive
        )
    finally:
        feed.close()
    return status_seed002(json.loads(found.doc))


@router.get("/api/v1/jobs/status/{job_id}/stream", response_class=EventStream, status_code=200)
async def stream_seed002(
    job_id: str,
    principal: StreamPrincipal,
    request: Request,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    since: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    """Seed 002: server-sent events `data: {job_id, status, progress, current_step, timestamp}`."""
    from api.live_feed import JobFeed

    after = resume_point(last_event_id, since)
    feed = await JobFeed.open(job_id, principal.scope, key_id=principal.key_id)
    if feed.current.is_terminal and feed.current.seq <= after:
        feed.close()
        return Response(status_code=204)
    lambda_mode = under_lambda(request.scope)
    return EventStream(
        feed,
        since=after,
        render=lambda d: d.render(_seed002_event, _seed002_event),
        once=lambda_mode,
        max_seconds=LAMBDA_MAX_WAIT if lambda_mode else None,
    )


def _memory_mb() -> float:
    """This API process's resident memory in MB."""
    try:
        with open("/proc/self/statm") as statm:
            return round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return round(peak / (1e6 if sys.platform == "darwin" else 1e3), 1)


def _queue_stats(tenant: str | None) -> dict[str, Any]:
    """Seed 002's shape over the canonical report (`jobs.reporting.queue_stats`); ended jobs are those
    within the stats window (`CONVEYOR_STATS_WINDOW`, 24 h)."""
    from jobs.history.db import session_scope
    from jobs.reporting.queue_stats import queue_stats
    from jobs.state.redis_conn import get_redis

    client = get_redis()
    with session_scope() as session:
        report = queue_stats(session, client, tenant=tenant)
    totals = report.totals
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cpu = round(100.0 * load / (os.cpu_count() or 1), 1)
    return {
        "pending_jobs": totals.pending,
        "running_jobs": totals.running + totals.paused,
        "scheduled_jobs": totals.scheduled,
        "completed_jobs": totals.completed,
        "failed_jobs": totals.failed,
        "cancelled_jobs": totals.cancelled,
        "retrying_jobs": totals.retrying,
        "total_jobs": totals.total,
        "queue_type": "redis",
        "cache_size": int(client.dbsize()),
        "cpu_usage_percent": cpu,
        "memory_usage_mb": _memory_mb(),
        "active_workers": report.workers.active,
        "queue_health": {
            "status": report.health.status,
            "resource_utilization": "high" if cpu > 90 else "optimal",
            "limit_enforcement": "active",
            "reasons": [reason.message for reason in report.health.reasons],
        },
    }


@router.get("/api/v1/jobs/queue/stats")
def queue_stats_seed002(principal: CurrentPrincipal) -> dict[str, Any]:
    """Seed 002: job counts (your tenant's; every tenant's for an admin key), workers, health.
    `cpu_usage_percent` is the host's 1-minute load per core; `memory_usage_mb` this API process's."""
    return _queue_stats(principal.scope)


@router.post(
    "/api/v1/jobs/cancel/{job_id}", responses={202: {"description": "A running job was asked to stop."}}
)
def cancel_seed002(
    job_id: str, principal: CurrentPrincipal, session: SessionDep, redis: RedisDep
) -> Response:
    """Seed 002: cancel a running or pending job (409 for a job that already ended)."""
    from jobs.actions.control import cancel_job

    outcome = cancel_job(
        session=session, client=redis, job_id=job_id, tenant=principal.scope, by=principal.key_id
    )
    if outcome.done:
        return _message(200, f"Job {job_id} cancelled successfully")
    return _message(202, f"Job {job_id} cancellation requested: it stops at its next checkpoint")


@router.post("/api/v1/jobs/restart/{job_id}")
def restart_seed002(
    job_id: str, principal: CurrentPrincipal, session: SessionDep, redis: RedisDep
) -> Response:
    """Seed 002: restart a failed or cancelled job (409 for any other status)."""
    from jobs.actions.control import restart_job

    restart_job(session=session, client=redis, job_id=job_id, tenant=principal.scope, by=principal.key_id)
    return _message(200, f"Job {job_id} restarted successfully")


# --- seed 003: GET /analytics/summary?days=7 ---------------------------------------------------


class AnalyticsSeed003(BaseModel):
    """Seed 003's `AnalyticsOut`, flat: success over finished + failed, p95 of run times, the mean
    wait per queue, of the jobs that ended in [from_ts, to_ts)."""

    from_ts: datetime
    to_ts: datetime
    success_rate: float
    total_finished: int
    total_failed: int
    p95_run_ms: float
    avg_wait_ms_by_queue: dict[str, float]


@router.get("/analytics/summary", response_model=AnalyticsSeed003)
def analytics_summary_seed003(
    principal: CurrentPrincipal, session: SessionDep, days: Annotated[int, Query(ge=1, le=3660)] = 7
) -> AnalyticsSeed003:
    """Seed 003: the last ``days`` days' summary (your tenant's; every tenant's for an operator),
    from the same queries as `GET /api/v1/analytics/summary`. An empty range reports 0."""
    from datetime import timedelta

    from jobs.clock import utcnow
    from jobs.errors import InvalidRequest
    from jobs.reporting.analytics import Window, summary
    from jobs.settings import get_settings

    bound = get_settings().analytics_max_days
    if days > bound:
        raise InvalidRequest(f"`days` is at most {bound} (CONVEYOR_ANALYTICS_MAX_DAYS); got {days}.")
    end = utcnow()
    report = summary(session, Window(start=end - timedelta(days=days), end=end, tenant=principal.scope))
    totals = report.totals
    return AnalyticsSeed003(
        from_ts=report.from_,
        to_ts=report.to,
        success_rate=totals.success_rate or 0.0,
        total_finished=totals.finished,
        total_failed=totals.failed,
        p95_run_ms=float(totals.run_ms.p95 or 0),
        avg_wait_ms_by_queue={
            q.queue: round(q.wait_ms.avg, 3) for q in report.queues if q.wait_ms.avg is not None
        },
    )


def _message(status_code: int, message: str) -> Response:
    return Response(_json({"message": message}), status_code=status_code, media_type="application/json")
