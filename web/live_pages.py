"""Pages pushed, not polled: one SSE stream per page, carrying its fragments as they change.

Where streams are served (a container, not AWS Lambda) and ``CONVEYOR_WEB_PUSH`` is on, the job
page opens `/jobs/{id}/stream` through htmx's SSE extension (vendored): each event is a fragment
the page swaps in by its name (``live``: status, bar, message, buttons; ``timeline``; ``log``: new
lines, appended), and ``end`` closes the stream once the job has ended. The jobs table opens
`/jobs/table/stream`: ``table`` events while a listed job can change. If the stream drops, the
page's script (static/conveyor-live.js) turns the fragments' polling on until it is back, and
drops lines it already shows, so a resumed stream or a poll may repeat a line harmlessly.

A stream holds one of its key's stream slots (api/stream_limits.py) through the app's feed.
The fragments are rendered as the polling routes render them (web/job_pages.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from jobs.clock import parse_iso
from jobs.errors import InvalidRequest
from jobs.settings import get_settings
from web.job_pages import (
    CursorParam,
    QueueFilter,
    StatusFilter,
    TaskFilter,
    _filters,
    _history,
    _overlaid,
    _sql_rows,
    _table_context,
    read_job,
)
from web.job_view import view_of
from web.live_source import SnapshotFeed, live_source, pushes
from web.rendering import PageRoute, page, render_text
from web.session import CurrentSession

if TYPE_CHECKING:
    from jobs.state.job_logs import LogLine
    from web.session import WebSession

router = APIRouter(route_class=PageRoute, include_in_schema=False)

FOLLOW_EVERY = 0.25  # seconds between a page stream's reads of the log while nothing wakes it
TABLE_EVERY = 0.25  # seconds between the table stream's looks at its live rows (one Redis round trip)
TABLE_SQL_EVERY = 2.0  # seconds between its SQL queries for the page of jobs (new jobs, ended ones)
PANEL_LINES = 1000  # lines the job page shows at first; the stream appends the rest
STREAM_BATCH = 500
RETRY_MS = 2000
MAX_SEQ = 2**31 - 1  # seqs are SQL integers

# Event name for the timeline entry of a status SQL has not recorded yet (the recorder trails).
PROVISIONAL_EVENT = {"started": "started", "finished": "finished", "failed": "failed", "canceled": "canceled"}


def sse_html(name: str, html: str, event_id: str | None = None) -> bytes:
    """One SSE event whose data is an HTML fragment (each line its own `data:` line)."""
    head = f"event: {name}\n" + (f"id: {event_id}\n" if event_id else "")
    body = "".join(f"data: {line}\n" for line in html.replace("\r", "").split("\n"))
    return (head + body + "\n").encode()


def resume_point(last_event_id: str | None, seq: int, after: int) -> tuple[int, int]:
    """(snapshot seq, log seq) a page stream resumes after: Last-Event-ID ("seq.line") or the page's."""
    if last_event_id:
        parts = last_event_id.strip().split(".")
        if len(parts) != 2 or not all(p.isdigit() and len(p) < 10 for p in parts):
            raise InvalidRequest(f"Last-Event-ID must be '<seq>.<line>', not {last_event_id!r}.")
        return int(parts[0]), int(parts[1])
    return seq, after


