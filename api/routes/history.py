"""A job's history record and its result (large results are served here, by reference)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import CurrentPrincipal, readable_tenant
from api.outages import noting_outage
from jobs.errors import JobNotFound
from jobs.history.records import JobRecord, job_record
from jobs.state.reads import result_of, snapshot_for

# The SQL and Redis layers load inside the routes that use them (Lambda cold start).

router = APIRouter(prefix="/api/v1", tags=["history"])


@router.get("/jobs/{job_id}/record", response_model=JobRecord)
def get_record(job_id: str, principal: CurrentPrincipal) -> JobRecord:
    """The job's full history record from SQL: params (redacted), tags, trace id, every
    timestamp, retries and the derived wait_ms / run_ms. SQL trails the live snapshot by
    up to a fraction of a second while a job runs."""
    from jobs.history.db import session_scope
    from jobs.history.store import get_job

    with session_scope() as session:
        job = get_job(session, job_id=job_id, tenant=readable_tenant(principal))
        if job is None:
            raise JobNotFound(job_id)
        return job_record(job)


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
    read = noting_outage(await snapshot_for(job_id, readable_tenant(principal)))
    result = await result_of(job_id, read)
    return Response(content=result.body, media_type="application/json", headers=result.cache_headers)
