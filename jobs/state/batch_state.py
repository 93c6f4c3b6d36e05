"""A batch's state, read from its jobs: counts per status, one progress figure, an ETA, a seq.

A batch stores nothing that changes: its snapshot is a :class:`Tally` of its jobs, summarised
by :func:`summarize`. A batch's ``seq`` is the sum of its jobs' ``seq``: every accepted change
of any of its jobs bumps that job's seq, so the sum grows with every change, whichever process
reads it, and serves as the batch's version (ETag, SSE id, long-poll cursor) as a job's does.

By id (:func:`read_batch`) a batch is read from SQL with the live state of each job laid over
it (a job's newer seq in Redis wins), so it is as current as its jobs' snapshots. A page of
batches (:func:`list_batches`) tallies SQL alone in one GROUP BY: it trails the live state by
the recorder's lag.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from redis import Redis
from sqlmodel import Session, col, select

from jobs.clock import isoformat, parse_iso, utcnow
from jobs.errors import ConveyorError, InvalidRequest
from jobs.history.models import Batch, Job
from jobs.lazy_model import LazyModel
from jobs.state.live import read_public_fields
from jobs.state.reads import valid_job_id  # a batch's id is a canonical UUID too
from jobs.status import RUNNING, TERMINAL, WAITING, JobStatus

TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)
RUNNING_VALUES = frozenset(s.value for s in RUNNING)
WAITING_VALUES = frozenset(s.value for s in WAITING)


class BatchNotFound(ConveyorError):
    status_code = 404

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"No batch {batch_id!r} (or it belongs to another tenant).", batch_id=batch_id)


class BatchSnapshot(LazyModel):
    """A batch as clients see it; ``seq`` is its version, as a job's is."""

    batch_id: str
    name: str | None = None
    tags: list[str] | None = None
    status: JobStatus
    size: int
    counts: dict[str, int]
    progress: float  # 0..100: ended jobs, plus the running ones' own progress, over all jobs
    finished_share: float  # 0..1: finished jobs over all jobs
    running_progress: float | None = None  # mean progress of the running jobs (None: none runs)
    eta_seconds: float | None = None
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_seconds: float | None = None  # from submission to the last job's end, once ended
    success_rate: float | None = None  # 0..1: finished jobs over ended jobs (None: none ended)
    seq: int

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


@dataclass
class Member:
    """What a batch's snapshot needs of one of its jobs."""

    status: str
    progress: float | None
    seq: int
    started_at: datetime | None
    ended_at: datetime | None


@dataclass
class Tally:
    """A batch's jobs, added up."""

    counts: dict[str, int] = field(default_factory=dict)
    running: int = 0
    running_progress: float = 0.0
    seq: int = 0
    first_started: datetime | None = None
    last_ended: datetime | None = None

    @classmethod
    def of(cls, members: Iterable[Member]) -> Tally:
        tally = cls()
        counts = tally.counts
        for m in members:
            counts[m.status] = counts.get(m.status, 0) + 1
            tally.seq += m.seq
            if m.status in RUNNING_VALUES:
                tally.running += 1
                tally.running_progress += m.progress or 0.0
            tally.note_times(m.started_at, m.ended_at if m.status in TERMINAL_VALUES else None)
        return tally

    def note_times(self, started: datetime | None, ended: datetime | None) -> None:
        """Keep the earliest start and the latest end (of an ended job) seen."""
        if started is not None and (self.first_started is None or started < self.first_started):
            self.first_started = started
        if ended is not None and (self.last_ended is None or ended > self.last_ended):
            self.last_ended = ended


def batch_status(counts: Mapping[str, int], size: int) -> JobStatus:
    """Terminal once every job is: finished if all finished, failed if any failed, else canceled.
    Before that: started once any job started or ended, else queued."""
    ended = sum(counts.get(s, 0) for s in TERMINAL_VALUES)
    if size and ended >= size:
        if counts.get(JobStatus.FAILED.value):
            return JobStatus.FAILED
        if counts.get(JobStatus.CANCELED.value):
            return JobStatus.CANCELED
        return JobStatus.FINISHED
    waiting = sum(counts.get(s, 0) for s in WAITING_VALUES)
    return JobStatus.QUEUED if waiting >= size else JobStatus.STARTED


def summarize(batch: Batch, tally: Tally, *, now: datetime | None = None) -> BatchSnapshot:
    """The batch's snapshot from its tally (``now`` dates the ETA)."""
    size = batch.size
    counts = {s.value: tally.counts.get(s.value, 0) for s in JobStatus}
    ended = sum(counts[s] for s in TERMINAL_VALUES)
    status = batch_status(counts, size)
    done = ended + tally.running_progress / 100.0
    eta = None
    if not status.is_terminal and done > 0:
        since = tally.first_started or batch.created_at
        elapsed = max(0.0, ((now or utcnow()) - since).total_seconds())
        eta = round(elapsed * (size - done) / done, 1)
    ended_at = tally.last_ended if status.is_terminal else None
    return BatchSnapshot(
        batch_id=batch.batch_id,
        name=batch.name,
        tags=batch.tags,
        status=status,
        size=size,
        counts=counts,
        progress=round(100.0 * done / size, 2) if size else 100.0,
        finished_share=round(counts[JobStatus.FINISHED.value] / size, 4) if size else 1.0,
        running_progress=round(tally.running_progress / tally.running, 2) if tally.running else None,
        eta_seconds=eta,
        created_at=batch.created_at,
        started_at=tally.first_started,
        ended_at=ended_at,
        duration_seconds=round((ended_at - batch.created_at).total_seconds(), 3) if ended_at else None,
        success_rate=round(counts[JobStatus.FINISHED.value] / ended, 4) if ended else None,
        seq=tally.seq,
    )


