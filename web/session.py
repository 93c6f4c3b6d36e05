"""Signed-in sessions for the pages: a signed cookie, its CSRF token, and the checks on each request.

The cookie holds no key. It holds the key's id, tenant and role, a random
session id and a digest of the key's stored hash, signed and timestamped by
itsdangerous's `TimestampSigner` (HMAC-SHA256) under a key derived from
`CONVEYOR_SECRET_KEY` (see docs/decisions.md, issues 6 and 12). Each request
re-checks that the key is still active (`jobs.access.auth.active_key`, cached 30 s),
so revoking a key signs its sessions out within that time.

CSRF: every state-changing request carries a token, HMAC(secret, session id),
in the `X-CSRF-Token` header (htmx sends it from `hx-headers` on <body>) or
in a `csrf_token` form field (forms without JavaScript). Before sign-in, a
short-lived `conveyor_signin` cookie plays the session id's part, so a
cross-site form cannot sign a victim into someone else's tenant.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from itsdangerous import BadSignature, Signer, TimestampSigner
from starlette.concurrency import run_in_threadpool

from jobs.access.auth import active_key, cached_active_key
from jobs.settings import get_settings

SESSION_COOKIE = "conveyor_session"
SIGN_IN_COOKIE = "conveyor_signin"
SIGN_IN_MAX_AGE = 3600
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in page, fragments answer 401 with HX-Redirect."""


class CsrfRefused(Exception):
    """A state-changing request without a valid CSRF token (403)."""


@dataclass(frozen=True)
class WebSession:
    """Who is signed in, and the CSRF token their pages carry."""

    key_id: str
    tenant: str
    role: str
    issued_at: int
    sid: str
    # jobs.access.auth.session_binding of the key's stored hash, checked on every request.
    binding: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role in ("admin", "operator")

    @property
    def scope(self) -> str | None:
        """The tenant whose jobs the pages show (None: every tenant), by jobs.access.auth.job_scope."""
        from jobs.access.auth import job_scope

        return job_scope(self.role, self.tenant)

    @property
    def csrf_token(self) -> str:
        return csrf_token_for(self.sid)

    @property
    def tag(self) -> str:
        """A short stand-in for the session in ETags (pages embed its CSRF token)."""
        return _mac("etag", self.sid)[:10]


def _secret() -> bytes:
    """A key for the pages alone, derived from the app's secret (one secret, several uses)."""
    return hmac.new(get_settings().secret_key.encode(), b"conveyor web sessions", hashlib.sha256).digest()


def _mac(purpose: str, text: str) -> str:
    digest = hmac.new(_secret(), f"{purpose}|{text}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _session_signer() -> TimestampSigner:
    """Signs the session cookie as `<payload>.<timestamp>.<signature>`; the timestamp is the
    issue time, which itsdangerous checks against the max age."""
    return TimestampSigner(_secret(), salt="session", digest_method=hashlib.sha256)


def _sign_in_signer() -> Signer:
    return Signer(_secret(), salt="sign-in", digest_method=hashlib.sha256)


def csrf_token_for(sid: str) -> str:
    return _mac("csrf", sid)


def seal(session: WebSession) -> str:
    """The cookie value for ``session``, signed now (sessions are sealed as they are made)."""
    payload = {"k": session.key_id, "t": session.tenant, "r": session.role, "s": session.sid}
    payload["b"] = session.binding
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    return _session_signer().sign(body).decode()


def unseal(value: str) -> WebSession | None:
    """The session a cookie value stands for, or None (bad signature, malformed, expired)."""
    try:
        body, signed_at = _session_signer().unsign(
            value, max_age=get_settings().session_max_age, return_timestamp=True
        )
        data: dict[str, Any] = json.loads(_unb64(body.decode()))
        return WebSession(
            key_id=str(data["k"]),
            tenant=str(data["t"]),
            role=str(data["r"]),
            issued_at=int(signed_at.timestamp()),
            sid=str(data["s"]),
            binding=str(data["b"]),
        )
    except (BadSignature, ValueError, KeyError, TypeError, binascii.Error):
        return None


def new_session(*, key_id: str, tenant: str, role: str, binding: str) -> WebSession:
    return WebSession(
        key_id=key_id,
        tenant=tenant,
        role=role,
        issued_at=int(time.time()),
        sid=secrets.token_urlsafe(16),
        binding=binding,
    )


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, session: WebSession) -> None:
    """HttpOnly, SameSite=Lax, Secure over https; lives as long as the session may."""
    response.set_cookie(
        SESSION_COOKIE,
        seal(session),
        max_age=get_settings().session_max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=is_https(request),
    )
    response.delete_cookie(SIGN_IN_COOKIE, path="/", httponly=True, samesite="lax", secure=is_https(request))


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=is_https(request))


def sign_in_nonce(request: Request) -> tuple[str, bool]:
    """The sign-in form's nonce from its cookie, or a new one (True: the cookie must be set)."""
    value = request.cookies.get(SIGN_IN_COOKIE, "")
    try:
        nonce = _sign_in_signer().unsign(value).decode() if value else ""
    except BadSignature:
        nonce = ""
    if nonce:
        return nonce, False
    return secrets.token_urlsafe(16), True


def set_sign_in_cookie(response: Response, request: Request, nonce: str) -> None:
    response.set_cookie(
        SIGN_IN_COOKIE,
        _sign_in_signer().sign(nonce).decode(),
        max_age=SIGN_IN_MAX_AGE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=is_https(request),
    )


async def presented_csrf_token(request: Request) -> str:
    """The token a request carries: the header (htmx), else the form field."""
    token = request.headers.get(CSRF_HEADER)
    if token:
        return token
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


def check_csrf(expected: str, presented: str) -> None:
    if not presented or not hmac.compare_digest(expected, presented):
        raise CsrfRefused


async def current_session(request: Request) -> WebSession:
    """The signed-in session, re-checked against the key's revocation; SignInRequired otherwise."""
    value = request.cookies.get(SESSION_COOKIE)
    session = unseal(value) if value else None
    if session is None:
        raise SignInRequired
    hit = cached_active_key(session.key_id)
    principal = hit[0] if hit is not None else await run_in_threadpool(active_key, session.key_id)
    if (
        principal is None
        or principal.tenant != session.tenant
        or principal.role.value != session.role
        or not session.binding
        or not hmac.compare_digest(principal.binding, session.binding)
    ):
        raise SignInRequired
    request.state.web_session = session
    return session


async def csrf_checked_session(
    session: Annotated[WebSession, Depends(current_session)], request: Request
) -> WebSession:
    """The session of a state-changing request, whose CSRF token must match (403 otherwise)."""
    check_csrf(session.csrf_token, await presented_csrf_token(request))
    return session


CurrentSession = Annotated[WebSession, Depends(current_session)]
ChangingSession = Annotated[WebSession, Depends(csrf_checked_session)]
