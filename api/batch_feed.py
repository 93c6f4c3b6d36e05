"""A batch's live snapshots: one watch per batch per process, coalesced, shared by every watcher.

A batch of 10,000 jobs changes tens of thousands of times; its watchers must not get a message
for each. So each process keeps one :class:`BatchWatch` per watched batch: it taps the hub's
channel for its jobs' documents (O(1) each: a dict update), and at most once every
``CONVEYOR_BATCH_LIVE_INTERVAL`` (100 ms) recomputes the batch's snapshot and hands it to its
listeners when its ``seq`` moved. However many jobs changed in between, each watcher gets one
message; a snapshot reaches a watcher within one interval of the change that made it.

:class:`BatchFeed` is a :class:`~api.live_feed.JobFeed` whose snapshots are the batch's, so
long poll, SSE and WebSocket serve a batch with the very code that serves a job (heartbeats,
stalls, revoked keys, stream slots included). A feed that is quiet for a heartbeat, or whose
subscription was re-established, re-reads the batch whole from SQL and Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref

import redis.exceptions
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool

from api.live_feed import JobFeed
from api.live_hub import Delivery, Listener, SnapshotHub, get_hub
from api.stream_limits import stream_slots
from jobs.history.models import Batch
from jobs.settings import get_settings
from jobs.snapshot import DocHead
from jobs.state.batch_state import (
    BatchNotFound,
    Member,
    Tally,
    get_batch,
    job_ids_of,
    member_from_doc,
    read_members,
    snapshot_doc,
    summarize,
)

log = logging.getLogger(__name__)


def _load_members(batch_id: str) -> dict[str, Member]:
    """The batch's jobs' current state (SQL with Redis laid over it), in a worker thread."""
    from jobs.history.db import session_scope
    from jobs.state.redis_conn import get_redis

    with session_scope() as session:
        return read_members(session, get_redis(), batch_id)


def _load_row(batch_id: str, tenant: str | None) -> Batch:
    """The batch row (BatchNotFound for another tenant's or none), detached from its session."""
    from jobs.history.db import session_scope

    with session_scope() as session:
        batch = get_batch(session, batch_id=batch_id, tenant=tenant)
        session.expunge(batch)
        return batch


class BatchWatch:
    """One batch's jobs as this process last heard of them, and the batch snapshot they make."""

    def __init__(self, hub: SnapshotHub, batch: Batch) -> None:
        self.hub = hub
        self.batch = batch
        self.ids = frozenset(job_ids_of(batch.batch_id, batch.size))
        self.members: dict[str, Member] = {}
        self.listeners: set[Listener] = set()
        self.current: Delivery | None = None
        self._early: dict[str, bytes] | None = {}  # documents heard before the first read landed
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Future[None] | None = None
        self.published = 0

    def tap(self, head: DocHead, doc: bytes) -> None:
        """The hub's hand-off of every published document: keep those of this batch's jobs."""
        if head.job_id not in self.ids:
            return
        if self._early is not None:
            self._early[head.job_id] = doc
            return
        member = self.members.get(head.job_id)
        if member is None or head.seq <= member.seq:
            return
        self.members[head.job_id] = member_from_doc(json.loads(doc))
        self._dirty.set()

    async def refresh(self) -> None:
        """Read the batch whole again (coalesced: callers that arrive during a read share it)."""
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)
            return
        self._refreshing = asyncio.get_running_loop().create_future()
        try:
            members = await run_in_threadpool(_load_members, self.batch.batch_id)
            self._merge(members)
            self._dirty.set()
            self._publish()
        finally:
            self._refreshing.set_result(None)
            self._refreshing = None

    def _merge(self, members: dict[str, Member]) -> None:
        """A full read laid over what the channel said meanwhile: the newer seq of each job wins."""
        early, self._early = self._early, None
        for job_id, member in members.items():
            known = self.members.get(job_id)
            if known is None or member.seq >= known.seq:
                self.members[job_id] = member
        for job_id, doc in (early or {}).items():
            known = self.members.get(job_id)
            if known is not None:
                heard = member_from_doc(json.loads(doc))
                if heard.seq > known.seq:
                    self.members[job_id] = heard

    def _publish(self) -> None:
        """Recompute the snapshot; hand it to every listener when its seq moved."""
        self._dirty.clear()
        snapshot = summarize(self.batch, Tally.of(self.members.values()))
        if self.current is not None and snapshot.seq <= self.current.seq:
            return
        head = DocHead(job_id=self.batch.batch_id, status=snapshot.status.value, seq=snapshot.seq)
        self.current = Delivery(snapshot_doc(snapshot), head)
        self.published += 1
        for listener in self.listeners:
            listener.deliver(self.current)

    async def run(self) -> None:
        """Publish at most once per interval, whatever the number of changes in it."""
        interval = get_settings().batch_live_interval
        while self.listeners:
            await self._dirty.wait()
            self._publish()
            await asyncio.sleep(interval)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"conveyor-batch-{self.batch.batch_id}")

    def stop(self) -> None:
        self.hub.remove_tap(self.tap)
        if self._task is not None and not self._task.done():
            self._task.cancel()


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, BatchWatch]] = (
    weakref.WeakKeyDictionary()
)