def snapshot_doc(snapshot: BatchSnapshot) -> bytes:
    return snapshot.model_dump_json().encode()


# --- reading one batch --------------------------------------------------------------------------------

LIVE_FIELDS = ("status", "progress", "seq", "started_at", "ended_at")


def get_batch(session: Session, *, batch_id: str, tenant: str | None) -> Batch:
    """The batch ``batch_id`` of ``tenant`` (any tenant's for None); BatchNotFound otherwise."""
    batch = session.get(Batch, batch_id) if valid_job_id(batch_id) else None
    if batch is None or (tenant is not None and batch.tenant != tenant):
        raise BatchNotFound(batch_id)
    return batch


def job_ids_of(batch_id: str, size: int) -> list[str]:
    """The ids of a batch's jobs, in submission order: derived from the batch's (UUID 5), never stored."""
    namespace = uuid.UUID(batch_id)
    return [str(uuid.uuid5(namespace, str(index))) for index in range(size)]


def _decoded(raw: bytes | None) -> Any:
    return json.loads(raw) if raw else None


def read_members(session: Session, client: Redis | None, batch_id: str) -> dict[str, Member]:
    """The batch's jobs from SQL, each overlaid with its live state when Redis has a newer seq."""
    query = sa.select(
        col(Job.job_id),
        col(Job.status),
        col(Job.progress),
        col(Job.seq),
        col(Job.started_at),
        col(Job.ended_at),
    ).where(col(Job.batch_id) == batch_id)
    members = {
        job_id: Member(status, progress, seq, started, ended)
        for job_id, status, progress, seq, started, ended in session.execute(query)
    }
    if client is None or not members:
        return members
    ids = list(members)
    for job_id, (status, progress, seq, started, ended) in zip(
        ids, read_public_fields(client, ids, LIVE_FIELDS), strict=True
    ):
        live_seq = _decoded(seq)
        if status is None or live_seq is None or live_seq < members[job_id].seq:
            continue
        members[job_id] = Member(
            _decoded(status),
            _decoded(progress),
            live_seq,
            parse_iso(_decoded(started)),
            parse_iso(_decoded(ended)),
        )
    return members


def member_from_doc(doc: Mapping[str, Any]) -> Member:
    """A member from a job's snapshot document (what the live channel carries)."""
    return Member(
        doc["status"],
        doc.get("progress"),
        doc["seq"],
        parse_iso(doc.get("started_at")),
        parse_iso(doc.get("ended_at")),
    )


def read_batch(session: Session, client: Redis | None, *, batch_id: str, tenant: str | None) -> BatchSnapshot:
    batch = get_batch(session, batch_id=batch_id, tenant=tenant)
    return summarize(batch, Tally.of(read_members(session, client, batch_id).values()))


# --- a page of batches ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchPage:
    items: list[BatchSnapshot]
    next_cursor: str | None


def _encode_cursor(batch: Batch) -> str:
    raw = json.dumps([isoformat(batch.created_at), batch.batch_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, batch_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        when = parse_iso(created) if isinstance(created, str) else None
        if when is None or not isinstance(batch_id, str):
            raise ValueError
        return when, batch_id
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise InvalidRequest(
            "The cursor is not valid; pass back the next_cursor of a previous page."
        ) from None


def sql_tallies(session: Session, batch_ids: Sequence[str]) -> dict[str, Tally]:
    """Each batch's tally from SQL alone, in one GROUP BY over its jobs."""
    if not batch_ids:
        return {}
    running = col(Job.status).in_(list(RUNNING_VALUES))
    query = (
        sa.select(
            col(Job.batch_id),
            col(Job.status),
            sa.func.count(),
            sa.func.sum(col(Job.seq)),
            sa.func.sum(sa.case((running, sa.func.coalesce(col(Job.progress), 0.0)), else_=0.0)),
            sa.func.min(col(Job.started_at)),
            sa.func.max(col(Job.ended_at)),
        )
        .where(col(Job.batch_id).in_(list(batch_ids)))
        .group_by(col(Job.batch_id), col(Job.status))
    )
    tallies: dict[str, Tally] = {batch_id: Tally() for batch_id in batch_ids}
    for batch_id, status, count, seq, progress, started, ended in session.execute(query):
        tally = tallies[batch_id]
        tally.counts[status] = count
        tally.seq += int(seq or 0)
        if status in RUNNING_VALUES:
            tally.running += count
            tally.running_progress += float(progress or 0.0)
        tally.note_times(_aware(started), _aware(ended) if status in TERMINAL_VALUES else None)
    return tallies


def _aware(value: Any) -> datetime | None:
    """MIN/MAX over a timestamp skip the column's type on SQLite: text comes back there."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return parse_iso(str(value).replace(" ", "T"))


def list_batches(
    session: Session, *, tenant: str | None, limit: int = 50, cursor: str | None = None
) -> BatchPage:
    """Batches newest first, one keyset page at a time (``tenant=None``: every tenant)."""
    query = select(Batch)
    if tenant is not None:
        query = query.where(Batch.tenant == tenant)
    if cursor:
        created, batch_id = _decode_cursor(cursor)
        query = query.where(
            sa.or_(
                col(Batch.created_at) < created,
                sa.and_(col(Batch.created_at) == created, col(Batch.batch_id) < batch_id),
            )
        )
    query = query.order_by(col(Batch.created_at).desc(), col(Batch.batch_id).desc()).limit(limit + 1)
    rows = list(session.exec(query).all())
    items = rows[:limit]
    tallies = sql_tallies(session, [b.batch_id for b in items])
    now = utcnow()
    snapshots = [summarize(b, tallies[b.batch_id], now=now) for b in items]
    more = len(rows) > limit
    return BatchPage(snapshots, _encode_cursor(items[-1]) if more and items else None)
