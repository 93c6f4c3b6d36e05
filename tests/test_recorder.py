"""Replaying the journal into SQL: in order or not, once or many times, SQL ends up right."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlmodel import select

from jobs.history.db import session_scope
from jobs.history.models import Job, JobEvent
from jobs.history.recorder import Recorder
from jobs.history.store import JournalEntry, apply_journal
from jobs.state.lifecycle import record
from jobs.status import JobStatus
from tests.conftest import Backend, PrivateWorld, seed_job
from tests.services import wait_until

S = JobStatus


def _entries(job_id: str) -> list[JournalEntry]:
    docs = [
        ("started", record(job_id, S.STARTED, event="started", journal=False)),
        ("progress", record(job_id, S.STARTED, event="progress", patch={"progress": 50.0}, journal=False)),
        ("finished", record(job_id, S.FINISHED, event="finished", patch={"result": 7}, journal=False)),
    ]
    return [JournalEntry(event=name, doc=json.loads(r.doc or b""), data={}) for name, r in docs]


def test_out_of_order_and_repeated_replays_converge(env: Backend):
    job_id = seed_job()
    started, progress, finished = _entries(job_id)
    with session_scope() as session:
        apply_journal(session, [finished])
    with session_scope() as session:
        apply_journal(session, [started, progress, finished, started])
    with session_scope() as session:
        row = session.get(Job, job_id)
        assert row is not None
        assert (row.status, row.result, row.seq, row.progress) == ("finished", 7, 4, 50.0)
        events = session.exec(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)).all()
        assert [e.event for e in events] == ["queued", "started", "progress", "finished"]


def test_entries_for_unknown_jobs_are_skipped(env: Backend):
    doc = {
        "job_id": "00000000-0000-4000-8000-000000000000",
        "status": "started",
        "seq": 2,
        "updated_at": "2026-01-01T00:00:00Z",
    }
    with session_scope() as session:
        assert apply_journal(session, [JournalEntry("started", doc, {})]) == 0


def test_the_recorder_drains_the_journal_into_sql(env: Backend, redis_client: Any):
    job_id = seed_job()
    record(job_id, S.STARTED, event="started")
    record(job_id, S.FINISHED, event="finished", patch={"result": {"n": 1}})
    Recorder(redis_client, consumer="test-drain").drain()

    def recorded() -> bool:
        # A worker's recorder (same consumer group) may have taken the entries first.
        with session_scope() as session:
            row = session.get(Job, job_id)
            return row is not None and row.status == "finished" and row.result == {"n": 1}

    wait_until(recorded, timeout=5, message="the journal to reach SQL")


@pytest.mark.parametrize("chunk", [1000, 1])
def test_a_worker_takes_only_the_entries_no_recorder_was_handed_and_counts_each_once(
    private_world: PrivateWorld, chunk: int, monkeypatch: pytest.MonkeyPatch
):
    """The end writer's hand-off (worker/ends.py): what it applied leaves the journal and is counted
    by it, except an entry a recorder already holds, which that recorder counts."""
    from jobs.clock import utcnow
    from jobs.history import recorder
    from jobs.history.recorder import GROUP, take_applied
    from jobs.reporting.metrics import METRICS_KEY
    from jobs.state.live import JOURNAL
    from jobs.state.redis_conn import get_redis

    monkeypatch.setattr(recorder, "TAKE_CHUNK", chunk)  # one script call, or one per entry
    client = get_redis()
    first, second = seed_job(private_world.tenant.name), seed_job(private_world.tenant.name)
    Recorder(client, consumer="test-take").drain()  # the submits' entries: out of the way
    started, done = {"started_at": utcnow()}, {"ended_at": utcnow()}
    ended = [
        record(first, S.STARTED, event="started", patch=started),
        record(first, S.FINISHED, event="finished", patch={"result": 1, **done}),
        record(second, S.STARTED, event="started", patch=started),
        record(second, S.FINISHED, event="finished", patch={"result": 2, **done}),
    ]
    ids = [r.entry_id or b"" for r in ended]
    assert all(ids)
    held = client.xreadgroup(GROUP, "test-holder", {JOURNAL: ">"}, count=2)  # the first job's
    assert [msg_id for msg_id, _ in held[0][1]] == ids[:2]
    entries = [
        JournalEntry(event=e, doc=json.loads(r.doc or b""), data={})
        for e, r in zip(("started", "finished", "started", "finished"), ended, strict=True)
    ]

    assert take_applied(client, entries, ids) == ids[2:]
    assert take_applied(client, entries, ids) == []  # taken once
    left = [msg_id for msg_id, _ in client.xrange(JOURNAL)]
    assert left == ids[:2]
    counts = client.hgetall(METRICS_KEY)
    # The second job's end and start counted here; the first job's are its recorder's to count.
    assert counts[b"ended|other|finished"] == b"1"
    assert counts[b"wait_count|other"] == b"1" and counts[b"run_count|other"] == b"1"
    assert float(counts[b"run_sum|other"]) >= 0
    assert take_applied(client, entries[:1], [b""]) == []  # an entry without an id is left alone
