"""The typed objects the client returns: a job's snapshot, a page of them, a batch's snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TERMINAL = frozenset({"finished", "failed", "canceled"})
"""Statuses a job never leaves (except through an explicit restart)."""


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@dataclass(frozen=True)
class Snapshot:
    """A job as the API reports it (the same shape on every channel). ``seq`` is its version.

    The fields are the server's `jobs.snapshot.JobSnapshot`, in its order; a contract test
    (tests/test_snapshot_contract.py) fails when the two differ. ``result_ref`` is set instead
    of ``result`` when the result is too large to travel inline: GET its ``url``.
    """

    job_id: str
    task: str
    queue: str
    status: str
    progress: float | None
    message: str | None
    result: Any
    result_ref: dict[str, Any] | None
    error: dict[str, str] | None
    attempt: int
    max_retries: int
    created_at: datetime | None
    enqueued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    updated_at: datetime | None
    eta_seconds: float | None
    seq: int
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        return cls(
            job_id=data["job_id"],
            task=data["task"],
            queue=data["queue"],
            status=data["status"],
            progress=data.get("progress"),
            message=data.get("message"),
            result=data.get("result"),
            result_ref=data.get("result_ref"),
            error=data.get("error"),
            attempt=data.get("attempt", 1),
            max_retries=data.get("max_retries", 0),
            created_at=_ts(data.get("created_at")),
            enqueued_at=_ts(data.get("enqueued_at")),
            started_at=_ts(data.get("started_at")),
            ended_at=_ts(data.get("ended_at")),
            updated_at=_ts(data.get("updated_at")),
            eta_seconds=data.get("eta_seconds"),
            seq=data["seq"],
            raw=data,
        )


@dataclass(frozen=True)
class Page:
    """One page of a job listing; pass ``next_cursor`` back for the next one."""

    items: list[Snapshot]
    next_cursor: str | None


@dataclass(frozen=True)
class BatchCreated:
    """A submitted batch: its id and its jobs' ids, in the order they were given."""

    batch_id: str
    job_ids: list[str]


@dataclass(frozen=True)
class BatchSnapshot:
    """A batch as the API reports it: counts per status, one progress figure (0..100), an ETA.
    ``seq`` is its version, as a job's is; ``status`` is terminal once every job has ended."""

    batch_id: str
    name: str | None
    status: str
    size: int
    counts: dict[str, int]
    progress: float
    finished_share: float
    running_progress: float | None
    eta_seconds: float | None
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    duration_seconds: float | None
    success_rate: float | None
    seq: int
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchSnapshot:
        return cls(
            batch_id=data["batch_id"],
            name=data.get("name"),
            status=data["status"],
            size=data["size"],
            counts=dict(data.get("counts") or {}),
            progress=data.get("progress") or 0.0,
            finished_share=data.get("finished_share") or 0.0,
            running_progress=data.get("running_progress"),
            eta_seconds=data.get("eta_seconds"),
            created_at=_ts(data.get("created_at")),
            started_at=_ts(data.get("started_at")),
            ended_at=_ts(data.get("ended_at")),
            duration_seconds=data.get("duration_seconds"),
            success_rate=data.get("success_rate"),
            seq=data["seq"],
            raw=data,
        )