def watches() -> dict[str, BatchWatch]:
    """This event loop's watches, by batch id."""
    loop = asyncio.get_running_loop()
    found = _watches.get(loop)
    if found is None:
        found = _watches[loop] = {}
    return found


async def _watch_for(hub: SnapshotHub, batch_id: str, tenant: str | None) -> BatchWatch:
    """The process's watch of ``batch_id``, made (tap first, then the first read) when missing.

    The tenant is checked on every call, whether the watch exists or not.
    """
    found = watches()
    watch = found.get(batch_id)
    if watch is not None:
        if tenant is not None and watch.batch.tenant != tenant:
            raise BatchNotFound(batch_id)
        if watch.current is None:
            await watch.refresh()
        return watch
    batch = await run_in_threadpool(_load_row, batch_id, tenant)
    watch = found[batch_id] = BatchWatch(hub, batch)
    hub.add_tap(watch.tap)
    try:
        await watch.refresh()
    except BaseException:
        watch.stop()
        found.pop(batch_id, None)
        raise
    return watch


class BatchFeed(JobFeed):
    """The snapshots of one batch, for one client (see the module's docstring)."""

    watch: BatchWatch

    @classmethod
    async def open_batch(cls, batch_id: str, tenant: str | None, *, key_id: str = "") -> BatchFeed:
        """Take a stream slot, listen, and join (or start) the batch's watch; BatchNotFound for
        another tenant's or no batch."""
        slot = stream_slots.acquire(key_id) if key_id else None
        hub = get_hub()
        listener: Listener | None = None
        try:
            listener = await hub.add(batch_id, key_id)
            watch = await _watch_for(hub, batch_id, tenant)
        except BaseException:
            if listener is not None:
                hub.remove(listener)
            if slot is not None:
                slot.release()
            raise
        watch.listeners.add(listener)
        watch.start()
        assert watch.current is not None
        feed = cls(hub, listener, tenant, watch.current, slot)
        feed.watch = watch
        return feed

    def close(self) -> None:
        """Leave the watch (the last watcher out stops it), then unsubscribe and free the slot."""
        watch: BatchWatch | None = getattr(self, "watch", None)
        if watch is not None:
            watch.listeners.discard(self._listener)
            batch_id = watch.batch.batch_id
            if not watch.listeners:
                watch.stop()
                found = watches()
                if found.get(batch_id) is watch:
                    del found[batch_id]
        super().close()

    async def reread(self) -> Delivery | None:
        """The batch read whole again (None when the stores cannot answer right now)."""
        try:
            await self.watch.refresh()
        except (redis.exceptions.RedisError, sa.exc.SQLAlchemyError, OSError) as exc:
            log.warning("batch feed: could not re-read batch %s: %s", self.job_id, exc)
            return None
        return self.watch.current
