"""The read model: how every channel reads jobs (the API, the web pages, the live feeds, the
seeds' endpoints, control).

A job is read from its live state in Redis first and from SQL once that has
expired, with the tenant check in between: another tenant's job reads exactly
like a job that does not exist (JobNotFound, a 404). A read that SQL can
answer does not fail with Redis: it comes back from SQL with
``live_unavailable`` set, and the channel tells its client so (the API's
`X-Conveyor-Live: unavailable` header); this module only reports it, since
the domain knows nothing of HTTP. Writes still need Redis (they pass the gate).

The async reads go through the event loop's pipelined connection
(:mod:`jobs.state.pipelined_redis`), the API's hottest path; the sync ones take their
client and session from the caller. Store clients load on first use, so that
the modules declaring routes stay cheap to import (the Lambda cold start).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobs.access.auth import may_reach
from jobs.errors import JobNotFound, ResultGone, ResultNotReady
from jobs.snapshot import JobSnapshot, doc_from_row
from jobs.state.live import HeadField, read_head, read_head_async, read_heads
from jobs.status import TERMINAL, JobStatus

if TYPE_CHECKING:
    from redis import Redis
    from sqlmodel import Session

    from jobs.history.models import Job
    from jobs.history.store import Page

# The fields a snapshot read takes from the hash: `GET /api/v1/jobs/{id}`'s HMGET, as benchmarked.
SNAPSHOT_HEAD: tuple[HeadField, ...] = ("tenant", "doc", "seq")
# A page that shows the control buttons also needs the pending control request.
CONTROLLED_HEAD: tuple[HeadField, ...] = (*SNAPSHOT_HEAD, "control")


@dataclass(frozen=True)
class JobRead:
    """A job's snapshot document as a reader may see it."""

    doc: bytes
    seq: int
    control: str | None = None  # a pending control request; only the live state holds one
    live_unavailable: bool = False  # answered from SQL because Redis could not be reached


@dataclass(frozen=True)
class JobState:
    """What an action on a job decides by: its status, pending control request and document."""

    status: JobStatus
    control: str | None
    doc: bytes


@dataclass(frozen=True)
class LiveDocs:
    """Jobs' documents, each the live one while the job runs."""

    docs: list[bytes]
    live_unavailable: bool = False  # Redis could not be reached: every document is SQL's


@dataclass(frozen=True)
class JobsPage:
    """One page of a tenant's jobs, newest first, each the live document while the job runs."""

    docs: list[bytes]
    next_cursor: str | None
    live_unavailable: bool = False


@dataclass(frozen=True)
class ResultRead:
    """A finished job's result as JSON bytes; ``sha256`` names a result stored by reference."""

    body: bytes
    sha256: str | None = None

    @property
    def cache_headers(self) -> dict[str, str]:
        """A stored result never changes: clients may keep it, validated by its digest."""
        if self.sha256 is None:
            return {}
        return {"ETag": f'"{self.sha256}"', "Cache-Control": "private, max-age=3600"}


def valid_job_id(job_id: str) -> bool:
    """Whether ``job_id`` is a job id at all (a canonical UUID): anything else is not looked up."""
    try:
        return str(uuid.UUID(job_id)) == job_id
    except ValueError:
        return False


def redis_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis cannot be reached (or refuses writes) right now.

    Looked up in ``sys.modules``: an outage can only come from a client that is loaded already,
    and importing redis here would cost the Lambda cold start.
    """
    redis_exc = sys.modules.get("redis.exceptions")
    return redis_exc is not None and isinstance(
        exc,
        redis_exc.ConnectionError
        | redis_exc.TimeoutError
        # Reachable but refusing writes: out of memory, a read-only replica, a failover under way.
        | redis_exc.OutOfMemoryError
        | redis_exc.ReadOnlyError
        | redis_exc.ClusterDownError,
    )


async def live_snapshot_for(
    job_id: str, tenant: str | None, *, fields: tuple[HeadField, ...] = SNAPSHOT_HEAD
) -> JobRead | None:
    """The tenant's job (any tenant's for None) from Redis alone; None when Redis has no live
    state for it. JobNotFound for another tenant's job. ``job_id`` must be valid."""
    from jobs.state.pipelined_redis import pipelined_redis

    head = await read_head_async(pipelined_redis(), job_id, fields)
    if head.doc is None:
        return None
    if not may_reach(tenant, head.tenant or ""):
        raise JobNotFound(job_id)
    return JobRead(head.doc, head.seq or 0, head.control)


