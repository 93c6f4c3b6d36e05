"""Server-Sent Events and WebSocket delivery of a job feed, with send timeouts.

Both send the current snapshot first, then each newer one, and end after the
terminal one. Each stream runs in its own task and writes only to its own
socket: a client that stops reading blocks nobody else, and is dropped once
a send has waited ``CONVEYOR_LIVE_SEND_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from jobs.settings import get_settings

if TYPE_CHECKING:  # the feed and the hub load Redis's client: only the streams that run need them
    from api.live_feed import JobFeed
    from api.live_hub import Delivery

log = logging.getLogger(__name__)

RETRY_MS = 2000
"""How long an EventSource waits before it reconnects (it resumes with Last-Event-ID)."""
HEARTBEAT_FRAME = b": heartbeat\n\n"
REVOKED_FRAME = b": API key revoked\n\n"
"""The last words of a stream whose key was revoked: a comment, which every SSE parser skips
(an event would reach clients as a snapshot); the EventSource's reconnect then gets a 401."""
WS_REVOKED = 4401

Render = Callable[["Delivery"], bytes]
RenderText = Callable[["Delivery"], str]


def sse_event(seq: int, data: bytes) -> bytes:
    """One SSE event: ``id:`` is the snapshot's seq, ``data:`` its JSON."""
    if b"\n" in data:  # never true for our JSON, but a newline must not end the event early
        data = data.replace(b"\r", b"").replace(b"\n", b"\ndata: ")
    return b"id: %d\ndata: %s\n\n" % (seq, data)


def _snapshot_frame(delivery: Delivery) -> bytes:
    return sse_event(delivery.seq, delivery.doc)


def snapshot_event(delivery: Delivery) -> bytes:
    """The canonical SSE event of a snapshot (formatted once per delivery, however many streams)."""
    return delivery.render(_snapshot_frame, _snapshot_frame)


def upto_terminal(items: list[Delivery]) -> tuple[list[Delivery], bool]:
    """``items`` up to and including the first terminal one, and whether there was one."""
    for index, item in enumerate(items):
        if item.is_terminal:
            return items[: index + 1], True
    return items, False


SSE_HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # nginx: do not buffer the stream
}


class EventStream(StreamingResponse):
    """`text/event-stream` for one job feed.

    ``once`` ends the response after the first batch of events (under Lambda,
    where a response is delivered only when it ends: the EventSource then
    reconnects with Last-Event-ID, which makes it a long poll in SSE framing).

    The body is :meth:`frames`, an async iterator like any StreamingResponse's; only the
    sending is our own: each frame goes through the feed's watched send (so the hub's
    watchdog can drop a client that stopped reading), and the feed's own task watches
    ``receive`` for the client leaving, which StreamingResponse would otherwise read itself.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        feed: JobFeed,
        *,
        since: int,
        render: Render = snapshot_event,
        once: bool = False,
        max_seconds: float | None = None,
    ) -> None:
        self.feed = feed
        self.since = since
        self.frame = render
        self.once = once
        self.max_seconds = max_seconds
        self.finished = False
        self._frames = self.frames()
        super().__init__(self._frames, status_code=200, headers=SSE_HEADERS)

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """The stream's chunks, one per send; sets ``finished`` when it ended on purpose (the
        terminal snapshot, ``once``, the deadline, a revocation), not because the client left."""
        loop = asyncio.get_running_loop()
        feed, since = self.feed, self.since
        deadline = None if self.max_seconds is None else loop.time() + self.max_seconds
        # Each event is its own send: the server checks the socket's backlog before every
        # send, so a client that stops reading holds at most one event in its buffers.
        chunks = [b"retry: %d\n\n" % RETRY_MS]
        done = False
        if feed.current.seq > since:
            chunks[0] += self.frame(feed.current)
            since = feed.current.seq
            done = feed.current.is_terminal or self.once
        while True:
            for chunk in chunks:
                yield chunk
            if done or (deadline is not None and loop.time() >= deadline):
                break
            left = None if deadline is None else max(0.0, deadline - loop.time())
            items = await feed.next(since, timeout=left)
            if feed.gone:
                return
            if feed.revoked:
                chunks, done = [REVOKED_FRAME], True
                continue
            items, done = upto_terminal(items)
            if items:
                chunks = [self.frame(item) for item in items]
                since = items[-1].seq
                done = done or self.once
            else:
                chunks = [HEARTBEAT_FRAME]
        self.finished = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        feed = self.feed
        gone = feed.watch_disconnect(receive)
        stall = StallGuard(feed)
        try:
            start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            await send(start)
            async for chunk in self._frames:
                await feed.guarded_send(send, body_message(chunk))
            if self.finished:
                await feed.guarded_send(send, body_message(b"", more=False))
        except asyncio.CancelledError:
            if not stall.dropped():
                raise
        except OSError:  # the client went away mid-send
            return
        finally:
            gone.cancel()
            feed.close()
            await self._frames.aclose()


def body_message(body: bytes, *, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": more}


class StallGuard:
    """Drops a stream whose client stopped reading: the hub's watchdog cancels the stream's task
    once a send has been stuck for CONVEYOR_LIVE_SEND_TIMEOUT, and the stream ends quietly."""

    def __init__(self, feed: JobFeed) -> None:
        self.feed = feed
        self.task = asyncio.current_task()
        self.fired = False
        feed.on_stall(self._fire)

    def _fire(self) -> None:
        if self.task is not None and not self.fired:
            self.fired = True
            self.task.cancel()

    def dropped(self) -> bool:
        """True (and the cancellation absorbed) when the CancelledError was this guard's."""
        if not self.fired or self.task is None:
            return False
        self.task.uncancel()
        log.warning(
            "live: dropped a stream of job %s: its client took no data for %.1f s",
            self.feed.job_id,
            get_settings().live_send_timeout,
        )
        return True


def _snapshot_text(delivery: Delivery) -> str:
    return delivery.doc.decode()


def snapshot_text(delivery: Delivery) -> str:
    """The canonical WebSocket message of a snapshot: its JSON, decoded once per delivery."""
    return delivery.render(_snapshot_text, _snapshot_text)


async def pump_websocket(
    websocket: WebSocket, feed: JobFeed, *, since: int, render: RenderText = snapshot_text
) -> None:
    """Send the feed over an accepted WebSocket as text messages (``render`` makes each one's
    JSON); close with 1000 after the terminal snapshot."""
    gone = feed.watch_disconnect(websocket.receive)
    stall = StallGuard(feed)
    items = [feed.current] if feed.current.seq > since else []
    try:
        if not items and feed.current.is_terminal:  # resumed after the end: nothing more to say
            await websocket.close(code=1000)
            return
        while True:
            items, done = upto_terminal(items)
            for item in items:
                await feed.guarded_send(websocket.send, {"type": "websocket.send", "text": render(item)})
                since = item.seq
            if done:
                close = {"type": "websocket.close", "code": 1000, "reason": ""}
                await feed.guarded_send(websocket.send, close)
                return
            items = await feed.next(since)
            if feed.gone:
                return
            if feed.revoked:
                close = {"type": "websocket.close", "code": WS_REVOKED, "reason": "API key revoked."}
                await feed.guarded_send(websocket.send, close)
                return
    except asyncio.CancelledError:
        if not stall.dropped():
            raise
    except (WebSocketDisconnect, OSError, RuntimeError):
        # The client left mid-send (RuntimeError: Starlette refuses sends after a close).
        return
    finally:
        gone.cancel()
        feed.close()
