"""The job rows' common SQL: rows, events, listing, and replaying the journal.

Not the only SQL about jobs: reports and upkeep keep their own queries beside their logic
(jobs/reporting/analytics.py and jobs/reporting/percentiles.py, jobs/reporting/queue_stats.py,
jobs/history/retention.py, jobs/state/results.py for stored results, jobs/actions/submit.py for a
failed enqueue), and keys live in jobs/access/auth.py. Reads and writes that every channel shares belong here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from jobs.clock import isoformat, parse_iso, utcnow
from jobs.errors import InvalidRequest
from jobs.history.models import Job, JobEvent, JobResult
from jobs.reporting.error_signature import error_signature
from jobs.status import RUNNING, WAITING, JobStatus
from jobs.webhooks.outbox import enqueue_for_entries


def get_job(session: Session, *, job_id: str, tenant: str | None = None) -> Job | None:
    """The job with ``job_id``; with ``tenant`` given, only if it belongs to that tenant."""
    job = session.get(Job, job_id)
    if job is None or (tenant is not None and job.tenant != tenant):
        return None
    return job


def find_by_idempotency_key(session: Session, *, tenant: str, key: str) -> Job | None:
    return session.exec(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)).first()


def add_job(session: Session, *, job: Job, data: dict[str, Any] | None = None) -> None:
    """Stage a new job row and its first event (the caller commits)."""
    session.add(job)
    session.add(
        JobEvent(
            job_id=job.job_id,
            seq=job.seq,
            event=job.status,
            status=job.status,
            attempt=job.attempt,
            progress=job.progress,
            message=job.message,
            data=data,
            created_at=job.created_at,
        )
    )


@dataclass(frozen=True)
class Page:
    items: list[Job]
    next_cursor: str | None


def _encode_cursor(job: Job) -> str:
    raw = json.dumps([isoformat(job.created_at), job.job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        if not isinstance(created, str) or not isinstance(job_id, str):  # e.g. a number: not ours
            raise ValueError
        when = parse_iso(created)
        if when is None:
            raise ValueError
        return when, job_id
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise InvalidRequest(
            "The cursor is not valid; pass back the next_cursor of a previous page."
        ) from None


def list_jobs(
    session: Session,
    *,
    tenant: str | None,
    status: Sequence[JobStatus] = (),
    task: str | None = None,
    queue: str | None = None,
    owner: str | None = None,
    tag: str | None = None,
    trace_id: str | None = None,
    batch_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """Jobs newest first, filtered, one keyset page at a time (``tenant=None``: every tenant)."""
    query = select(Job)
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    if status:
        query = query.where(col(Job.status).in_([s.value for s in status]))
    if task:
        query = query.where(Job.task == task)
    if queue:
        query = query.where(Job.queue == queue)
    if owner:
        query = query.where(Job.owner == owner)
    if trace_id:
        query = query.where(Job.trace_id == trace_id)
    if batch_id:
        query = query.where(Job.batch_id == batch_id)
    if tag:
        query = query.where(_has_tag(session, tag))
    if cursor:
        created, job_id = _decode_cursor(cursor)
        query = query.where(
            sa.or_(
                col(Job.created_at) < created,
                sa.and_(col(Job.created_at) == created, col(Job.job_id) < job_id),
            )
        )
    query = query.order_by(col(Job.created_at).desc(), col(Job.job_id).desc()).limit(limit + 1)
    rows = list(session.exec(query).all())
    more = len(rows) > limit
    items = rows[:limit]
    return Page(items=items, next_cursor=_encode_cursor(items[-1]) if more and items else None)


def _has_tag(session: Session, tag: str) -> Any:
    """`tag` is one of the job's tags: JSONB containment on PostgreSQL, json_each on SQLite."""
    tags = col(Job.tags)
    if session.get_bind().dialect.name == "postgresql":
        return tags.op("@>")(sa.cast(sa.literal(json.dumps([tag])), postgresql.JSONB))
    each = sa.func.json_each(tags).table_valued("value")
    return sa.exists(sa.select(1).select_from(each).where(each.c.value == tag))


def list_events(session: Session, *, job_id: str) -> list[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.seq), col(JobEvent.id))
    return list(session.exec(query).all())


# --- what the reconciler asks ------------------------------------------------------------------


def running_job_ids(session: Session) -> list[str]:
    """Ids of the jobs SQL believes are started or paused."""
    query = select(Job.job_id).where(col(Job.status).in_([s.value for s in RUNNING]))
    return list(session.exec(query).all())


