"""Steering a job: cancel, pause, resume, restart. Thin routes over `jobs.actions.control`.

Each answers with the job's snapshot: `200` when the change is in effect,
`202` when the running job was asked and obeys at its next checkpoint. Another
tenant's job is `404`; an action the job's status does not allow is `409`,
saying what the status is and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, Field

from api.deps import CurrentPrincipal, RedisDep, SessionDep
from jobs import lazy
from jobs.access.auth import Principal
from jobs.snapshot import JobSnapshot

if TYPE_CHECKING:
    from redis import Redis
    from sqlmodel import Session

    from jobs.actions.control import ControlOutcome

router = APIRouter(prefix="/api/v1", tags=["control"])

RESPONSES: dict[int | str, dict[str, str]] = {
    202: {"description": "Asked: the running job obeys at its next checkpoint."},
    404: {"description": "No such job (for this tenant)."},
    409: {"description": "Not allowed in the job's status; the body says which actions are."},
}


class ControlRequest(BaseModel):
    reason: str | None = Field(default=None, max_length=500, description="Kept in the job's history.")


OptionalBody = Annotated[ControlRequest | None, Body()]


def _steer(
    act: Callable[..., ControlOutcome],
    job_id: str,
    principal: Principal,
    session: Session,
    redis: Redis,
    **options: str | None,
) -> Response:
    """Ask ``act`` of the job as ``principal``, with the request's session and Redis client."""
    outcome = act(
        session=session, client=redis, job_id=job_id, tenant=principal.scope, by=principal.key_id, **options
    )
    return Response(
        content=outcome.doc,
        status_code=200 if outcome.done else 202,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


@router.post("/jobs/{job_id}/cancel", response_model=JobSnapshot, responses=RESPONSES)
def cancel(
    job_id: str, principal: CurrentPrincipal, session: SessionDep, redis: RedisDep, body: OptionalBody = None
) -> Response:
    """Cancel a job. A waiting job is canceled at once (200); a running one is asked to stop (202)
    and is stopped by force if it has not within the grace period."""
    return _steer(lazy.cancel_job, job_id, principal, session, redis, reason=body.reason if body else None)


@router.post("/jobs/{job_id}/pause", response_model=JobSnapshot, responses=RESPONSES)
def pause(job_id: str, principal: CurrentPrincipal, session: SessionDep, redis: RedisDep) -> Response:
    """Ask a running job to hold at its next checkpoint (it shows `paused` once it does)."""
    return _steer(lazy.pause_job, job_id, principal, session, redis)


@router.post("/jobs/{job_id}/resume", response_model=JobSnapshot, responses=RESPONSES)
def resume(job_id: str, principal: CurrentPrincipal, session: SessionDep, redis: RedisDep) -> Response:
    """Let a paused job continue (202), or withdraw a pause it has not reached yet (200)."""
    return _steer(lazy.resume_job, job_id, principal, session, redis)


@router.post("/jobs/{job_id}/restart", response_model=JobSnapshot, responses=RESPONSES)
def restart(
    job_id: str, principal: CurrentPrincipal, session: SessionDep, redis: RedisDep, body: OptionalBody = None
) -> Response:
    """Run a failed or canceled job again under the same id, as attempt + 1."""
    return _steer(lazy.restart_job, job_id, principal, session, redis, reason=body.reason if body else None)
