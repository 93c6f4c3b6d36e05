"""One client's feed of one job's snapshots, shared by long poll, SSE and WebSocket.

A feed registers with the process's :class:`~api.live_hub.SnapshotHub` before
it reads the current snapshot (Redis first, SQL once the live state expired),
so nothing published in between is missed. It then yields each newer
snapshot in ``seq`` order. A feed that has been quiet for a heartbeat, or
whose subscription was re-established, re-reads the snapshot: a lost
pub/sub message delays a client by at most one heartbeat and never hangs it.

A feed opened for an API key holds one of that key's stream slots
(:mod:`api.stream_limits`) from before it subscribes until :meth:`JobFeed.close`,
and ends (``revoked``) within ``CONVEYOR_STREAM_KEY_RECHECK`` of the key's revocation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.exceptions
import sqlalchemy as sa
from starlette.types import Receive

from api.live_hub import Delivery, Listener, SnapshotHub, get_hub
from api.outages import noting_outage
from api.stream_limits import KeyRevoked, StreamSlot, stream_slots
from jobs.state.reads import snapshot_for

log = logging.getLogger(__name__)


async def until_disconnect(receive: Receive) -> None:
    """Return once the client has gone (for a request whose body nobody reads)."""
    while True:
        message = await receive()
        if message["type"] in ("http.disconnect", "websocket.disconnect"):
            return


class JobFeed:
    """The snapshots of one job, for one client, newest state always last."""

    def __init__(
        self,
        hub: SnapshotHub,
        listener: Listener,
        tenant: str | None,
        current: Delivery,
        slot: StreamSlot | None = None,
    ) -> None:
        self._hub = hub
        self._listener = listener
        self._slot = slot
        self.job_id = listener.job_id
        self.tenant = tenant
        self.current = current

    @classmethod
    async def open(cls, job_id: str, tenant: str | None, *, key_id: str = "") -> JobFeed:
        """Take a stream slot for ``key_id`` (StreamLimitReached over a cap), subscribe, then
        read the current snapshot; JobNotFound for another tenant's or no job."""
        slot = stream_slots.acquire(key_id) if key_id else None
        hub = get_hub()
        try:
            listener = await hub.add(job_id, key_id)
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        try:
            current = Delivery.of(noting_outage(await snapshot_for(job_id, tenant)).doc)
            if current is None:
                raise RuntimeError(f"job {job_id}: stored snapshot is malformed")
        except BaseException:
            hub.remove(listener)
            if slot is not None:
                slot.release()
            raise
        return cls(hub, listener, tenant, current, slot)

    def close(self) -> None:
        """Unsubscribe and give the stream slot back (safe to call more than once)."""
        self._hub.remove(self._listener)
        if self._slot is not None:
            self._slot.release()

    async def reread(self) -> Delivery | None:
        """The current snapshot, read again (None when the stores cannot answer right now)."""
        try:
            doc = (await snapshot_for(self.job_id, self.tenant)).doc
        except (redis.exceptions.RedisError, sa.exc.SQLAlchemyError, OSError) as exc:
            log.warning("live feed: could not re-read job %s: %s", self.job_id, exc)
            return None
        return Delivery.of(doc)

    def watch_disconnect(self, receive: Receive) -> asyncio.Future[None]:
        """Notice the client leaving (a task reading ``receive``); cancel it when done."""
        gone = asyncio.ensure_future(until_disconnect(receive))
        gone.add_done_callback(self._listener.mark_gone)
        return gone

    @property
    def gone(self) -> bool:
        return self._listener.gone

    @property
    def revoked(self) -> bool:
        """The key this feed serves was revoked: the stream must end now."""
        return self._listener.revoked

    @property
    def ended(self) -> bool:
        return self._listener.gone or self._listener.revoked

    async def guarded_send(self, send: Callable[[Any], Awaitable[None]], message: Any) -> None:
        """``send(message)``, watched: the hub's watchdog calls ``on_stall`` if it hangs."""
        listener = self._listener
        listener.sending_since = asyncio.get_running_loop().time()
        try:
            await send(message)
        finally:
            listener.sending_since = 0.0

    def on_stall(self, callback: Callable[[], None]) -> None:
        self._listener.on_stall = callback

    async def next(self, after: int, *, timeout: float | None = None) -> list[Delivery]:
        """Snapshots newer than ``after``, in ``seq`` order. Empty when the stream's heartbeat
        came with nothing new (after a re-read of the snapshot), when ``timeout`` passed, or
        when the client left."""
        listener = self._listener
        await listener.wait(timeout)
        if listener.gone or listener.revoked:
            return []
        items = listener.take()
        if listener.resync or listener.quiet:
            listener.resync = listener.quiet = False
            current = await self.reread()
            if current is not None:
                items.append(current)
        fresh: list[Delivery] = []
        for item in items:
            if item.seq > after:
                fresh.append(item)
                after = item.seq
        if fresh:
            self.current = fresh[-1]
        return fresh


async def long_poll(
    feed: JobFeed,
    *,
    timeout: float,
    is_news: Callable[[Delivery], bool],
    receive: Receive | None = None,
) -> Delivery:
    """The first snapshot that ``is_news`` (the current one, if it already is), else the
    latest one once ``timeout`` seconds have passed or the client has gone; KeyRevoked (401)
    when the caller's key is revoked meanwhile."""
    if is_news(feed.current):
        return feed.current
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    gone = feed.watch_disconnect(receive) if receive is not None else None
    try:
        while (left := deadline - loop.time()) > 0 and not feed.ended:
            for item in await feed.next(feed.current.seq, timeout=left):
                if is_news(item):
                    return item
        if feed.revoked:
            raise KeyRevoked()
        latest = await feed.reread()  # a lost message must not leave a poller a timeout behind
        if latest is not None and latest.seq > feed.current.seq:
            feed.current = latest
        return feed.current
    finally:
        if gone is not None:
            gone.cancel()
