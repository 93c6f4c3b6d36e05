"""The fast submit path (issue 16): one statement for the row and its first event, the
Idempotency-Key checked by the insert itself, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from sqlmodel import select

from jobs.actions.submit import Submission, submit_job
from jobs.history.db import open_session, session_scope
from jobs.history.models import Job, JobEvent
from tests.conftest import Backend

TENANT = "t-fast-submit"


def _submit(client: Any, **options: Any) -> Submission:
    with open_session() as session:
        return submit_job(
            session=session,
            client=client,
            tenant=TENANT,
            owner="k1",
            task="long_task",
            queue="other",
            **options,
        )


def _rows(**where: Any) -> list[Job]:
    with session_scope() as session:
        query = select(Job).where(*(getattr(Job, name) == value for name, value in where.items()))
        return list(session.exec(query).all())


def _events(job_id: str) -> list[JobEvent]:
    with session_scope() as session:
        return list(session.exec(select(JobEvent).where(JobEvent.job_id == job_id)).all())


def test_a_new_job_is_stored_with_its_first_event(env: Backend, redis_client: Any):
    submitted = _submit(redis_client, payload={"n": 3}, tags=["a", "a", "b"], delay=3600, trace_id="t" * 32)
    (row,) = _rows(job_id=submitted.job_id)
    assert (row.tenant, row.owner, row.task, row.queue, row.status) == (
        TENANT,
        "k1",
        "long_task",
        "other",
        "scheduled",
    )
    assert row.params["n"] == 3 and row.tags == ["a", "b"] and row.trace_id == "t" * 32
    assert row.scheduled_for is not None and row.seq == 1 and row.request_hash
    (event,) = _events(submitted.job_id)
    assert (event.event, event.status, event.seq, event.attempt) == ("scheduled", "scheduled", 1, 1)
    assert event.data == {"scheduled_for": json.loads(submitted.doc)["enqueued_at"]}
    assert event.created_at == row.created_at


def test_a_taken_key_replays_and_stores_nothing_more(env: Backend, redis_client: Any):
    key = f"k-{uuid.uuid4()}"
    first = _submit(redis_client, payload={"n": 1}, idempotency_key=key)
    again = _submit(redis_client, payload={"n": 1}, idempotency_key=key)
    assert first.created and not again.created and again.job_id == first.job_id
    assert len(_rows(tenant=TENANT, idempotency_key=key)) == 1
    assert len(_events(first.job_id)) == 1
    without_key = _submit(redis_client, payload={"n": 1})
    assert without_key.created and without_key.job_id != first.job_id


def test_concurrent_submits_with_one_key_make_one_job(env: Backend, redis_client: Any):
    """The insert is the check: racing submissions all get the one job, none a 500."""
    key = f"race-{uuid.uuid4()}"
    results: list[Submission] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        try:
            results.append(_submit(redis_client, payload={"n": 1}, idempotency_key=key))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len({r.job_id for r in results}) == 1 and len(results) == 8
    assert sum(r.created for r in results) == 1
    (row,) = _rows(tenant=TENANT, idempotency_key=key)
    assert len(_events(row.job_id)) == 1
