"""Replaying the journal into SQL: in order or not, once or many times, SQL ends up right."""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import select

from jobs.db import session_scope
from jobs.lifecycle import record
from jobs.models import Job, JobEvent
from jobs.recorder import Recorder
from jobs.status import JobStatus
from jobs.store import JournalEntry, apply_journal
from tests.conftest import Backend, seed_job
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
