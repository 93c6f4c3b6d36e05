"""Request dependencies: who is calling, what they may see, and the stores a route passes on.

`SessionDep` and `RedisDep` open the collaborators the job domain takes as keyword
arguments (``submit_job(session=..., redis=...)``): the route is the edge that opens them.
Both come from `jobs.lazy`, so declaring them imports no store client before a request
needs one (the Lambda cold start). The session is a sync dependency: FastAPI opens and
closes it in its thread pool, and the sync routes (or `run_in_threadpool`) that use it keep
SQL off the event loop.

Every route takes `Authorization: Bearer <key>`. Streams (SSE, WebSocket) also
take `?access_token=<key>`, because a browser's EventSource and WebSocket
cannot set headers; see docs/decisions.md for what that costs (URLs get logged).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket

from jobs import lazy
from jobs.access.auth import Principal, authenticate, cached_principal

if TYPE_CHECKING:
    from redis import Redis
    from sqlmodel import Session

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")

UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}
MISSING_KEY = (
    "Missing API key. Send it as `Authorization: Bearer <key>` (create one with `conveyor keys create`)."
)
MISSING_STREAM_KEY = (
    "Missing API key. Send it as `Authorization: Bearer <key>`, or as `?access_token=<key>` "
    "from a browser's EventSource or WebSocket."
)
INVALID_KEY = "Invalid or revoked API key."


async def principal_for(key: str) -> Principal | None:
    """The principal a key stands for, or None (verified keys are cached for 30 s)."""
    return cached_principal(key) or await run_in_threadpool(authenticate, key)


async def _require(request: Request, key: str | None, missing: str) -> Principal:
    if not key:
        raise HTTPException(status_code=401, detail=missing, headers=UNAUTHORIZED_HEADERS)
    principal = await principal_for(key)
    if principal is None:
        raise HTTPException(status_code=401, detail=INVALID_KEY, headers=UNAUTHORIZED_HEADERS)
    request.state.principal = principal
    return principal


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, from `Authorization: Bearer <key>`; 401 when missing or not valid."""
    return await _require(request, credentials.credentials if credentials else None, MISSING_KEY)


async def stream_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    access_token: Annotated[
        str | None,
        Query(
            max_length=512,
            description="The API key, for EventSource clients that cannot send headers. "
            "Prefer the header: URLs end up in logs.",
        ),
    ] = None,
) -> Principal:
    """The caller of a stream: the Authorization header, else `?access_token=`."""
    key = credentials.credentials if credentials else access_token
    return await _require(request, key, MISSING_STREAM_KEY)


async def websocket_principal(websocket: WebSocket) -> Principal | None:
    """The caller of a WebSocket (Authorization header, else `?access_token=`), or None."""
    header = websocket.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    key = credentials.strip() if scheme.lower() == "bearer" else ""
    key = key or websocket.query_params.get("access_token", "")
    if not key or len(key) > 512:
        return None
    return await principal_for(key)


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
    if principal.scope is not None:
        raise HTTPException(
            status_code=403,
            detail=f"This key sees only its own tenant ({principal.tenant!r}); "
            "an operator key may pass tenant=<name> or tenant=*.",
        )
    return None if requested == ALL_TENANTS else requested


def readable_tenant(principal: Principal) -> str | None:
    """The tenant a by-id read is limited to: the caller's own, or None (any) for operators."""
    return principal.scope


StreamPrincipal = Annotated[Principal, Depends(stream_principal)]


def db_session() -> Iterator[Session]:
    """A session for the request, closed (uncommitted work rolled back) when it is done."""
    with lazy.open_session() as session:
        yield session


async def redis_client() -> Redis:
    """The process's Redis client (creating it connects nothing, so no thread is needed)."""
    return lazy.get_redis()


SessionDep = Annotated["Session", Depends(db_session)]
RedisDep = Annotated["Redis", Depends(redis_client)]