def waiting_jobs(
    session: Session,
    *,
    untouched_since: datetime,
    touched_after: datetime | None = None,
    after: tuple[datetime, str] | None = None,
    limit: int = 500,
) -> list[Job]:
    """Waiting jobs (queued, scheduled, deferred) unchanged since a time (and, if given, changed
    after another: the recent sweep, served by ``ix_jobs_status_updated``), oldest first, a page at
    a time."""
    query = select(Job).where(
        col(Job.status).in_([s.value for s in WAITING]), col(Job.updated_at) < untouched_since
    )
    if touched_after is not None:
        query = query.where(col(Job.updated_at) >= touched_after)
    if after is not None:
        created, job_id = after
        query = query.where(
            sa.or_(
                col(Job.created_at) > created,
                sa.and_(col(Job.created_at) == created, col(Job.job_id) > job_id),
            )
        )
    return list(session.exec(query.order_by(col(Job.created_at), col(Job.job_id)).limit(limit)).all())


def deferred_jobs(session: Session, *, limit: int = 500) -> list[Job]:
    """Jobs waiting for others to finish, oldest first."""
    query = select(Job).where(Job.status == JobStatus.DEFERRED.value)
    return list(session.exec(query.order_by(col(Job.created_at)).limit(limit)).all())


def statuses_of(session: Session, job_ids: Iterable[str]) -> dict[str, JobStatus]:
    """The SQL status of each of those jobs that exists."""
    ids = list(set(job_ids))
    if not ids:
        return {}
    rows = session.exec(select(Job.job_id, Job.status).where(col(Job.job_id).in_(ids))).all()
    return {job_id: JobStatus(status) for job_id, status in rows}


# --- replaying the live journal into SQL -------------------------------------------------------


@dataclass(frozen=True)
class JournalEntry:
    """One accepted state change: the event name, the snapshot after it, and extra event data."""

    event: str
    doc: dict[str, Any]
    data: dict[str, Any]

    @property
    def job_id(self) -> str:
        return str(self.doc["job_id"])

    @property
    def seq(self) -> int:
        return int(self.doc["seq"])


def _ms_between(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, round((end - start).total_seconds() * 1000))


def row_values(entry: JournalEntry) -> dict[str, Any]:
    """The jobs-row columns that a snapshot determines."""
    doc = entry.doc
    status = JobStatus(doc["status"])
    error = doc.get("error") or None
    enqueued_at = parse_iso(doc.get("enqueued_at"))
    started_at = parse_iso(doc.get("started_at"))
    ended_at = (
        (parse_iso(doc.get("ended_at")) or parse_iso(doc["updated_at"])) if status.is_terminal else None
    )
    return {
        "status": status.value,
        "progress": doc.get("progress"),
        "message": doc.get("message"),
        "result": doc.get("result"),
        "result_ref": doc.get("result_ref"),
        "error_type": error["type"] if error else None,
        "error_detail": error["detail"] if error else None,
        "error_signature": error_signature(error["type"], error["detail"]) if error else None,
        "attempt": doc.get("attempt") or 1,
        "enqueued_at": enqueued_at,
        "started_at": started_at,
        "ended_at": ended_at,
        "finished_at": ended_at if status == JobStatus.FINISHED else None,
        "failed_at": ended_at if status == JobStatus.FAILED else None,
        "canceled_at": ended_at if status == JobStatus.CANCELED else None,
        "updated_at": parse_iso(doc["updated_at"]),
        "wait_ms": _ms_between(enqueued_at, started_at),
        "run_ms": _ms_between(started_at, ended_at),
        "seq": entry.seq,
    }


# Columns taken from event data when present (otherwise left as they are).
DATA_COLUMNS = ("worker", "canceled_by", "scheduled_for")


_JOBS: sa.Table = Job.__table__  # type: ignore[attr-defined]
_EVENTS: sa.Table = JobEvent.__table__  # type: ignore[attr-defined]

# The replay's statements, built once: the recorder runs them for every batch, and a statement
# built anew costs more CPU than the rows it carries (issue 17).
_KNOWN_IDS = sa.select(_JOBS.c.job_id, _JOBS.c.tenant).where(
    _JOBS.c.job_id.in_(sa.bindparam("ids", expanding=True))
)


@functools.cache
def _move_rows(columns: tuple[str, ...]) -> sa.Update:
    """UPDATE of ``columns`` for one row, unless the row already holds that ``seq`` or a later one."""
    return (
        sa.update(_JOBS)
        .where(_JOBS.c.job_id == sa.bindparam("k_job_id"), _JOBS.c.seq < sa.bindparam("k_seq"))
        .values({name: sa.bindparam(f"v_{name}") for name in columns})
    )


