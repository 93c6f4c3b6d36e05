"""Bulk actions by filter: `POST /api/v1/jobs/bulk/{cancel|restart|delete}` (thin, over `jobs.actions.bulk`).

Without ``"dry_run": false`` the route only counts: a caller sees how many jobs a filter
reaches before acting on them. Cancel and restart are open to every role, as they are one
job at a time; deleting history needs an admin key. Registered before the per-job control
routes, whose `/jobs/{job_id}/cancel` would otherwise take `bulk` for a job id.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path
from pydantic import AwareDatetime, BaseModel, Field

from api.deps import CurrentPrincipal, RedisDep, SessionDep, tenant_scope
from jobs.lazy_model import LazyModel
from jobs.status import JobStatus

router = APIRouter(prefix="/api/v1", tags=["control"])


class BulkFilter(BaseModel):
    task: str | None = Field(default=None, max_length=100)
    queue: str | None = Field(default=None, max_length=64)
    status: list[JobStatus] = Field(default_factory=list, max_length=8)
    tag: str | None = Field(default=None, max_length=64)
    error_signature: str | None = Field(default=None, max_length=255)
    error_type: str | None = Field(default=None, max_length=200)
    batch_id: str | None = Field(default=None, max_length=64)
    created_after: AwareDatetime | None = None
    created_before: AwareDatetime | None = None
    ended_after: AwareDatetime | None = None
    ended_before: AwareDatetime | None = None


class BulkRequest(BaseModel):
    filter: BulkFilter = Field(default_factory=BulkFilter)
    dry_run: bool = Field(default=True, description="Only count (the default); false acts.")
    limit: int = Field(default=1000, ge=1, le=10_000, description="At most this many jobs per call.")
    reason: str | None = Field(default=None, max_length=500, description="Kept in each job's history.")
    tenant: str | None = Field(default=None, max_length=64, description="Operators: a tenant, or `*`.")


class BulkError(LazyModel):
    job_id: str
    detail: str


class BulkResult(LazyModel):
    action: str
    dry_run: bool
    matched: int = Field(description="Jobs the filter reaches for this action now.")
    done: int
    skipped: int = Field(description="Matched, but their status no longer allowed it when their turn came.")
    errors: list[BulkError]
    job_ids: list[str]


@router.post("/jobs/bulk/{action}", response_model=BulkResult)
def bulk(
    action: Annotated[Literal["cancel", "restart", "delete"], Path()],
    body: BulkRequest,
    principal: CurrentPrincipal,
    session: SessionDep,
    redis: RedisDep,
) -> BulkResult:
    """Cancel live jobs, restart failed or canceled ones, or delete ended ones, by filter
    (task, queue, status, tag, error signature or type, created/ended time range)."""
    from jobs.actions.bulk import JobFilter, bulk_act

    if action == "delete" and not principal.is_admin:
        raise HTTPException(status_code=403, detail="Deleting jobs in bulk needs an admin key.")
    spec = JobFilter(**body.filter.model_dump())
    outcome = bulk_act(
        session=session,
        client=redis,
        action=action,
        spec=spec,
        tenant=tenant_scope(principal, body.tenant),
        by=principal.key_id,
        dry_run=body.dry_run,
        limit=body.limit,
        reason=body.reason,
    )
    return BulkResult(
        action=outcome.action,
        dry_run=outcome.dry_run,
        matched=outcome.matched,
        done=outcome.done,
        skipped=outcome.skipped,
        errors=[BulkError(**e) for e in outcome.errors],
        job_ids=outcome.job_ids,
    )
