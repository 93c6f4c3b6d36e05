"""Request dependencies: who is calling, as an `Annotated` alias routes can declare."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
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
