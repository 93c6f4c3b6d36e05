"""Live progress of one job: long poll, Server-Sent Events and WebSocket, all in the snapshot shape."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Header, Query, Request, Response, WebSocket

from api.deps import CurrentPrincipal, StreamPrincipal, websocket_principal
from api.event_stream import EventStream, RenderText, pump_websocket, snapshot_text
from api.lambda_limits import LAMBDA_MAX_WAIT, under_lambda
from jobs.errors import InvalidRequest, JobNotFound
from jobs.snapshot import JobSnapshot
from jobs.status import JobStatus

if TYPE_CHECKING:
    from api.live_hub import Delivery

# The feed (api.live_feed) loads Redis's asyncio client and SQL; it is imported by the
# routes that open one, so declaring these routes stays cheap for a Lambda cold start.

router = APIRouter(prefix="/api/v1", tags=["live"])

JSON = "application/json"
WS_UNAUTHORIZED = 4401
WS_NOT_FOUND = 4404

PollTimeout = Annotated[
    int,
    Query(
        ge=1,
        le=300,
        description="Seconds to wait for a change (capped at 25 under AWS Lambda: API Gateway ends "
        "requests at 29 s).",
    ),
]


def poll_seconds(timeout: float, request: Request) -> float:
    return min(timeout, LAMBDA_MAX_WAIT) if under_lambda(request.scope) else float(timeout)


def resume_point(last_event_id: str | None, since: int | None) -> int:
    """Where a stream resumes: Last-Event-ID (an EventSource sends it by itself), else `since`."""
    if last_event_id is not None and last_event_id.strip():
        try:
            value = int(last_event_id)
        except ValueError:
            raise InvalidRequest(
                f"Last-Event-ID must be a snapshot seq (an integer), not {last_event_id!r}."
            ) from None
        if value < 0:
            raise InvalidRequest("Last-Event-ID must not be negative.")
        return value
    return since or 0


def snapshot_response(delivery: Delivery) -> Response:
    return Response(
        content=delivery.doc,
        media_type=JSON,
        headers={"ETag": f'"{delivery.seq}"', "Cache-Control": "no-store"},
    )


@router.get("/jobs/{job_id}/poll", response_model=JobSnapshot)
async def poll(
    job_id: str,
    principal: CurrentPrincipal,
    request: Request,
    timeout: PollTimeout = 30,
    since: Annotated[
        int | None, Query(ge=0, description="Answer once the job's seq is past this one.")
    ] = None,
    current_status: Annotated[
        JobStatus | None, Query(description="Answer once the job's status differs from this one.")
    ] = None,
) -> Response:
    """Long poll: the job's snapshot as soon as it changes, or at `timeout` as it stands.

    Answers at once when the job's `seq` is already past `since`, or its status
    differs from `current_status`. With neither, waits for the next change.
    """
    from api.live_feed import JobFeed, long_poll

    feed = await JobFeed.open(job_id, principal.scope, key_id=principal.key_id)
    try:
        after = feed.current.seq if since is None and current_status is None else since

        def is_news(item: Delivery) -> bool:
            if after is not None and item.seq > after:
                return True
            return current_status is not None and item.status != current_status.value

        found = await long_poll(
            feed, timeout=poll_seconds(timeout, request), is_news=is_news, receive=request.receive
        )
    finally:
        feed.close()
    return snapshot_response(found)


@router.get(
    "/jobs/{job_id}/stream",
    response_class=EventStream,
    status_code=200,  # EventStream takes no status_code: FastAPI cannot infer one for the schema
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "One event per snapshot (`id:` its seq, `data:` the snapshot JSON), "
            "starting with the current one and ending after the terminal one; `: heartbeat` "
            "comments while the job is quiet.",
        },
        204: {"description": "Resumed (Last-Event-ID) after the terminal snapshot: nothing more."},
    },
)
async def stream(
    job_id: str,
    principal: StreamPrincipal,
    request: Request,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    since: Annotated[
        int | None, Query(ge=0, description="Resume after this seq (when Last-Event-ID cannot be sent).")
    ] = None,
) -> Response:
    """Server-Sent Events of the job's snapshots. Reconnect with Last-Event-ID to resume."""
    from api.live_feed import JobFeed

    after = resume_point(last_event_id, since)
    feed = await JobFeed.open(job_id, principal.scope, key_id=principal.key_id)
    if feed.current.is_terminal and feed.current.seq <= after:
        feed.close()
        return Response(status_code=204)  # tells an EventSource to stop reconnecting
    lambda_mode = under_lambda(request.scope)
    return EventStream(
        feed, since=after, once=lambda_mode, max_seconds=LAMBDA_MAX_WAIT if lambda_mode else None
    )


@router.websocket("/jobs/{job_id}/ws")
async def websocket(
    websocket: WebSocket,
    job_id: str,
    since: Annotated[int, Query(ge=0, description="Skip snapshots up to this seq.")] = 0,
) -> None:
    """The job's snapshots over a WebSocket: the current one, each newer one, then close (1000)
    after the terminal one. Authenticate with the Authorization header or `?access_token=`."""
    await serve_websocket(websocket, job_id, since=since)


async def serve_websocket(
    websocket: WebSocket, job_id: str, *, since: int, render: RenderText = snapshot_text
) -> None:
    """Accept the WebSocket and stream its job in ``render``'s shape, or close it with a reason:
    4401 (no valid key, or the key was revoked while open), 4404 (no such job for this tenant),
    4429 (a stream cap is reached: see api/stream_limits.py), 1011 (stores unavailable)."""
    import redis.exceptions
    import sqlalchemy as sa

    from api.live_feed import JobFeed
    from api.stream_limits import WS_TOO_MANY, StreamLimitReached

    principal = await websocket_principal(websocket)
    await websocket.accept()
    if principal is None:
        await websocket.close(code=WS_UNAUTHORIZED, reason="Missing, invalid or revoked API key.")
        return
    try:
        feed = await JobFeed.open(job_id, principal.scope, key_id=principal.key_id)
    except JobNotFound as exc:
        await websocket.close(code=WS_NOT_FOUND, reason=exc.message[:120])
        return
    except StreamLimitReached as exc:
        # A close reason has at most 123 bytes: name the cap and the wait, the rest is in the docs.
        reason = f"Too many streams: the {exc.cap} cap is reached; retry in {exc.retry_after} s."
        await websocket.close(code=WS_TOO_MANY, reason=reason)
        return
    except (redis.exceptions.RedisError, sa.exc.SQLAlchemyError):
        await websocket.close(code=1011, reason="Redis or the database is unavailable; retry shortly.")
        return
    await pump_websocket(websocket, feed, since=since, render=render)