class PageStream(StreamingResponse):
    """`text/event-stream` of one page; closes its feed however it ends, and notices the client
    leaving through the feed (a stuck send is given up after CONVEYOR_LIVE_SEND_TIMEOUT)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncGenerator[bytes, None],
        *,
        feed: SnapshotFeed | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.feed = feed
        self.release = release
        self.frames = frames
        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        super().__init__(frames, status_code=200, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = self.feed.watch_disconnect(receive) if self.feed is not None else None
        timeout = get_settings().live_send_timeout
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.frames:
                if self.feed is not None and self.feed.gone:
                    break
                async with asyncio.timeout(timeout):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            async with asyncio.timeout(timeout):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (OSError, TimeoutError):
            return
        finally:
            if gone is not None:
                gone.cancel()
            if self.feed is not None:
                self.feed.close()
            if self.release is not None:
                self.release()
            await self.frames.aclose()


# --- the jobs table (its route first: `/jobs/table/stream` is not a job's) ------------------------


async def table_frames(
    request: Request,
    session: WebSession,
    filters: tuple[str | None, str | None, str | None, str | None],
) -> AsyncGenerator[bytes, None]:
    """``table`` events each time the table would render differently (its live rows looked at in
    Redis every quarter second, the page of jobs asked of SQL every two), and ``end`` once nothing
    in it can change, as the polling table then stops polling."""
    status, task, queue, cursor = filters
    heartbeat = get_settings().live_heartbeat
    values = {"request": request, "base": request.scope.get("root_path", ""), "session": session}
    yield b"retry: %d\n\n" % RETRY_MS
    etag, found, asked_sql = "", None, 0.0
    shown: list[Any] | None = None
    last_sent = time.monotonic()
    while True:
        if found is None or time.monotonic() - asked_sql >= TABLE_SQL_EVERY:
            found = await run_in_threadpool(_sql_rows, session.scope, _filters(status, task, queue), cursor)
            asked_sql = time.monotonic()
        rows = await run_in_threadpool(_overlaid, found)
        context, now_etag, _ = await run_in_threadpool(
            _table_context, request, session, status, task, queue, cursor, rows
        )
        if now_etag != etag:
            statuses = [row.status for row in context["rows"]]
            if shown is not None and statuses != shown:
                asked_sql = 0.0  # a row changed status: SQL may list the page differently now
            shown = statuses
            etag = now_etag
            yield sse_html("table", render_text("_jobs_table.html", {**values, **context, "mode": "push"}))
            last_sent = time.monotonic()
        if context["trigger"] is None:
            yield sse_html("end", "ended")
            return
        if await request.is_disconnected():
            return
        if time.monotonic() - last_sent >= heartbeat:
            yield b": heartbeat\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(TABLE_EVERY)


@router.get("/jobs/table/stream")
async def jobs_table_stream(
    request: Request,
    session: CurrentSession,
    status: StatusFilter = None,
    task: TaskFilter = None,
    queue: QueueFilter = None,
    cursor: CursorParam = None,
) -> Response:
    """The jobs table's one stream, for its whole page of rows (404 where pages poll)."""
    live = live_source(request)
    if live is None or not pushes(request):
        return Response(status_code=404)
    release = live.hold_stream(session.key_id)
    return PageStream(table_frames(request, session, (status, task, queue, cursor)), release=release)


# --- the job page ---------------------------------------------------------------------------------


