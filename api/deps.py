"""Request dependencies: who is calling (an `Annotated` alias routes can declare) and what they may see."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from jobs.auth import Principal, authenticate, cached_principal

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")

UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, from `Authorization: Bearer <key>`; 401 when missing or not valid."""
    key = credentials.credentials if credentials else None
    if not key:
        raise HTTPException(
            status_code=401,
            detail="Missing API key. Send it as `Authorization: Bearer <key>` "
            "(create one with `conveyor keys create`).",
            headers=UNAUTHORIZED_HEADERS,
        )
    principal = cached_principal(key) or await run_in_threadpool(authenticate, key)
    if principal is None:
        raise HTTPException(
            status_code=401, detail="Invalid or revoked API key.", headers=UNAUTHORIZED_HEADERS
        )
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


ALL_TENANTS = "*"

TenantParam = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Admins: another tenant's name, or `*` for every tenant (default: your own). "
        "Members may only name their own tenant (403 otherwise).",
    ),
]


def tenant_scope(principal: Principal, requested: str | None) -> str | None:
    """The tenant a query may cover: the caller's own by default; any (or all, None) for admins.

    A member naming another tenant gets 403 rather than being silently shown their own.
    """
    if requested is None or requested == principal.tenant:
        return principal.tenant
    if not principal.is_admin:
        raise HTTPException(
            status_code=403,
            detail=f"Member keys see only their own tenant ({principal.tenant!r}); "
            "an admin key may pass tenant=<name> or tenant=*.",
        )
    return None if requested == ALL_TENANTS else requested


def readable_tenant(principal: Principal) -> str | None:
    """The tenant a by-id read is limited to: the caller's own, or None (any) for admins."""
    return None if principal.is_admin else principal.tenant
