"""The one snapshot shape that REST, long poll, SSE, WebSocket, the client and the pages share.

`JobSnapshot` is the one declaration of that shape: :data:`PUBLIC_FIELDS`
(what the live hash stores and the gate assembles) is derived from it, and
the Python client's copy (`conveyor_client.snapshot.Snapshot`, which must not
import the server) is tied to it by `tests/test_snapshot_contract.py`.
A snapshot travels as a JSON document whose fields are always in the order
of :data:`PUBLIC_FIELDS`. The live store keeps each field JSON-encoded in a
Redis hash and assembles the document in Lua without parsing user data; the
same assembly happens here for rows read from SQL, so both sources produce
byte-identical documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict

from jobs.clock import isoformat
from jobs.lazy_model import LazyModel
from jobs.status import JobStatus
from jobs.storable import storable_json

if TYPE_CHECKING:
    from jobs.history.models import Job
    from jobs.history.submit_sql import NewJob


class ErrorInfo(LazyModel):
    type: str
    detail: str


class ResultRef(LazyModel):
    """Where a result too large to travel inline is served (see jobs/state/results.py)."""

    url: str
    size_bytes: int
    sha256: str


class JobSnapshot(LazyModel):
    """A job as clients see it. ``seq`` is its version: ETag, SSE id and long-poll cursor."""

    model_config = ConfigDict(json_schema_extra={"examples": []})

    job_id: str
    task: str
    queue: str
    status: JobStatus
    progress: float | None = None
    message: str | None = None
    result: Any = None
    result_ref: ResultRef | None = None
    error: ErrorInfo | None = None
    attempt: int = 1
    max_retries: int = 0
    created_at: datetime
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    updated_at: datetime
    eta_seconds: float | None = None
    seq: int

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


# Declaration order is document order: `peek` relies on job_id first, status before any free-form
# field, and seq last.
PUBLIC_FIELDS: tuple[str, ...] = tuple(JobSnapshot.model_fields)


def encode(value: Any) -> str:
    """The JSON text of one field, as stored in the live hash (NUL-free: see jobs/storable.py)."""
    if isinstance(value, datetime):
        value = isoformat(value)
    return storable_json(value, separators=(",", ":"), ensure_ascii=False)


def assemble(fields: dict[str, str]) -> bytes:
    """The snapshot document from JSON-encoded field texts (missing fields are null)."""
    body = ",".join(f'"{name}":{fields.get(name) or "null"}' for name in PUBLIC_FIELDS)
    return ("{" + body + "}").encode()


def error_of(job: Job | NewJob) -> dict[str, str] | None:
    if job.error_type is None:
        return None
    return {"type": job.error_type, "detail": job.error_detail or ""}


def row_fields(job: Job | NewJob) -> dict[str, str]:
    """A SQL row as JSON-encoded public fields."""
    values: dict[str, Any] = {
        "job_id": job.job_id,
        "task": job.task,
        "queue": job.queue,
        "status": job.status,
        "progress": job.progress,
        "message": job.message,
        "result": job.result,
        "result_ref": job.result_ref,
        "error": error_of(job),
        "attempt": job.attempt,
        "max_retries": job.max_retries,
        "created_at": job.created_at,
        "enqueued_at": job.enqueued_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "updated_at": job.updated_at,
        "eta_seconds": None,
        "seq": job.seq,
    }
    return {name: encode(value) for name, value in values.items()}


def doc_from_row(job: Job) -> bytes:
    return assemble(row_fields(job))


@dataclass(frozen=True, slots=True)
class DocHead:
    """The fields a live stream routes and orders by, read from a document without parsing it."""

    job_id: str
    status: str
    seq: int

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_VALUES


TERMINAL_VALUES = frozenset(s.value for s in JobStatus if s.is_terminal)
_HEAD_JOB_ID = b'{"job_id":"'
_HEAD_STATUS = b',"status":"'
_HEAD_SEQ = b',"seq":'


def peek(doc: bytes) -> DocHead | None:
    """job_id, status and seq of a snapshot document, or None if it is not one.

    Documents always list :data:`PUBLIC_FIELDS` in order (job_id first, seq
    last), and the only fields before status are JSON strings, in which an
    unescaped quote cannot occur; so three searches find the values without
    decoding a possibly large result.
    """
    if not doc.startswith(_HEAD_JOB_ID):
        return None
    start = len(_HEAD_JOB_ID)
    end = doc.find(b'"', start)
    at = doc.find(_HEAD_STATUS, end)
    seq_at = doc.rfind(_HEAD_SEQ)
    if end < 0 or at < 0 or seq_at < at:
        return None
    status_end = doc.find(b'"', at + len(_HEAD_STATUS))
    try:
        seq = int(doc[seq_at + len(_HEAD_SEQ) : -1])
    except ValueError:
        return None
    return DocHead(
        job_id=doc[start:end].decode(),
        status=doc[at + len(_HEAD_STATUS) : status_end].decode(),
        seq=seq,
    )