def timeline_events(events: list[dict[str, Any]], doc: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """SQL's events, plus the live status as a provisional last entry while SQL has not caught up
    with it (the recorder trails the live state); True when one was added."""
    status, attempt = doc["status"], doc["attempt"]
    last = events[-1] if events else None
    if last is not None and (last["status"], last["attempt"]) == (status, attempt):
        return events, False
    if last is not None and last["seq"] >= doc["seq"]:
        return events, False
    provisional = {
        "seq": doc["seq"],
        "event": PROVISIONAL_EVENT.get(status, "retry" if attempt > 1 else status),
        "status": status,
        "attempt": attempt,
        "message": None,
        "data": None,
        "created_at": parse_iso(doc["updated_at"]) if doc.get("updated_at") else None,
        "provisional": True,
    }
    return [*events, provisional], True


def log_lines_html(request: Request, lines: list[LogLine]) -> str:
    return render_text("_log_lines.html", {"lines": lines, "base": request.scope.get("root_path", "")})


async def first_lines(job_id: str) -> list[LogLine]:
    from jobs.history.log_records import read_log_async

    return await read_log_async(job_id, after=0, limit=PANEL_LINES)


async def job_frames(
    request: Request, feed: SnapshotFeed, session: WebSession, seq: int, after: int
) -> AsyncGenerator[bytes, None]:
    """The job page's events until its job has ended: ``live``, ``timeline``, ``log``, then ``end``."""
    import json

    from jobs.history.log_records import read_log_async

    job_id, tenant = feed.job_id, session.scope
    base = request.scope.get("root_path", "")
    values: dict[str, Any] = {"request": request, "base": base, "session": session, "path": request.url.path}
    heartbeat = get_settings().live_heartbeat
    loop = asyncio.get_running_loop()
    chunk = b"retry: %d\n\n" % RETRY_MS
    shown: tuple[str, int] | None = None  # (status, attempt) the timeline last showed
    provisional_since: float | None = None
    last_sent = loop.time()
    while True:
        ended = feed.current.is_terminal
        if feed.current.seq > seq:
            read = await read_job(job_id, tenant)
            job = view_of(read.doc, control=read.control)
            mode = "done" if job.is_terminal else "push"
            live_html = render_text("_job_live.html", {**values, "job": job, "notice": None, "mode": mode})
            seq = read.seq
            chunk += sse_html("live", live_html, f"{seq}.{after}")
            doc = json.loads(read.doc)
            if shown != (doc["status"], doc["attempt"]) or provisional_since is not None:
                shown = (doc["status"], doc["attempt"])
                provisional_since = provisional_since or loop.time()
        if provisional_since is not None:
            _, events = await run_in_threadpool(_history, job_id, tenant)
            read = await read_job(job_id, tenant)
            events, provisional = timeline_events(events, json.loads(read.doc))
            context = {**values, "job_id": job_id, "events": events, "mode": "push"}
            chunk += sse_html("timeline", render_text("_timeline.html", context), f"{seq}.{after}")
            # SQL trails by a batch: look again while the last entry is provisional (3 s at most).
            if not provisional or loop.time() - provisional_since > 3.0:
                provisional_since = None
        lines = await read_log_async(job_id, after=after, limit=STREAM_BATCH)
        if lines:
            after = lines[-1].seq
            chunk += sse_html("log", log_lines_html(request, lines), f"{seq}.{after}")
        if chunk:
            yield chunk
            chunk, last_sent = b"", loop.time()
        if len(lines) == STREAM_BATCH:
            continue
        if ended and provisional_since is None:
            yield sse_html("end", "ended")
            return
        await feed.next(feed.current.seq, timeout=FOLLOW_EVERY)
        if feed.gone or feed.revoked:
            return
        if loop.time() - last_sent >= heartbeat:
            chunk = b": heartbeat\n\n"


@router.get("/jobs/{job_id}/stream")
async def job_stream(
    request: Request,
    job_id: str,
    session: CurrentSession,
    seq: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> Response:
    """The job page's one stream (404 where pages are not pushed: they poll there)."""
    live = live_source(request)
    if live is None or not pushes(request):
        return Response(status_code=404)
    seq, after = resume_point(last_event_id, seq, after)
    feed = await live.open_feed(job_id, session.scope, session.key_id)
    return PageStream(job_frames(request, feed, session, seq, after), feed=feed)


@router.get("/jobs/{job_id}/log")
async def job_log(
    request: Request,
    job_id: str,
    session: CurrentSession,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    fallback: Annotated[bool, Query()] = False,
) -> Response:
    """The log panel's poller (under Lambda, or while a page's stream is down): the lines after
    ``after``, appended out of band, and the poller itself, which stops once the job has ended."""
    from jobs.history.log_records import read_log_async

    read = await read_job(job_id, session.scope)
    job = view_of(read.doc, control=read.control, with_actions=False)
    lines = await read_log_async(job_id, after=after, limit=STREAM_BATCH)
    last = lines[-1].seq if lines else after
    polls = not job.is_terminal or len(lines) == STREAM_BATCH
    context = {"job": job, "lines": lines, "after": last, "polls": polls, "fallback": fallback, "oob": True}
    return page(request, "_log_poller.html", context, cache="private, no-cache")
