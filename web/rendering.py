"""Rendering pages and fragments: one lazily built Jinja2 environment, security headers, error pages.

Jinja2 is imported and the environment built on the first render, never at
import: the Lambda cold start pays for neither (docs/decisions.md, issue 6).
Autoescaping is on for every template, so job data (results, errors,
messages) can only ever render as text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

from jobs.clock import parse_iso
from jobs.errors import ConveyorError
from jobs.settings import get_settings
from web.session import CsrfRefused, SignInRequired

if TYPE_CHECKING:
    from jinja2 import Environment

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"

# htmx 2 works under this policy: no inline script or style, no eval (`allowEval: false` in the
# htmx-config meta tag, and so no hx-on, hx-vars or trigger filters), indicator styles off.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Vary": "Cookie, HX-Request",
}
# Swap the answers a page must show (a 409 refusal, a 422 form) instead of dropping them.
HTMX_CONFIG = {
    "includeIndicatorStyles": False,
    "allowEval": False,
    "allowScriptTags": False,
    "historyCacheSize": 0,
    "defaultSwapStyle": "outerHTML",
    "responseHandling": [
        {"code": "204", "swap": False},
        {"code": "304", "swap": False},
        {"code": "[23]..", "swap": True},
        {"code": "(409|422)", "swap": True, "error": False},
        {"code": "[45]..", "swap": False, "error": True},
    ],
}

_environment: Environment | None = None
_version: str | None = None


def environment() -> Environment:
    """The Jinja2 environment, built on first use."""
    global _environment
    if _environment is None:
        from jinja2 import Environment, FileSystemLoader, StrictUndefined

        env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=StrictUndefined,
            auto_reload=get_settings().environment == "development",
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(
            when=format_when,
            duration=format_duration,
            percent=format_percent,
            size=format_size,
            pretty=pretty_json,
        )
        env.globals["htmx_config"] = json.dumps(HTMX_CONFIG, separators=(",", ":"))
        env.globals["version"] = ui_version()
        _environment = env
    return _environment


def ui_version() -> str:
    """A digest of the templates and static files: part of every ETag, so a deploy busts them."""
    global _version
    if _version is None:
        digest = hashlib.sha256()
        for path in sorted([*TEMPLATES.glob("*.html"), *(TEMPLATES.parent / "static").glob("*")]):
            if not path.is_file():  # static/apidocs: the API docs' assets, versioned on their own
                continue
            digest.update(path.name.encode() + path.read_bytes())
        _version = digest.hexdigest()[:8]
    return _version


def render_text(template: str, context: dict[str, Any]) -> str:
    return environment().get_template(template).render(context)


def page(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    cache: str = "no-store",
) -> HTMLResponse:
    """A rendered template with the security headers. Pages are `no-store`: they embed the CSRF token."""
    session = getattr(request.state, "web_session", None)
    values = {
        "request": request,
        "base": request.scope.get("root_path", ""),
        "session": session,
        "path": request.url.path,
        **(context or {}),
    }
    body = render_text(template, values)
    response = HTMLResponse(
        body, status_code=status_code, headers={**SECURITY_HEADERS, "Cache-Control": cache}
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def not_modified(etag: str) -> Response:
    return Response(
        status_code=304, headers={"ETag": etag, "Cache-Control": "private, no-cache", "Vary": "Cookie"}
    )


def etag_matches(etag: str, if_none_match: str | None) -> bool:
    return if_none_match is not None and etag in [tag.strip() for tag in if_none_match.split(",")]


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def safe_next(target: str | None) -> str:
    """A local path to go to after sign-in (never another site: `//host` and `/\\host` are refused)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/jobs"
    return target


def error_page(request: Request, status_code: int, title: str, message: str) -> HTMLResponse:
    return page(request, "error.html", {"title": title, "message": message}, status_code=status_code)


def _sign_in_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = f"{request.scope.get('root_path', '')}/sign-in?next={quote(safe_next(target), safe='/')}"
    if is_htmx(request):  # a fragment: send the whole page to the sign-in form
        return Response(status_code=401, headers={"HX-Redirect": location, **SECURITY_HEADERS})
    return RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})


def _infrastructure_error(exc: Exception) -> str | None:
    """The store that failed, for database and Redis outages (their modules are loaded by then)."""
    module = type(exc).__module__
    if module.startswith("sqlalchemy") or module.startswith("psycopg"):
        return "The database"
    if module.startswith("redis"):
        return "Redis"
    return None


class PageRoute(APIRoute):
    """An APIRoute whose failures are pages: sign-in redirects, CSRF refusals, domain errors, outages."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                return _sign_in_redirect(request)
            except CsrfRefused:
                return error_page(
                    request,
                    403,
                    "This form has expired",
                    "The request did not carry a valid security token. Reload the page and try again.",
                )
            except ConveyorError as exc:
                return error_page(request, exc.status_code, "That did not work", exc.message)
            except RequestValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                    for e in exc.errors()
                )
                return error_page(request, 422, "Some values are not valid", problems)
            except Exception as exc:
                store = _infrastructure_error(exc)
                if store is None:
                    raise
                log.error("page %s: %s unavailable: %s", request.url.path, store, exc)
                return error_page(
                    request,
                    503,
                    "Temporarily unavailable",
                    f"{store} is unavailable. Nothing was changed; retry shortly.",
                )

        return handle


# --- filters ------------------------------------------------------------------------------------


def format_when(value: datetime | str | None) -> str:
    """`2026-11-23 08:43:17 UTC`, or an em dash."""
    when = parse_iso(value) if isinstance(value, str) else value
    if when is None:
        return "—"
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds: float | None) -> str:
    """`0.4 s`, `12 s`, `3 min 5 s`, `2 h 10 min`."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(whole, 3600)
    return f"{hours} h {rest // 60} min" if rest // 60 else f"{hours} h"


def format_percent(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f} %"


def format_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)