async def snapshot_for(
    job_id: str, tenant: str | None, *, fields: tuple[HeadField, ...] = SNAPSHOT_HEAD
) -> JobRead:
    """The tenant's job (any tenant's for None): Redis first, SQL after the live state expired or
    while Redis cannot be reached. JobNotFound for a malformed id, another tenant's job, or none."""
    if not valid_job_id(job_id):
        raise JobNotFound(job_id)
    try:
        live = await live_snapshot_for(job_id, tenant, fields=fields)
    except Exception as exc:
        if not redis_unreachable(exc):
            raise
        live, unavailable = None, True
    else:
        unavailable = False
    if live is not None:
        return live
    from starlette.concurrency import run_in_threadpool  # the pool the routes' sync code runs in

    doc, seq = await run_in_threadpool(_snapshot_from_sql, job_id, tenant)
    return JobRead(doc, seq, live_unavailable=unavailable)


def _snapshot_from_sql(job_id: str, tenant: str | None) -> tuple[bytes, int]:
    """The SQL half of :func:`snapshot_for`, in a worker thread: it opens its own session, and only
    when Redis could not answer (the common read never touches SQL)."""
    from jobs.history.db import session_scope
    from jobs.history.store import get_job

    with session_scope() as session:
        job = get_job(session, job_id=job_id, tenant=tenant)
        if job is None:
            raise JobNotFound(job_id)
        return doc_from_row(job), job.seq


def state_for(job_id: str, tenant: str | None, *, client: Redis, session: Session) -> JobState:
    """The tenant's job as an action decides by: Redis first, SQL when Redis no longer has it.

    No outage fallback here: an action writes through Redis, so a Redis outage answers 503.
    """
    from jobs.history.store import get_job

    if not valid_job_id(job_id):
        raise JobNotFound(job_id)
    head = read_head(client, job_id, ("tenant", "status", "control", "doc"))
    if head.doc is not None and head.status is not None:
        if not may_reach(tenant, head.tenant or ""):
            raise JobNotFound(job_id)
        return JobState(head.status, head.control, head.doc)
    row = get_job(session, job_id=job_id, tenant=tenant)
    if row is None:
        raise JobNotFound(job_id)
    return JobState(JobStatus(row.status), None, doc_from_row(row))


def with_live_overlay(rows: Sequence[Job], *, client: Redis) -> LiveDocs:
    """The documents of SQL rows, each job still running read from Redis instead (one round trip
    for them all); SQL's documents alone while Redis cannot be reached."""
    docs = [doc_from_row(row) for row in rows]
    live_ids = [row.job_id for row in rows if JobStatus(row.status) not in TERMINAL]
    if not live_ids:
        return LiveDocs(docs)
    try:
        heads = dict(zip(live_ids, read_heads(client, live_ids, ("doc",)), strict=True))
    except Exception as exc:
        if not redis_unreachable(exc):
            raise
        return LiveDocs(docs, live_unavailable=True)
    overlaid = [
        live.doc if (live := heads.get(row.job_id)) and live.doc else doc
        for row, doc in zip(rows, docs, strict=True)
    ]
    return LiveDocs(overlaid)


def live_page(page: Page, *, client: Redis) -> JobsPage:
    """A page of jobs from SQL (``jobs.history.store.list_jobs``), each job still running as Redis has it."""
    live = with_live_overlay(page.items, client=client)
    return JobsPage(live.docs, page.next_cursor, live.live_unavailable)


async def result_of(job_id: str, read: JobRead) -> ResultRead:
    """The result of the job ``read`` (:func:`snapshot_for`) found, inline in its snapshot or stored
    by reference (``result_ref``). The caller reads first, so that it can say a read came from SQL
    even when the answer is an error.

    ResultNotReady (409) unless the job finished; ResultGone (410) when the stored result expired.
    """
    snapshot = JobSnapshot.model_validate_json(read.doc)
    if snapshot.status != JobStatus.FINISHED:
        raise ResultNotReady(f"Job {job_id} is {snapshot.status.value}; only a finished job has a result.")
    if snapshot.result_ref is None:
        from jobs.state.results import encode_result

        return ResultRead(encode_result(snapshot.result))
    from starlette.concurrency import run_in_threadpool

    body = await run_in_threadpool(_referenced, job_id, snapshot.attempt)
    if body is None:
        raise ResultGone(f"The stored result of job {job_id} is no longer available.")
    return ResultRead(body, snapshot.result_ref.sha256)


def _referenced(job_id: str, attempt: int) -> bytes | None:
    """A stored result from SQL, or from Redis while the recorder has not moved it yet."""
    from jobs.history.db import session_scope
    from jobs.history.store import stored_result
    from jobs.state.redis_conn import get_redis
    from jobs.state.results import blob_key

    with session_scope() as session:
        body = stored_result(session, job_id=job_id, attempt=attempt)
    if body is None:  # the recorder has not moved it into SQL yet
        body = get_redis().get(blob_key(job_id, attempt))
    return body
