"""Batches in the browser: the list, a batch's page (one progress bar, the counts, a paged table of
its jobs), cancel and restart, and submitting a batch from a JSON Lines file.

The batch page has one poller, its live part (`/batches/{id}/live`): it answers 304 while the
batch's seq (the sum of its jobs' seq) is unchanged and drops its trigger once the batch ended,
as the job page does. SQL, Redis and RQ code is imported inside the routes (the cold start).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from jobs import lazy
from jobs.errors import ConveyorError
from jobs.status import JobStatus
from web.job_view import FAST, SLOW, view_of
from web.rendering import PageRoute, etag_matches, is_htmx, not_modified, page, ui_version
from web.session import ChangingSession, CurrentSession, WebSession

if TYPE_CHECKING:
    from jobs.state.batch_state import BatchSnapshot

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 25
RECENT = 5
BatchAction = Literal["cancel", "restart"]
FILE_FIELD = "jobs_file"


class BatchView:
    """A batch snapshot as the templates show it (the progress-bar macro reads a job's names)."""

    def __init__(self, snapshot: BatchSnapshot) -> None:
        self.s = snapshot
        self.batch_id = snapshot.batch_id
        self.short_id = snapshot.batch_id[:8]
        self.status = snapshot.status
        self.is_terminal = snapshot.status.is_terminal
        self.percent = int(snapshot.progress)
        self.message = None
        self.counts = [(s.value, snapshot.counts.get(s.value, 0)) for s in JobStatus]
        self.running = snapshot.counts.get("started", 0) + snapshot.counts.get("paused", 0)
        self.restartable = snapshot.counts.get("failed", 0) + snapshot.counts.get("canceled", 0)
        self.open = sum(n for status, n in self.counts if status not in ("finished", "failed", "canceled"))

    @property
    def poll_trigger(self) -> str | None:
        if self.is_terminal:
            return None
        return FAST if self.running or self.status == JobStatus.STARTED else SLOW

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s, name)


def _read(batch_id: str, tenant: str | None) -> BatchSnapshot:
    with lazy.open_session() as db:
        return lazy.read_batch(db, lazy.get_redis(), batch_id=batch_id, tenant=tenant)


def _jobs_of(batch_id: str, tenant: str | None, cursor: str | None) -> tuple[list[Any], str | None]:
    from jobs.history.store import list_jobs
    from jobs.state.reads import live_page

    with lazy.open_session() as db:
        found = list_jobs(db, tenant=tenant, batch_id=batch_id, limit=PAGE_SIZE, cursor=cursor)
    live = live_page(found, client=lazy.get_redis())
    return [view_of(doc, with_actions=False) for doc in live.docs], live.next_cursor


def recent_batches(
    tenant: str | None, limit: int = RECENT, cursor: str | None = None
) -> tuple[list[BatchView], str | None]:
    """The tenant's newest batches (counts as SQL has them), for the jobs page and the list."""
    with lazy.open_session() as db:
        found = lazy.list_batches(db, tenant=tenant, limit=limit, cursor=cursor)
    return [BatchView(s) for s in found.items], found.next_cursor


def _live_etag(seq: int, session: WebSession) -> str:
    return f'W/"b{seq}.{session.tag}.{ui_version()}"'


@router.get("/batches")
def batches_page(
    request: Request, session: CurrentSession, cursor: Annotated[str | None, Query(max_length=500)] = None
) -> Response:
    """The tenant's batches, newest first."""
    batches, next_cursor = recent_batches(session.scope, limit=PAGE_SIZE, cursor=cursor)
    context = {"batches": batches, "cursor": cursor or "", "next_cursor": next_cursor}
    return page(request, "batches.html", context)


@router.get("/batches/new")
def batch_form(request: Request, session: CurrentSession) -> Response:
    """Submit a batch: a JSON Lines file, one job object per line."""
    return page(request, "batch_new.html", {"errors": [], "name": "", "idempotency_key": str(uuid.uuid4())})


