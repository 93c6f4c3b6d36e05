"""The job status vocabulary and the one table that says what may follow what.

Every state change, wherever it starts (API, worker, reconciler), is checked
against :data:`TRANSITIONS`. The live store applies the check atomically in
Redis; SQL replicates what the live store accepted.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    DEFERRED = "deferred"
    STARTED = "started"
    PAUSED = "paused"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED})
WAITING: frozenset[JobStatus] = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED})
LIVE: frozenset[JobStatus] = frozenset(set(JobStatus) - TERMINAL)

S = JobStatus

# status -> statuses that may follow it within the same attempt.
# A status may follow itself only where the repeat carries news (progress).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.QUEUED: frozenset({S.STARTED, S.SCHEDULED, S.DEFERRED, S.CANCELED, S.FAILED}),
    S.SCHEDULED: frozenset({S.QUEUED, S.STARTED, S.CANCELED, S.FAILED}),
    S.DEFERRED: frozenset({S.QUEUED, S.SCHEDULED, S.STARTED, S.CANCELED, S.FAILED}),
    S.STARTED: frozenset({S.STARTED, S.PAUSED, S.FINISHED, S.FAILED, S.CANCELED}),
    S.PAUSED: frozenset({S.STARTED, S.CANCELED, S.FAILED}),
    S.FINISHED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELED: frozenset(),
}

# A new attempt (a retry after a failure, a requeue at worker shutdown, or an
# explicit restart) begins from these statuses and lands in a waiting status
# with attempt + 1 (deferred when a restarted job still waits for a parent).
NEW_ATTEMPT_FROM: frozenset[JobStatus] = frozenset({S.STARTED, S.PAUSED, S.FAILED, S.CANCELED})
NEW_ATTEMPT_TO: frozenset[JobStatus] = frozenset({S.QUEUED, S.SCHEDULED, S.DEFERRED})
# A job in one of these statuses has a live attempt: a work-horse holds it.
RUNNING: frozenset[JobStatus] = frozenset({S.STARTED, S.PAUSED})


def can_transition(current: JobStatus | str, new: JobStatus | str, *, new_attempt: bool = False) -> bool:
    """Whether ``new`` may follow ``current``.

    ``new_attempt`` marks a retry or restart, which opens a fresh attempt and so
    may leave a terminal status.
    """
    cur, nxt = JobStatus(current), JobStatus(new)
    if new_attempt:
        return cur in NEW_ATTEMPT_FROM and nxt in NEW_ATTEMPT_TO
    return nxt in TRANSITIONS[cur]


def allowed_sources(new: JobStatus | str, *, new_attempt: bool = False) -> frozenset[JobStatus]:
    """Every status from which ``new`` is a legal next status."""
    nxt = JobStatus(new)
    if new_attempt:
        return NEW_ATTEMPT_FROM if nxt in NEW_ATTEMPT_TO else frozenset()
    return frozenset(cur for cur, nexts in TRANSITIONS.items() if nxt in nexts)
