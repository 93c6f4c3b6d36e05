"""Submitting a job from the browser: pick a task, fill in its generated form, land on the job's page."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from jobs import lazy
from jobs.errors import InvalidPayload
from jobs.settings import get_settings
from jobs.tasks import get_task, load_tasks  # load_tasks imports the task modules on its first call
from web.payload_form import FormField, attach_errors, fields_for, read_form
from web.rendering import PageRoute, page
from web.session import ChangingSession, CurrentSession, WebSession

router = APIRouter(route_class=PageRoute, include_in_schema=False)

FORM_KEY = "idempotency_key"


def _tasks() -> list[dict[str, Any]]:
    settings = get_settings()
    return [
        {
            "name": spec.name,
            "description": spec.description,
            "queue": spec.queue or settings.default_queue,
            "timeout": spec.timeout or settings.job_timeout,
            "retries": spec.retries,
        }
        for spec in sorted(load_tasks().values(), key=lambda s: s.name)
    ]


def _form_page(
    request: Request,
    task: str,
    fields: list[FormField],
    *,
    errors: list[str] | None = None,
    idempotency_key: str | None = None,
    status_code: int = 200,
) -> Response:
    spec = get_task(task)  # UnknownTask: 404 naming the known tasks
    context = {
        "task": spec.name,
        "description": spec.description,
        "fields": fields,
        "errors": errors or [],
        "idempotency_key": idempotency_key or str(uuid.uuid4()),
    }
    return page(request, "submit.html", context, status_code=status_code)


@router.get("/jobs/new")
def choose_task(request: Request, session: CurrentSession) -> Response:
    """Every task, each linking to its form."""
    return page(request, "submit_index.html", {"tasks": _tasks()})


@router.get("/jobs/new/{task}")
def task_form(request: Request, task: str, session: CurrentSession) -> Response:
    """The task's form, generated from its payload schema."""
    return _form_page(request, task, fields_for(get_task(task).schema()))


def _submit(session: WebSession, task: str, payload: dict[str, Any], idempotency_key: str | None) -> str:
    with lazy.open_session() as db:  # the edge (run in the thread pool): SQL stays off the event loop
        submission = lazy.submit_job(
            session=db,
            client=lazy.get_redis(),
            tenant=session.tenant,
            owner=session.key_id,
            task=task,
            payload=payload,
            idempotency_key=idempotency_key,
        )
    return submission.job_id


@router.post("/jobs/new/{task}")
async def submit(request: Request, task: str, session: ChangingSession) -> Response:
    """Submit the form: 303 to the job's page, or the form again (422) with each error by its field.

    The form carries an idempotency key, so a double click or a resubmitted
    form returns the job the first one created.
    """
    spec = await run_in_threadpool(get_task, task)
    form = await request.form()
    values = {name: value for name, value in form.items() if isinstance(value, str)}
    key = values.get(FORM_KEY) or None
    if key is not None and (len(key) > 100 or "\x00" in key):  # not one this form made (no SQL holds NUL)
        key = None
    fields = fields_for(spec.schema())
    payload = read_form(fields, values)
    if any(f.error for f in fields):  # also show what the model says about the other fields
        try:
            spec.validate(payload)
        except InvalidPayload as exc:
            attach_errors([f for f in fields if not f.error], exc.extra.get("errors", []))
        return _form_page(request, task, fields, idempotency_key=key, status_code=422)
    try:
        job_id = await run_in_threadpool(_submit, session, spec.name, payload, key)
    except InvalidPayload as exc:
        rest = attach_errors(fields, exc.extra.get("errors", []))
        return _form_page(request, task, fields, errors=rest, idempotency_key=key, status_code=422)
    return RedirectResponse(f"{request.scope.get('root_path', '')}/jobs/{job_id}", status_code=303)
