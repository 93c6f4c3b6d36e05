"""Retention: old ended jobs go (with events, results and snapshots) in batches; live ones stay."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlmodel import select

from jobs.clock import utcnow
from jobs.history.db import open_session, session_scope
from jobs.history.models import Job, JobEvent, JobResult
from jobs.history.retention import prune
from jobs.state.live import job_key
from tests.conftest import Backend
from tests.history_fixtures import at, insert, job_row
from tests.test_cli import conveyor

# Far older than anything other tests write, so pruning at this age touches only these rows.
AGE = timedelta(days=3000)


def events_for(job: Job, names: list[str], when: Any) -> list[JobEvent]:
    return [
        JobEvent(job_id=job.job_id, seq=i + 1, event=name, status="started", created_at=when)
        for i, name in enumerate(names)
    ]


def seed(tenant: str, redis_client: Any) -> dict[str, Job]:
    long_ago = at("2015-05-01T00:00:00")
    jobs = {
        "old": [
            job_row(tenant, ended=long_ago + timedelta(minutes=i), run_ms=5, wait_ms=1) for i in range(5)
        ],
        "old_live": [job_row(tenant, status="queued", enqueued=long_ago)],
        "recent": [job_row(tenant, ended=utcnow(), run_ms=5, wait_ms=1)],
    }
    insert(jobs["old"] + jobs["old_live"] + jobs["recent"])
    child = job_row(tenant, ended=utcnow(), run_ms=1, wait_ms=1)
    child.parent_id = jobs["old"][0].job_id
    insert([child])
    with session_scope() as session:
        for job in jobs["old"]:
            session.add_all(
                events_for(job, ["queued", "started", "progress", "progress", "finished"], long_ago)
            )
        session.add_all(
            events_for(jobs["recent"][0], ["queued", "started", "progress", "finished"], long_ago)
        )
        session.add(
            JobResult(
                job_id=jobs["old"][0].job_id,
                attempt=1,
                size_bytes=2,
                sha256="0" * 64,
                body="{}",
                created_at=long_ago,
            )
        )
    for job in jobs["old"]:
        redis_client.set(job_key(job.job_id), "snapshot")
    return {"old": jobs["old"], "old_live": jobs["old_live"], "recent": jobs["recent"], "child": [child]}


def test_prune_deletes_old_ended_jobs_in_batches(env: Backend, redis_client: Any, tenant: Any):
    jobs = seed(tenant.name, redis_client)
    old_ids = [j.job_id for j in jobs["old"]]

    with open_session() as session:
        dry = prune(session=session, older_than=AGE, compact_events_older_than=AGE, dry_run=True)
    assert (dry.jobs, dry.events, dry.compacted_events) == (5, 25, 11)
    with session_scope() as session:
        assert len(session.exec(select(Job).where(Job.tenant == tenant.name)).all()) == 8

    with open_session() as session:
        report = prune(
            session=session, older_than=AGE, compact_events_older_than=AGE, batch_size=2, client=redis_client
        )
    assert (report.jobs, report.events, report.results) == (5, 25, 1)
    assert report.compacted_events == 1  # the kept job's old progress event
    assert report.batches == 3 + 1
    with session_scope() as session:
        left = {j.job_id: j for j in session.exec(select(Job).where(Job.tenant == tenant.name)).all()}
        assert set(left) == {j.job_id for k in ("old_live", "recent", "child") for j in jobs[k]}
        assert left[jobs["child"][0].job_id].parent_id is None  # the foreign key let go of the parent
        assert session.exec(select(JobEvent).where(JobEvent.job_id.in_(old_ids))).all() == []
        kept = session.exec(select(JobEvent).where(JobEvent.job_id == jobs["recent"][0].job_id)).all()
        assert sorted(e.event for e in kept) == ["finished", "queued", "started"]
        assert session.get(JobResult, old_ids[0]) is None
    assert not any(redis_client.exists(job_key(job_id)) for job_id in old_ids)

    with open_session() as session:
        again = prune(session=session, older_than=AGE, compact_events_older_than=AGE)
    assert (again.jobs, again.compacted_events, again.batches) == (0, 0, 0)


def test_prune_command(env: Backend, redis_client: Any, tenant: Any):
    seed(tenant.name, redis_client)
    done = conveyor("prune", "--older-than", "3000d", "--dry-run", env=env.env())
    assert done.returncode == 0, done.stderr
    assert "would delete 5 jobs" in done.stdout
    done = conveyor("prune", "--older-than", "3000d", "--compact-events-older-than", "3000d", env=env.env())
    assert done.returncode == 0, done.stderr
    assert "deleted 5 jobs" in done.stdout and "deleted 1 progress events" in done.stdout
    bad = conveyor("prune", "--older-than", "soon", env=env.env())
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    tiny = conveyor("prune", "--older-than", "5m", env=env.env())
    assert tiny.returncode == 2 and "at least 1h" in tiny.stderr
