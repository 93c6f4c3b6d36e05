"""A tenant's limits (issue 13): `GET/PUT /api/v1/tenants/{tenant}/limits`.

An operator key reads and sets any tenant's; an admin key reads its own tenant's; nothing else.
PUT changes the limits it names (``null`` puts one back to the setting's default) and leaves
the others as they are. Values are whole numbers (strings, fractions and booleans are refused,
not coerced); 0 means no limit where a limit allows it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from api.deps import CurrentPrincipal, RedisDep, SessionDep
from jobs.access.auth import TENANT_PATTERN, Principal, Role
from jobs.access.limits import BOUNDS, LIMIT_NAMES

router = APIRouter(prefix="/api/v1", tags=["limits"])

TenantPath = Annotated[
    str, Path(max_length=64, pattern=TENANT_PATTERN.pattern, description="The tenant's name.")
]


def _limit(name: str, text: str) -> Any:
    low, high = BOUNDS[name]
    return Field(default=None, ge=low, le=high, description=f"{text} ({low}-{high}; null: the default).")


class LimitsChange(BaseModel):
    """The limits to change; those left out stay as they are, ``null`` restores the default."""

    model_config = ConfigDict(extra="forbid")

    submits_per_minute: StrictInt | None = _limit(
        "submits_per_minute", "Jobs the tenant may submit a minute; 0: no limit"
    )
    submit_burst: StrictInt | None = _limit("submit_burst", "Submits the tenant may make at once")
    key_submits_per_minute: StrictInt | None = _limit(
        "key_submits_per_minute", "Jobs each of its keys may submit a minute; 0: no limit"
    )
    key_submit_burst: StrictInt | None = _limit("key_submit_burst", "Submits each key may make at once")
    max_waiting: StrictInt | None = _limit(
        "max_waiting", "Jobs it may have queued, scheduled or deferred; 0: no limit"
    )
    max_running: StrictInt | None = _limit(
        "max_running", "Jobs it may have running at once, over all workers; 0: no limit"
    )
    max_timeout_seconds: StrictInt | None = _limit(
        "max_timeout_seconds", "The longest `timeout` a submission may ask for"
    )


class TenantLimitsOut(BaseModel):
    tenant: str
    submits_per_minute: int
    submit_burst: int
    key_submits_per_minute: int
    key_submit_burst: int
    max_waiting: int
    max_running: int
    max_timeout_seconds: int
    overridden: list[str] = Field(
        description="The limits this tenant sets itself; the rest are the defaults."
    )
    defaults: dict[str, int] = Field(description="The settings' defaults (CONVEYOR_*).")
    updated_at: str | None = None
    updated_by: str | None = Field(default=None, description="The id of the key that last changed them.")
    waiting: int = Field(description="The tenant's jobs waiting now: what `max_waiting` counts.")


def _may_read(principal: Principal, tenant: str) -> None:
    if principal.role == Role.OPERATOR or (principal.role == Role.ADMIN and principal.tenant == tenant):
        return
    if principal.role == Role.ADMIN:
        raise HTTPException(403, f"This admin key reads only its own tenant's limits ({principal.tenant!r}).")
    raise HTTPException(403, "Reading limits needs an admin key (your own tenant) or an operator key.")


@router.get("/tenants/{tenant}/limits", response_model=TenantLimitsOut)
def get_limits(tenant: TenantPath, principal: CurrentPrincipal, session: SessionDep) -> Any:
    """The tenant's limits in force, which of them it overrides, the defaults, and its jobs waiting now."""
    from jobs.access.limits import stored_limits

    _may_read(principal, tenant)
    return _with_waiting(stored_limits(tenant, session=session).as_dict(), session)


@router.put("/tenants/{tenant}/limits", response_model=TenantLimitsOut)
def put_limits(
    tenant: TenantPath, body: LimitsChange, principal: CurrentPrincipal, session: SessionDep, redis: RedisDep
) -> Any:
    """Change the limits named in the body (operator keys only); answers the limits now in force."""
    from jobs.access.limits import set_limits

    if principal.role != Role.OPERATOR:
        raise HTTPException(403, "Only an operator key sets limits.")
    changes = {name: getattr(body, name) for name in LIMIT_NAMES if name in body.model_fields_set}
    limits = set_limits(tenant, changes, session=session, client=redis, by=principal.key_id)
    return _with_waiting(limits.as_dict(), session)


def _with_waiting(limits: dict[str, Any], session: Any) -> dict[str, Any]:
    from jobs.access.admission import count_waiting

    return {**limits, "waiting": count_waiting(session, tenant=limits["tenant"])}
