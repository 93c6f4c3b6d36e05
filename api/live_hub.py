"""One Redis subscription per API process, fanned out to the streams that process holds.

Every accepted state change is published, as its snapshot document, on the
single channel ``jobs.state.live.CHANNEL``. The hub subscribes to it once per event
loop (a process serves from one loop), lazily on the first listener (never in
the ASGI lifespan, which Mangum runs per invocation), and hands each document
to the listeners of that job. Handing over never blocks: a listener holds a
small bounded buffer and the oldest entry gives way when it is full, which
loses nothing a client needs because every snapshot is the job's whole state.

Pub/sub is lossy. When the subscription breaks (Redis restarted, network
blip) the hub reconnects and marks every listener for a resync, so each one
re-reads its job's snapshot; streams also re-read on their own heartbeat.
After a minute without listeners the subscription is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis

from jobs.access.auth import revoked_among
from jobs.settings import get_settings
from jobs.snapshot import TERMINAL_VALUES, DocHead, peek
from jobs.state.live import CHANNEL
from jobs.state.redis_conn import get_async_redis

log = logging.getLogger(__name__)

IDLE_CLOSE_SECONDS = 60.0
READY_TIMEOUT = 5.0
MAX_BACKOFF = 2.0


class Delivery:
    """One snapshot document with the fields streams route and order by.

    ``rendered`` caches a document's wire forms (an SSE frame, a seed's shape)
    so a message fanned out to thousands of streams is formatted once.
    """

    __slots__ = ("doc", "job_id", "rendered", "seq", "status")

    def __init__(self, doc: bytes, head: DocHead) -> None:
        self.doc = doc
        self.job_id = head.job_id
        self.seq = head.seq
        self.status = head.status
        self.rendered: dict[Any, Any] = {}

    @classmethod
    def of(cls, doc: bytes) -> Delivery | None:
        head = peek(doc)
        return cls(doc, head) if head is not None else None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_VALUES

    def render(self, key: Any, make: Callable[[Delivery], Any]) -> Any:
        """``make(self)``, computed once per delivery and ``key``."""
        try:
            return self.rendered[key]
        except KeyError:
            value = self.rendered[key] = make(self)
            return value


class Listener:
    """One stream's mailbox for one job: a bounded buffer and a wake-up future.

    Waiting costs no timer: the hub's watchdog flags a listener ``quiet`` once
    it has had nothing for a heartbeat, and stops a stream whose send has been
    stuck for the send timeout. A stream wakes for a delivery, a resync, its
    heartbeat, or its client leaving (``gone``).
    """

    __slots__ = (
        "_pending",
        "_waiter",
        "gone",
        "job_id",
        "key_id",
        "last_active",
        "on_stall",
        "quiet",
        "resync",
        "revoked",
        "sending_since",
    )

    def __init__(self, job_id: str, size: int, now: float = 0.0, key_id: str = "") -> None:
        self.job_id = job_id
        self.key_id = key_id  # the API key the stream serves ("" for none): re-checked for revocation
        self.revoked = False
        self._pending: deque[Delivery] = deque(maxlen=size)
        self._waiter: asyncio.Future[None] | None = None
        self.resync = False
        self.quiet = False
        self.gone = False
        self.last_active = now
        self.sending_since = 0.0  # loop time a send began, while it is in progress
        self.on_stall: Callable[[], None] | None = None

    def deliver(self, delivery: Delivery) -> None:
        self._pending.append(delivery)
        self._wake()

    def mark_resync(self) -> None:
        """The subscription was re-established: messages may have been lost meanwhile."""
        self.resync = True
        self._wake()

    def mark_quiet(self) -> None:
        self.quiet = True
        self._wake()

    def mark_gone(self, *_: Any) -> None:
        """The client left (usable as a future's done-callback)."""
        self.gone = True
        self._wake()

    def mark_revoked(self) -> None:
        """The stream's key was revoked: the stream ends (its client is told why)."""
        self.revoked = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> list[Delivery]:
        self.last_active = asyncio.get_running_loop().time()
        items = list(self._pending)
        self._pending.clear()
        return items

    @property
    def ready(self) -> bool:
        return bool(self._pending) or self.resync or self.quiet or self.gone or self.revoked

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until woken (True) or, with a ``timeout``, until it passes (False)."""
        if self.ready:
            return True
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            if timeout is None:
                await waiter
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await waiter
        finally:
            self._waiter = None
            if not waiter.done():
                waiter.cancel()
        return self.ready


class SnapshotHub:
    """The process's subscription to the snapshot channel and the listeners it feeds."""

    def __init__(self, client_factory: Callable[[], aioredis.Redis] = get_async_redis) -> None:
        self._client_factory = client_factory
        self._listeners: dict[str, set[Listener]] = {}
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._key_check: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._taps: set[Callable[[DocHead, bytes], None]] = set()
        self.received = 0
        self.reconnects = 0

    @property
    def listener_count(self) -> int:
        return sum(len(group) for group in self._listeners.values())

    @property
    def subscribed(self) -> bool:
        return self._ready.is_set()

    async def add(self, job_id: str, key_id: str = "") -> Listener:
        """Register a listener for ``job_id`` and make sure the subscription is live.

        Once this returns, every snapshot published afterwards reaches the
        listener, so a caller that reads the current snapshot next misses nothing.
        If Redis does not confirm the subscription in time the listener is
        returned anyway: the caller's heartbeat re-reads keep it correct. A listener with a
        ``key_id`` is marked revoked within ``CONVEYOR_STREAM_KEY_RECHECK`` of that key's revocation.
        """
        now = asyncio.get_running_loop().time()
        listener = Listener(job_id, get_settings().live_buffer, now, key_id)
        self._listeners.setdefault(job_id, set()).add(listener)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="conveyor-snapshot-hub")
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch(), name="conveyor-live-watchdog")
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), READY_TIMEOUT)
            except TimeoutError:
                log.warning("live hub: Redis has not confirmed the subscription; streams will poll")
            except BaseException:
                self.remove(listener)
                raise
        return listener

    def remove(self, listener: Listener) -> None:
        group = self._listeners.get(listener.job_id)
        if group is not None:
            group.discard(listener)
            if not group:
                del self._listeners[listener.job_id]

    def add_tap(self, tap: Callable[[DocHead, bytes], None]) -> None:
        """Hand ``tap`` every document the channel carries, whichever job it is of (a batch's
        watch picks its own jobs' out). Taps live beside listeners: whoever adds one also holds a
        listener, which keeps the subscription open."""
        self._taps.add(tap)

    def remove_tap(self, tap: Callable[[DocHead, bytes], None]) -> None:
        self._taps.discard(tap)

    @contextlib.asynccontextmanager
    async def listen(self, job_id: str) -> AsyncIterator[Listener]:
        listener = await self.add(job_id)
        try:
            yield listener
        finally:
            self.remove(listener)

    def dispatch(self, doc: bytes) -> None:
        """Hand one published document to the listeners of its job."""
        self.received += 1
        head = peek(doc)
        if head is None:
            log.warning("live hub: ignoring a message that is not a snapshot: %.80r", doc)
            return
        if self._taps:
            for tap in list(self._taps):
                tap(head, doc)
        group = self._listeners.get(head.job_id)
        if not group:
            return
        delivery = Delivery(doc, head)
        for listener in group:
            listener.deliver(delivery)

    def _resync_all(self) -> None:
        for group in self._listeners.values():
            for listener in group:
                listener.mark_resync()

    async def close(self) -> None:
        task, self._task = self._task, None
        watchdog, self._watchdog = self._watchdog, None
        key_check, self._key_check = self._key_check, None
        self._ready.clear()
        for running in (task, watchdog, key_check):
            if running is not None and not running.done():
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await running

    async def _watch(self) -> None:
        """Flag listeners quiet for a heartbeat, stop sends stuck past the send timeout.

        One pass over every listener each quarter of the shorter interval, so a
        quiet stream re-reads within (3/4, 1] of a heartbeat, and no wait or send
        needs a timer of its own. Every ``CONVEYOR_STREAM_KEY_RECHECK`` seconds the
        listeners' keys are checked against revocation, in a task of their own (an
        SQL query must not delay the stall checks).
        """
        loop = asyncio.get_running_loop()
        next_key_check = loop.time()
        while self._listeners:
            settings = get_settings()
            heartbeat, send_timeout = settings.live_heartbeat, settings.live_send_timeout
            period = min(heartbeat, send_timeout, settings.stream_key_recheck) / 4
            await asyncio.sleep(period)
            now = loop.time()
            if now >= next_key_check and (self._key_check is None or self._key_check.done()):
                next_key_check = now + settings.stream_key_recheck
                self._key_check = asyncio.create_task(self._check_keys(), name="conveyor-stream-keys")
            for group in list(self._listeners.values()):
                for listener in list(group):
                    if now - listener.last_active >= heartbeat - period:
                        listener.mark_quiet()
                    if listener.sending_since and now - listener.sending_since >= send_timeout:
                        listener.sending_since = 0.0
                        if listener.on_stall is not None:
                            listener.on_stall()

    async def _check_keys(self) -> None:
        """Mark the listeners of revoked keys (one SQL query for every key this process streams to).

        A database that cannot answer revokes nothing: streams go on, and the next check asks again.
        """
        keys = {listener.key_id for group in self._listeners.values() for listener in group}
        keys.discard("")
        if not keys:
            return
        try:
            revoked = await asyncio.to_thread(revoked_among, keys)
        except Exception as exc:
            log.warning("live hub: could not re-check the keys of open streams: %s", exc)
            return
        if not revoked:
            return
        closing = 0
        for group in list(self._listeners.values()):
            for listener in list(group):
                if listener.key_id in revoked and not listener.revoked:
                    listener.mark_revoked()
                    closing += 1
        log.info("live hub: closing %d streams of %d revoked API keys", closing, len(revoked))

    async def _run(self) -> None:
        """Read the channel until idle; reconnect (and resync listeners) when it breaks."""
        backoff = 0.05
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while True:
            pubsub = self._client_factory().pubsub()
            confirmed = False
            try:
                await pubsub.subscribe(CHANNEL)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        if self._listeners:
                            idle_since = loop.time()
                        elif loop.time() - idle_since > IDLE_CLOSE_SECONDS:
                            self._task = None
                            self._ready.clear()
                            return
                        continue
                    kind = message["type"]
                    if kind == "message":
                        self.dispatch(message["data"])
                    elif kind == "subscribe":
                        if confirmed:  # redis-py reconnected and subscribed again by itself
                            self.reconnects += 1
                            self._resync_all()
                        confirmed = True
                        backoff = 0.05
                        self._ready.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._ready.clear()
                self.reconnects += 1
                log.warning("live hub: subscription lost (%s); reconnecting in %.2f s", exc, backoff)
                self._resync_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[attr-defined]  # (types-redis predates it)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SnapshotHub] = weakref.WeakKeyDictionary()


def get_hub() -> SnapshotHub:
    """The hub of the running event loop (one per process in a server; tests run several loops)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = SnapshotHub()
    return hub


async def close_hub() -> None:
    """Close the running loop's hub, if it has one (the app's lifespan calls this at shutdown)."""
    hub = _hubs.pop(asyncio.get_running_loop(), None)
    if hub is not None:
        await hub.close()
