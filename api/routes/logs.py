"""A job's log: pages of lines (JSON, by cursor) and a stream that follows it (SSE)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from api.deps import CurrentPrincipal, StreamPrincipal, readable_tenant
from api.event_stream import HEARTBEAT_FRAME, RETRY_MS, REVOKED_FRAME, EventStream
from api.lambda_limits import LAMBDA_MAX_WAIT, under_lambda
from api.outages import noting_outage
from api.routes.live import resume_point
from jobs.errors import InvalidRequest
from jobs.lazy_model import LazyModel
from jobs.settings import get_settings
from jobs.state.reads import snapshot_for

if TYPE_CHECKING:
    from api.live_feed import JobFeed
    from jobs.state.job_logs import LogLine

router = APIRouter(prefix="/api/v1", tags=["logs"])

MAX_PAGE = 1000
MAX_SEQ = 2**31 - 1  # a line's seq is an SQL integer; past it no line can follow
STREAM_BATCH = 500
FOLLOW_EVERY = 0.25
"""Seconds between a followed log's reads while nothing else wakes it (the worker writes a job's
lines every ~0.1 s; a snapshot change wakes the stream at once)."""


class LogLineOut(LazyModel):
    seq: int
    at: str
    level: str
    logger: str
    message: str
    attempt: int


class LogPage(LazyModel):
    job_id: str
    items: list[LogLineOut]
    next_cursor: int | None = None


def log_event(line: LogLine) -> bytes:
    """One SSE event per line: ``id:`` its seq (Last-Event-ID resumes after it), ``data:`` its JSON."""
    data = json.dumps(line.as_dict(), separators=(",", ":"), ensure_ascii=False)
    return f"id: {line.seq}\ndata: {data}\n\n".encode()


@router.get("/jobs/{job_id}/logs", response_model=LogPage)
async def get_logs(
    job_id: str,
    principal: CurrentPrincipal,
    after: Annotated[
        int,
        Query(
            ge=0,
            le=MAX_SEQ,
            description="Lines after this seq: 0 from the start, else a page's `next_cursor`.",
        ),
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 200,
) -> Response:
    """What the job's task logged, oldest first, secrets redacted; `next_cursor` is set while a
    full page came back (ask again with `after=next_cursor`). Kept after the job's live state
    expired, as long as the job itself."""
    from jobs.history.log_records import read_log_async

    noting_outage(await snapshot_for(job_id, readable_tenant(principal)))
    lines = await read_log_async(job_id, after=after, limit=limit)
    body = {
        "job_id": job_id,
        "items": [line.as_dict() for line in lines],
        "next_cursor": lines[-1].seq if len(lines) == limit else None,
    }
    return Response(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


class LogStream(EventStream):
    """The job's log lines as SSE, following until the job has ended and its last lines are sent."""

    async def frames(self) -> AsyncGenerator[bytes, None]:
        from jobs.history.log_records import read_log_async

        loop = asyncio.get_running_loop()
        feed, after = self.feed, self.since
        deadline = None if self.max_seconds is None else loop.time() + self.max_seconds
        heartbeat = get_settings().live_heartbeat
        chunk = b"retry: %d\n\n" % RETRY_MS
        last_sent = loop.time()
        while True:
            ended = feed.current.is_terminal  # read before the lines: its last lines are in by then
            lines = await read_log_async(feed.job_id, after=after, limit=STREAM_BATCH)
            if lines:
                chunk += b"".join(log_event(line) for line in lines)
                after = lines[-1].seq
            if chunk:
                yield chunk
                chunk, last_sent = b"", loop.time()
            if len(lines) == STREAM_BATCH:
                continue
            if ended or (self.once and after > self.since):
                break
            if deadline is not None and loop.time() >= deadline:
                break
            await feed.next(feed.current.seq, timeout=FOLLOW_EVERY)
            if feed.gone:
                return
            if feed.revoked:
                yield REVOKED_FRAME
                break
            if loop.time() - last_sent >= heartbeat:
                chunk = HEARTBEAT_FRAME
        self.finished = True


@router.get(
    "/jobs/{job_id}/logs/stream",
    response_class=EventStream,
    status_code=200,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "One event per log line (`id:` its seq, `data:` the line's JSON), from "
            "the start or after Last-Event-ID, ending once the job has ended and its last lines "
            "are sent; `: heartbeat` comments while it is quiet.",
        },
        204: {"description": "Resumed after the last line of a job that has ended: nothing more."},
    },
)
async def stream_logs(
    job_id: str,
    principal: StreamPrincipal,
    request: Request,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_SEQ, description="Resume after this seq (when Last-Event-ID cannot be sent)."),
    ] = None,
) -> Response:
    """Server-Sent Events of the job's log lines. Reconnect with Last-Event-ID to resume."""
    from api.live_feed import JobFeed
    from jobs.history.log_records import read_log_async

    start = resume_point(last_event_id, after)
    if start > MAX_SEQ:
        raise InvalidRequest(f"Last-Event-ID must be a line's seq, at most {MAX_SEQ}.")
    feed: JobFeed = await JobFeed.open(job_id, principal.scope, key_id=principal.key_id)
    if feed.current.is_terminal and not await read_log_async(job_id, after=start, limit=1):
        feed.close()
        return Response(status_code=204)  # tells an EventSource to stop reconnecting
    lambda_mode = under_lambda(request.scope)
    return LogStream(
        feed, since=start, once=lambda_mode, max_seconds=LAMBDA_MAX_WAIT if lambda_mode else None
    )