def parse_jobs_lines(text: str) -> list[Any]:
    """The jobs of a JSON Lines text (blank lines skipped); InvalidRequest naming the line at fault."""
    from jobs.actions.batches import JobRequest
    from jobs.errors import InvalidRequest

    jobs: list[Any] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"Line {number} is not valid JSON: {exc.msg}.") from None
        if not isinstance(item, dict) or not isinstance(item.get("task"), str):
            raise InvalidRequest(
                f'Line {number} must be a JSON object with a "task", '
                'like {"task": "long_task", "payload": {}}.'
            )
        payload = item.get("payload", {})
        if not isinstance(payload, dict):
            raise InvalidRequest(f"Line {number}: payload must be a JSON object.")
        queue, timeout, tags = item.get("queue"), item.get("timeout"), item.get("tags", [])
        if (queue is not None and not isinstance(queue, str)) or (
            timeout is not None and not isinstance(timeout, int)
        ):
            raise InvalidRequest(
                f"Line {number}: queue must be a string and timeout a whole number of seconds."
            )
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidRequest(f"Line {number}: tags must be a list of strings.")
        jobs.append(JobRequest(task=item["task"], payload=payload, queue=queue, timeout=timeout, tags=tags))
    if not jobs:
        raise InvalidRequest("The file holds no jobs: give one JSON object per line.")
    return jobs


def _submit(session: WebSession, jobs: list[Any], name: str | None, key: str | None) -> str:
    with lazy.open_session() as db:
        submission = lazy.submit_batch(
            session=db,
            client=lazy.get_redis(),
            tenant=session.tenant,
            owner=session.key_id,
            jobs=jobs,
            name=name,
            idempotency_key=key,
        )
    return submission.batch_id


@router.post("/batches/new")
async def submit_batch(request: Request, session: ChangingSession) -> Response:
    """Submit the file: 303 to the batch's page, or the form again (422, or 413 past the cap) saying
    which line is at fault (a job's index in the API's message is its line among the non-blank ones)."""
    form = await request.form()
    upload = form.get(FILE_FIELD)
    name = str(form.get("name") or "").strip()[:200] or None
    key = str(form.get("idempotency_key") or "")[:100] or None
    if key is not None and "\x00" in key:
        key = None
    text = ""
    if upload is not None and not isinstance(upload, str):
        raw = await upload.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return _form_again(request, "The file is not UTF-8 text.", name, key, 422)
    elif isinstance(upload, str):
        text = upload
    try:
        jobs = parse_jobs_lines(text)
        batch_id = await run_in_threadpool(_submit, session, jobs, name, key)
    except ConveyorError as exc:
        return _form_again(request, exc.message, name, key, exc.status_code)
    return RedirectResponse(f"{request.scope.get('root_path', '')}/batches/{batch_id}", status_code=303)


def _form_again(
    request: Request, error: str, name: str | None, key: str | None, status_code: int
) -> Response:
    context = {"errors": [error], "name": name or "", "idempotency_key": key or str(uuid.uuid4())}
    return page(request, "batch_new.html", context, status_code=status_code)


@router.get("/batches/{batch_id}")
async def batch_page(
    request: Request,
    batch_id: str,
    session: CurrentSession,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    """The batch: one progress bar and the counts (live), and a paged table of its jobs."""
    batch = BatchView(await run_in_threadpool(_read, batch_id, session.scope))
    rows, next_cursor = await run_in_threadpool(_jobs_of, batch_id, session.scope, cursor)
    context = {
        "batch": batch,
        "rows": rows,
        "cursor": cursor or "",
        "next_cursor": next_cursor,
        "notice": None,
    }
    return page(request, "batch.html", context)


@router.get("/batches/{batch_id}/live")
async def batch_live(
    request: Request,
    batch_id: str,
    session: CurrentSession,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The batch page's live part; it stops polling once every job of the batch has ended."""
    snapshot = await run_in_threadpool(_read, batch_id, session.scope)
    etag = _live_etag(snapshot.seq, session)
    if etag_matches(etag, if_none_match):
        return not_modified(etag)
    context = {"batch": BatchView(snapshot), "notice": None}
    return page(request, "_batch_live.html", context, headers={"ETag": etag}, cache="private, no-cache")


def _act(action: BatchAction, batch_id: str, session: WebSession) -> None:
    steer = lazy.cancel_batch if action == "cancel" else lazy.restart_batch
    with lazy.open_session() as db:
        steer(session=db, client=lazy.get_redis(), batch_id=batch_id, tenant=session.scope, by=session.key_id)


@router.post("/batches/{batch_id}/{action}")
async def batch_action(
    request: Request, batch_id: str, action: BatchAction, session: ChangingSession
) -> Response:
    """Cancel the batch's open jobs, or restart its failed and canceled ones; htmx gets the live part."""
    await run_in_threadpool(_act, action, batch_id, session)
    if not is_htmx(request):
        return RedirectResponse(f"{request.scope.get('root_path', '')}/batches/{batch_id}", status_code=303)
    snapshot = await run_in_threadpool(_read, batch_id, session.scope)
    return page(request, "_batch_live.html", {"batch": BatchView(snapshot), "notice": None})
