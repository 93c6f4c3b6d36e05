"""Signing in with an API key, and out again."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from jobs.access.auth import authenticate
from web.rendering import PageRoute, page, safe_next
from web.session import (
    ChangingSession,
    check_csrf,
    clear_session_cookie,
    csrf_token_for,
    new_session,
    set_session_cookie,
    set_sign_in_cookie,
    sign_in_nonce,
)

router = APIRouter(route_class=PageRoute, include_in_schema=False)

MAX_KEY_LENGTH = 512


def _form(request: Request, next_path: str, *, error: str | None = None, status_code: int = 200) -> Response:
    nonce, fresh = sign_in_nonce(request)
    context = {"next": next_path, "csrf_token": csrf_token_for(nonce), "error": error}
    response = page(request, "sign_in.html", context, status_code=status_code)
    if fresh:
        set_sign_in_cookie(response, request, nonce)
    return response


@router.get("/sign-in")
def sign_in_page(request: Request, next: Annotated[str | None, Query(max_length=2000)] = None) -> Response:
    """The sign-in form."""
    return _form(request, safe_next(next))


@router.post("/sign-in")
async def sign_in(
    request: Request,
    api_key: Annotated[str, Form(max_length=MAX_KEY_LENGTH)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/jobs",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Check the key (`jobs.access.auth.authenticate`), then set the session cookie and go on."""
    target = safe_next(next)
    nonce, fresh = sign_in_nonce(request)
    if fresh:
        return _form(request, target, error="Your sign-in form expired. Please try again.", status_code=403)
    check_csrf(csrf_token_for(nonce), csrf_token)
    key = api_key.strip()
    principal = await run_in_threadpool(authenticate, key) if key else None
    if principal is None:
        message = "Enter an API key." if not key else "That API key is not valid, or it was revoked."
        return _form(request, target, error=message, status_code=401)
    session = new_session(
        key_id=principal.key_id, tenant=principal.tenant, role=principal.role.value, binding=principal.binding
    )
    response = RedirectResponse(f"{request.scope.get('root_path', '')}{target}", status_code=303)
    set_session_cookie(response, request, session)
    return response


@router.post("/sign-out")
def sign_out(request: Request, session: ChangingSession) -> Response:
    """Forget the session cookie (the key itself stays valid; revoke it with `conveyor keys revoke`)."""
    response = RedirectResponse(f"{request.scope.get('root_path', '')}/sign-in", status_code=303)
    clear_session_cookie(response, request)
    return response