@functools.cache
def _insert_events(dialect: str) -> Any:
    """INSERT of event rows, each stored once per (job, seq): a replayed one is skipped."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(_EVENTS).on_conflict_do_nothing(index_elements=["job_id", "seq"])


def _event_row(entry: JournalEntry) -> dict[str, Any]:
    doc = entry.doc
    return {
        "job_id": entry.job_id,
        "seq": entry.seq,
        "event": entry.event,
        "status": doc["status"],
        "attempt": doc.get("attempt") or 1,
        "progress": doc.get("progress"),
        "message": doc.get("message"),
        "data": entry.data or None,
        "created_at": parse_iso(doc["updated_at"]),
    }


def _row_params(entry: JournalEntry) -> dict[str, Any]:
    """The UPDATE parameters that move one row to ``entry``: its columns as ``v_*``, the key as ``k_*``."""
    values = row_values(entry)
    for name in DATA_COLUMNS:
        if name in entry.data:
            values[name] = parse_iso(entry.data[name]) if name == "scheduled_for" else entry.data[name]
    params = {f"v_{name}": value for name, value in values.items()}
    params["k_job_id"], params["k_seq"] = entry.job_id, entry.seq
    return params


def apply_journal(
    session: Session,
    entries: Iterable[JournalEntry],
    *,
    blobs: Mapping[tuple[str, int], bytes] | None = None,
    events: bool = True,
) -> int:
    """Bring SQL up to date with accepted state changes; returns how many rows moved forward.

    Safe to replay and to run in several processes: a row only moves to a
    higher ``seq``, and an event is stored once per (job, seq). ``blobs`` are
    large results stashed in Redis, keyed by (job_id, attempt), stored in
    `job_results` alongside (see jobs/state/results.py). With ``events=False`` only
    the rows move (the recorder stores the events later, with their data).

    Plain batched statements on the session's connection: one SELECT of the known ids, one
    UPDATE per set of columns and one INSERT of the events, each executed for many rows at
    once (executemany), so a batch of hundreds of jobs costs a handful of statements.
    """
    entries = list(entries)
    if not entries:
        return 0
    conn = session.connection()
    ids = {"ids": list({e.job_id for e in entries})}
    known: dict[str, str] = {job_id: tenant for job_id, tenant in conn.execute(_KNOWN_IDS, ids)}
    entries = [e for e in entries if e.job_id in known]
    if not entries:
        return 0

    latest: dict[str, JournalEntry] = {}
    for entry in entries:
        if entry.job_id not in latest or entry.seq > latest[entry.job_id].seq:
            latest[entry.job_id] = entry
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for entry in latest.values():
        params = _row_params(entry)
        groups.setdefault(tuple(sorted(params)), []).append(params)
    moved = 0
    for names, batch in groups.items():
        columns = tuple(name[2:] for name in names if name.startswith("v_"))
        moved += max(0, conn.execute(_move_rows(columns), batch).rowcount or 0)

    if not events:
        return moved
    conn.execute(_insert_events(conn.dialect.name), [_event_row(e) for e in entries])
    enqueue_for_entries(conn, entries, known)  # webhooks: in this transaction, sent by others
    if blobs:
        store_blobs(session, blobs)
    return moved


# --- counts ------------------------------------------------------------------------------------


# --- large results (jobs/state/results.py stashes them in Redis; these keep them in SQL) -------------


def store_blobs(session: Session, blobs: Mapping[tuple[str, int], bytes]) -> list[tuple[str, int]]:
    """Write stashed results to `job_results` for rows that still reference that attempt's result.

    Returns the pairs written (their Redis keys may be deleted once the caller commits).
    A later attempt's result replaces an earlier one; an older one never replaces a newer.
    """
    if not blobs:
        return []
    ids = {job_id for job_id, _ in blobs}
    rows = session.exec(select(Job.job_id, Job.attempt, Job.result_ref).where(col(Job.job_id).in_(ids))).all()
    referenced = {(job_id, attempt) for job_id, attempt, ref in rows if ref}
    written: list[tuple[str, int]] = []
    now = utcnow()
    for (job_id, attempt), body in blobs.items():
        if (job_id, attempt) not in referenced:
            continue
        existing = session.get(JobResult, job_id)
        if existing is not None and existing.attempt > attempt:
            continue
        row = existing or JobResult(
            job_id=job_id, attempt=attempt, size_bytes=0, sha256="", body="", created_at=now
        )
        row.attempt, row.size_bytes, row.body = attempt, len(body), body.decode()
        row.sha256, row.created_at = hashlib.sha256(body).hexdigest(), now
        session.add(row)
        written.append((job_id, attempt))
    session.flush()
    return written


def stored_result(session: Session, *, job_id: str, attempt: int) -> bytes | None:
    """The referenced result of ``attempt`` from SQL, or None when it is not there (yet)."""
    row = session.get(JobResult, job_id)
    if row is None or row.attempt != attempt:
        return None
    return row.body.encode()
