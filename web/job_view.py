"""A job as the pages show it: the shared snapshot, redacted for display, plus what the page may offer.

The snapshot document (jobs/snapshot.py) is what every channel serves; here it
is parsed once and its free-form fields go through the same redaction as
`jobs.history.records.job_record` (`jobs.access.redaction.redact` / `redact_text`, with the
current `CONVEYOR_REDACT_KEYS`), so a secret a task let slip never reaches a
page, whether the snapshot came from Redis or SQL.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from jobs.access.redaction import redact, redact_text
from jobs.snapshot import JobSnapshot
from jobs.status import JobStatus

# Poll every second while something moves, every five while jobs only wait; not at all once
# nothing on the page can change by itself.
FAST = "every 1s"
SLOW = "every 5s"
MOVING = frozenset({JobStatus.QUEUED, JobStatus.STARTED})
RESULT_OPEN_MAX_CHARS = 2000


class JobView(JobSnapshot):
    """The snapshot (its one declaration, jobs/snapshot.py) with its free text redacted, plus the
    pending control request and the actions the page may offer."""

    control: str | None = None
    actions: list[str] = Field(default_factory=list)

    @property
    def short_id(self) -> str:
        return self.job_id[:8]

    @property
    def percent(self) -> int | None:
        """Whole percent for the bar and its label (100 only once finished)."""
        if self.status == JobStatus.FINISHED:
            return 100
        if self.progress is None:
            return None
        return max(0, min(99 if self.progress < 100 else 100, int(self.progress)))

    @property
    def result_text(self) -> str:
        return json.dumps(self.result, indent=2, ensure_ascii=False, default=str)

    @property
    def result_is_large(self) -> bool:
        return len(self.result_text) > RESULT_OPEN_MAX_CHARS

    @property
    def poll_trigger(self) -> str | None:
        """The fragment's hx-trigger while the job can change; None once it is terminal."""
        if self.is_terminal:
            return None
        return FAST if self.status in MOVING else SLOW


def view_of(doc: bytes | dict[str, Any], *, control: str | None = None, with_actions: bool = True) -> JobView:
    """A snapshot document as a redacted view (``control``: the pending cancel/pause request)."""
    data = json.loads(doc) if isinstance(doc, bytes | str) else doc
    status = JobStatus(data["status"])
    error = data.get("error")
    shown_error = {"type": error["type"], "detail": redact_text(error.get("detail") or "")} if error else None
    actions: list[str] = []
    if with_actions:
        from jobs.actions.control import allowed_actions  # pulls RQ: loaded on first use, off the cold start

        actions = allowed_actions(status, control)
    return JobView.model_validate(
        {
            **data,
            "message": redact_text(data["message"]) if data.get("message") else None,
            "result": redact(data.get("result")),
            "error": shown_error,
            "control": control or None,
            "actions": actions,
        }
    )


def table_trigger(statuses: list[JobStatus]) -> str | None:
    """The jobs table's one poller: fast while a listed job moves, slow while they only wait, else none."""
    if any(status in MOVING for status in statuses):
        return FAST
    if any(not status.is_terminal for status in statuses):
        return SLOW
    return None
