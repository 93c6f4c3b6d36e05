"""Rows written straight to SQL with known timestamps, for checking stats and analytics by hand."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from jobs.history.db import session_scope
from jobs.history.models import Job
from jobs.reporting.error_signature import error_signature
from jobs.status import JobStatus


def job_row(
    tenant: str,
    *,
    queue: str = "default",
    task: str = "a",
    status: str = "finished",
    ended: datetime | None = None,
    run_ms: int | None = None,
    wait_ms: int | None = None,
    attempt: int = 1,
    enqueued: datetime | None = None,
    error: tuple[str, str] | None = None,
) -> Job:
    """A consistent row: timestamps derived backwards from ``ended`` (or forward from ``enqueued``)."""
    state = JobStatus(status)
    started: datetime | None = None
    if ended is not None:
        started = ended - timedelta(milliseconds=run_ms) if run_ms is not None else None
        if enqueued is None:
            enqueued = (started or ended) - timedelta(milliseconds=wait_ms or 0)
    assert enqueued is not None
    if started is None and wait_ms is not None:
        started = enqueued + timedelta(milliseconds=wait_ms)
    return Job(
        job_id=str(uuid.uuid4()),
        tenant=tenant,
        task=task,
        queue=queue,
        status=state.value,
        attempt=attempt,
        max_retries=max(0, attempt - 1),
        created_at=enqueued,
        enqueued_at=enqueued,
        started_at=started,
        ended_at=ended,
        finished_at=ended if state == JobStatus.FINISHED else None,
        failed_at=ended if state == JobStatus.FAILED else None,
        canceled_at=ended if state == JobStatus.CANCELED else None,
        updated_at=ended or enqueued,
        wait_ms=wait_ms if started is not None else None,
        run_ms=run_ms if ended is not None and started is not None else None,
        error_type=error[0] if error else None,
        error_detail=error[1] if error else None,
        error_signature=error_signature(*error) if error else None,
    )


def insert(rows: list[Job]) -> list[Job]:
    with session_scope() as session:
        session.add_all(rows)
    return rows


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def nearest_rank(values: list[int], p: int) -> int:
    """The reference definition: the value at rank ceil(p * n / 100) of the sorted values."""
    ordered = sorted(values)
    rank = -(-p * len(ordered) // 100)
    return ordered[max(rank, 1) - 1]


def pick(d: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: d[name] for name in names}
