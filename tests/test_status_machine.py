"""The transition table: what may follow what, and what never may."""

from __future__ import annotations

import pytest

from jobs.status import TERMINAL, JobStatus, allowed_sources, can_transition

S = JobStatus


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.QUEUED, S.STARTED),
        (S.QUEUED, S.CANCELED),
        (S.SCHEDULED, S.QUEUED),
        (S.DEFERRED, S.QUEUED),
        (S.STARTED, S.STARTED),
        (S.STARTED, S.PAUSED),
        (S.PAUSED, S.STARTED),
        (S.STARTED, S.FINISHED),
        (S.STARTED, S.FAILED),
        (S.PAUSED, S.CANCELED),
    ],
)
def test_legal_transitions(current: JobStatus, new: JobStatus):
    assert can_transition(current, new)


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
@pytest.mark.parametrize("new", list(JobStatus))
def test_nothing_follows_a_terminal_status_within_an_attempt(terminal: JobStatus, new: JobStatus):
    assert not can_transition(terminal, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [(S.QUEUED, S.FINISHED), (S.QUEUED, S.PAUSED), (S.PAUSED, S.PAUSED), (S.STARTED, S.QUEUED)],
)
def test_illegal_transitions(current: JobStatus, new: JobStatus):
    assert not can_transition(current, new)


def test_a_new_attempt_may_leave_failed_or_canceled_but_never_finished():
    assert can_transition(S.FAILED, S.QUEUED, new_attempt=True)
    assert can_transition(S.CANCELED, S.QUEUED, new_attempt=True)
    assert can_transition(S.STARTED, S.SCHEDULED, new_attempt=True)
    assert can_transition(S.FAILED, S.DEFERRED, new_attempt=True)  # a restart that waits for a parent
    assert not can_transition(S.FINISHED, S.QUEUED, new_attempt=True)
    assert not can_transition(S.FAILED, S.STARTED, new_attempt=True)


def test_allowed_sources_is_the_inverse_of_the_table():
    for new in JobStatus:
        for current in JobStatus:
            assert (current in allowed_sources(new)) == can_transition(current, new)
