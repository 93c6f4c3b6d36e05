"""The webhooks page: an admin's endpoints for the signed-in tenant, with their latest deliveries.

Registering shows the signing secret once, on the page that answers the form. Like the other
pages, it shows the signed-in tenant only (docs/decisions.md 6.5), operators included; the API
manages all-tenant endpoints.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from jobs import lazy
from jobs.errors import Forbidden
from web.rendering import PageRoute, page
from web.session import ChangingSession, CurrentSession, WebSession

router = APIRouter(route_class=PageRoute, include_in_schema=False)

RECENT = 5


def _admin(session: WebSession) -> None:
    if not session.is_admin:
        raise Forbidden("Webhooks are managed with an admin key; sign in with one.")


def _listing(tenant: str) -> list[dict[str, Any]]:
    from jobs.webhooks.outbox import list_deliveries
    from jobs.webhooks.registry import list_webhooks

    with lazy.open_session() as db:
        return [
            {"hook": hook, "deliveries": list_deliveries(db, webhook_id=hook.id, limit=RECENT)}
            for hook in list_webhooks(db, scope=tenant)
        ]


def _context(tenant: str, **extra: Any) -> dict[str, Any]:
    from jobs.webhooks.registry import EVENTS

    return {"items": _listing(tenant), "events": EVENTS, "created": None, "secret": None, **extra}


@router.get("/webhooks")
async def webhooks_page(request: Request, session: CurrentSession) -> Response:
    _admin(session)
    return page(request, "webhooks.html", await run_in_threadpool(_context, session.tenant))


def _create(session: WebSession, url: str, events: list[str], description: str) -> tuple[Any, str]:
    from jobs.webhooks.registry import create_webhook

    with lazy.open_session() as db:
        row, secret = create_webhook(
            db, tenant=session.tenant, url=url, events=events, by=session.key_id, description=description
        )
        db.commit()
        db.refresh(row)
        return row, secret


@router.post("/webhooks")
async def webhooks_create(request: Request, session: ChangingSession) -> Response:
    """Register from the form; the answer is the page with the new secret shown once."""
    _admin(session)
    form = await request.form()
    url = str(form.get("url") or "")[:2000]
    events = [str(e) for e in form.getlist("events")][:8]
    description = str(form.get("description") or "")[:200]
    row, secret = await run_in_threadpool(_create, session, url, events, description)
    context = await run_in_threadpool(_context, session.tenant, created=row, secret=secret)
    return page(request, "webhooks.html", context, status_code=201)


def _delete(session: WebSession, webhook_id: str) -> None:
    from jobs.webhooks.registry import delete_webhook

    with lazy.open_session() as db:
        delete_webhook(db, webhook_id=webhook_id, scope=session.tenant)
        db.commit()


@router.post("/webhooks/{webhook_id}/delete")
async def webhooks_delete(request: Request, webhook_id: str, session: ChangingSession) -> Response:
    _admin(session)
    await run_in_threadpool(_delete, session, webhook_id[:40])
    return RedirectResponse(f"{request.scope.get('root_path', '')}/webhooks", status_code=303)
