"""A job's history record and its result (large results are served here, by reference)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentPrincipal, readable_tenant
from api.routes.jobs import read_snapshot
from jobs.errors import JobNotFound, ResultGone, ResultNotReady
from jobs.records import JobRecord, job_record
from jobs.snapshot import JobSnapshot
from jobs.status import JobStatus

# The SQL and Redis layers load inside the routes that use them (Lambda cold start).

router = APIRouter(prefix="/api/v1", tags=["history"])


@router.get("/jobs/{job_id}/record", response_model=JobRecord)
def get_record(job_id: str, principal: CurrentPrincipal) -> JobRecord:
    """The job's full history record from SQL: params (redacted), tags, trace id, every
    timestamp, retries and the derived wait_ms / run_ms. SQL trails the live snapshot by
    up to a fraction of a second while a job runs."""
    from jobs.db import session_scope
    from jobs.store import get_job

    with session_scope() as session:
        job = get_job(session, job_id=job_id, tenant=readable_tenant(principal))
        if job is None:
            raise JobNotFound(job_id)
        return job_record(job)


def _referenced(job_id: str, attempt: int) -> bytes | None:
    from jobs.db import session_scope
    from jobs.redis_conn import get_redis
    from jobs.results import blob_key, stored_result

    with session_scope() as session:
        body = stored_result(session, job_id=job_id, attempt=attempt)
    if body is None:  # the recorder has not moved it into SQL yet
        body = get_redis().get(blob_key(job_id, attempt))
    return body


@router.get(
    "/jobs/{job_id}/result",
    responses={
        200: {"content": {"application/json": {}}, "description": "The result, as the task returned it."},
        409: {"description": "The job has not finished (or did not succeed)."},
        410: {"description": "The stored result is gone."},
    },
)
async def get_result(job_id: str, principal: CurrentPrincipal) -> Response:
    """A finished job's result, inline or stored by reference (`result_ref` in the snapshot)."""
    doc, _ = await read_snapshot(job_id, readable_tenant(principal))
    snapshot = JobSnapshot.model_validate_json(doc)
    if snapshot.status != JobStatus.FINISHED:
        raise ResultNotReady(f"Job {job_id} is {snapshot.status.value}; only a finished job has a result.")
    if snapshot.result_ref is None:
        from jobs.results import encode_result

        return Response(content=encode_result(snapshot.result), media_type="application/json")
    body = await run_in_threadpool(_referenced, job_id, snapshot.attempt)
    if body is None:
        raise ResultGone(f"The stored result of job {job_id} is no longer available.")
    headers = {"ETag": f'"{snapshot.result_ref.sha256}"', "Cache-Control": "private, max-age=3600"}
    return Response(content=body, media_type="application/json", headers=headers)
