"""Retries with backoff, timeouts, delayed and dependent submissions, and recurring (cron) jobs."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlmodel import col, select

from jobs.clock import parse_iso
from jobs.history.db import session_scope
from jobs.history.models import Job
from jobs.queues.retries import RetryPolicy
from tests.conftest import FAST_ENV, TEST_ENV, Backend, WorkerProcess
from tests.services import wait_until
from tests.test_jobs_e2e import sql_events, sql_row, submit, wait_sql_status, wait_status

# --- the retry policy ---------------------------------------------------------------------------


def test_backoff_doubles_is_capped_and_jittered():
    policy = RetryPolicy(retries=6, backoff=2, backoff_max=20, jitter=0)
    assert policy.schedule() == [2, 4, 8, 16, 20, 20]
    jittered = RetryPolicy(retries=4, backoff=10, jitter=0.2)
    for seed in range(50):
        intervals = jittered.schedule(rng=random.Random(seed))
        for got, base in zip(intervals, [10, 20, 40, 80], strict=True):
            assert base * 0.8 - 1 <= got <= base * 1.2 + 1
    spread = {tuple(jittered.schedule(rng=random.Random(seed))) for seed in range(20)}
    assert len(spread) > 1, "jitter must spread jobs that failed together"


def test_explicit_intervals_and_the_tail_for_fewer_retries_left():
    policy = RetryPolicy(retries=4, intervals=(5, 30), jitter=0)
    assert policy.schedule() == [5, 30, 30, 30]
    assert policy.schedule(retries_left=2) == [30, 30]
    assert RetryPolicy(retries=3, backoff=1, jitter=0).schedule(retries_left=1) == [4]
    assert RetryPolicy(retries=0).schedule() == []


@pytest.mark.parametrize(
    "options",
    [
        {"retries": -1},
        {"retries": 1, "intervals": (-5,)},
        {"retries": 1, "jitter": 1.5},
        {"retries": 1, "backoff": 0},
    ],
)
def test_bad_retry_options_are_refused(options: dict[str, Any]):
    with pytest.raises(ValueError):
        RetryPolicy(**options)


def test_an_always_failing_task_with_two_retries_ends_failed_after_three_attempts(
    api: TestClient, control_worker: Any
):
    job_id = submit(api, "fails_with_backoff", {"message": "nope"})["job_id"]
    assert api.get(f"/api/v1/jobs/{job_id}").json()["max_retries"] == 2

    between = wait_status(api, job_id, {"scheduled"}, timeout=10)  # waiting for its second attempt
    assert between["attempt"] == 2 and between["error"]["detail"] == "nope"
    next_run = parse_iso(between["enqueued_at"])
    assert next_run is not None and next_run > parse_iso(between["updated_at"])  # type: ignore[operator]

    final = wait_status(api, job_id, {"failed"}, timeout=20)
    assert final["attempt"] == 3 and final["error"] == {"type": "RuntimeError", "detail": "nope"}
    wait_sql_status(job_id, "failed")
    history = sql_events(job_id)
    started = [e.attempt for e in history if e.event == "started"]
    assert started == [1, 2, 3], "one attempt event per attempt"
    retries = [e for e in history if e.event == "retry"]
    assert [e.status for e in retries] == ["scheduled", "scheduled"]
    assert [e.data["retry_in_s"] for e in retries] == [1, 2]  # exponential backoff, no jitter
    assert [e.event for e in history if e.event == "failed"] == ["failed"]
    starts = {e.attempt: e.created_at for e in history if e.event == "started"}
    assert (starts[3] - starts[2]).total_seconds() >= 1.5  # waited out the 2-second backoff


# --- timeouts -----------------------------------------------------------------------------------


def test_a_task_timeout_fails_the_job_with_job_timeout(api: TestClient, control_worker: Any):
    job_id = submit(api, "overruns", {"seconds": 10})["job_id"]
    final = wait_status(api, job_id, {"failed"}, timeout=15)
    assert final["error"]["type"] == "JobTimeout"
    assert "1 seconds" in final["error"]["detail"]
    row = wait_sql_status(job_id, "failed")
    assert row.error_type == "JobTimeout"


def test_a_submission_timeout_overrides_the_tasks(api: TestClient, control_worker: Any):
    longer = submit(api, "overruns", {"seconds": 1.5}, timeout=5)["job_id"]
    shorter = submit(api, "sleeper", {"seconds": 10}, timeout=1)["job_id"]
    assert wait_status(api, longer, {"finished", "failed"}, timeout=15)["status"] == "finished"
    final = wait_status(api, shorter, {"failed"}, timeout=15)
    assert final["error"]["type"] == "JobTimeout"


# --- delayed submissions --------------------------------------------------------------------------


def test_a_delayed_job_waits_as_scheduled_then_runs(api: TestClient, control_worker: Any):
    before = datetime.now(UTC)
    snap = submit(api, "steps", {"steps": 1, "step": 0}, delay=1.5)
    assert snap["status"] == "scheduled"
    run_at = parse_iso(snap["enqueued_at"])
    assert run_at is not None and run_at >= before + timedelta(seconds=1.4)
    final = wait_status(api, snap["job_id"], {"finished"}, timeout=15)
    assert parse_iso(final["started_at"]) >= run_at - timedelta(milliseconds=50)  # type: ignore[operator]
    row = wait_sql_status(snap["job_id"], "finished")
    assert row.scheduled_for is not None and abs((row.scheduled_for - run_at).total_seconds()) < 0.01


def test_run_at_is_a_time_with_a_zone(api: TestClient, control_worker: Any):
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    snap = submit(api, "steps", {"steps": 1, "step": 0}, run_at=soon)
    assert snap["status"] == "scheduled"
    wait_status(api, snap["job_id"], {"finished"}, timeout=15)
    past = submit(api, "long_task", {"n": 1}, queue="other", run_at="2020-01-01T00:00:00Z")
    assert past["status"] == "queued"  # already due: it runs now


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"run_at": "2030-01-01T00:00:00"}, "timezone"),
        ({"run_at": "2030-01-01T00:00:00Z", "delay": 5}, "not both"),
        ({"run_at": (datetime.now(UTC) + timedelta(days=400)).isoformat()}, "366 days"),
        ({"delay": -1}, "delay"),
        ({"delay": 5, "depends_on": [str(uuid.uuid4())]}, "not both"),
        ({"depends_on": [str(uuid.uuid4())]}, "no job"),
        ({"depends_on": ["not-an-id"]}, "no job"),
        ({"depends_on": [str(uuid.uuid4()) for _ in range(21)]}, "depends_on"),
    ],
)
def test_bad_schedules_and_dependencies_are_422(api: TestClient, extra: dict[str, Any], needle: str):
    response = api.post("/api/v1/jobs", json={"task": "long_task", "payload": {}, "queue": "other", **extra})
    assert response.status_code == 422, response.text
    assert needle in response.text


# --- dependencies -----------------------------------------------------------------------------------


def test_a_dependent_job_waits_as_deferred_until_its_parent_finishes(api: TestClient, control_worker: Any):
    parent = submit(api, "steps", {"steps": 10, "step": 0.1})["job_id"]
    child = submit(api, "steps", {"steps": 1, "step": 0}, depends_on=[parent])
    assert child["status"] == "deferred"
    row = sql_row(child["job_id"])
    assert row is not None and row.parent_id == parent and row.depends_on == [parent]
    assert api.get(f"/api/v1/jobs/{child['job_id']}").json()["status"] == "deferred"

    parent_final = wait_status(api, parent, {"finished"}, timeout=15)
    child_final = wait_status(api, child["job_id"], {"finished"}, timeout=15)
    assert parse_iso(child_final["started_at"]) >= parse_iso(parent_final["ended_at"])  # type: ignore[operator]

    already_done = submit(api, "steps", {"steps": 1, "step": 0}, depends_on=[parent])
    assert already_done["status"] == "queued"  # nothing left to wait for


def test_a_dependent_of_a_failed_job_fails_and_one_cannot_be_added(api: TestClient, control_worker: Any):
    parent = submit(api, "steps", {"steps": 10, "step": 0.1})["job_id"]
    child = submit(api, "steps", {"steps": 1, "step": 0}, depends_on=[parent])["job_id"]
    wait_status(api, parent, {"started"})
    api.post(f"/api/v1/jobs/{parent}/cancel")
    final = wait_status(api, child, {"failed"}, timeout=10)  # the reconciler sees it can never run
    assert final["error"]["type"] == "DependencyFailed" and parent in final["error"]["detail"]

    late = api.post("/api/v1/jobs", json={"task": "steps", "payload": {}, "depends_on": [parent]})
    assert late.status_code == 409
    assert "canceled" in late.json()["detail"]


def test_dependencies_are_scoped_to_the_tenant(app: Any, api: TestClient):
    from tests.conftest import make_tenant

    other = make_tenant()
    theirs = TestClient(app, headers=other.headers).post(
        "/api/v1/jobs", json={"task": "long_task", "payload": {}, "queue": "other"}
    )
    response = api.post(
        "/api/v1/jobs", json={"task": "long_task", "queue": "other", "depends_on": [theirs.json()["job_id"]]}
    )
    assert response.status_code == 422 and "no job" in response.text


# --- recurring jobs -------------------------------------------------------------------------------


class CountPayload(BaseModel):
    n: int


def test_cron_declarations_are_checked_where_they_are_written():
    from jobs.errors import InvalidPayload
    from jobs.queues.schedules import cron
    from jobs.tasks import task

    @task(name=f"cron-check-{uuid.uuid4().hex[:6]}", queue="other")
    def target(payload: CountPayload) -> None: ...

    with pytest.raises(ValueError, match="not a valid cron"):
        cron("every minute")(target)
    with pytest.raises(ValueError, match="one of them"):
        cron("* * * * *", interval=5)(target)
    with pytest.raises(InvalidPayload):
        cron("* * * * *", payload={"n": "x"})(target)
    with pytest.raises(TypeError, match="not a task"):
        cron("* * * * *")(lambda payload: None)


def test_a_recurring_job_fires_once_per_slot_however_many_workers_run_it(
    env: Backend, tmp_path: Any, control_worker: Any
):
    cron_env = {
        **FAST_ENV,
        "CONVEYOR_TASK_MODULES": '["worker.tasks", "tests.control_tasks", "tests.cron_tasks"]',
        "CONVEYOR_QUEUES": TEST_ENV["CONVEYOR_QUEUES"].replace("]", ', "cron"]'),
    }
    workers = [
        WorkerProcess(
            env, tmp_path / f"cron{i}.log", f"cron-{i}-{uuid.uuid4().hex[:6]}", cron_env, "cron"
        ).start()
        for i in range(2)
    ]

    def fired() -> list[Job]:
        with session_scope() as session:
            query = select(Job).where(Job.task == "tick").order_by(col(Job.created_at))
            return list(session.exec(query).all())

    try:
        wait_until(lambda: len([j for j in fired() if j.status == "finished"]) >= 3, timeout=20)
    finally:
        for worker in workers:
            worker.stop()
    jobs = fired()
    prefix = "cron:tick every 1s:"
    keys = [j.idempotency_key or "" for j in jobs]
    assert all(k.startswith(prefix) for k in keys), keys
    slots = sorted(parse_iso(k.removeprefix(prefix)) or datetime.min for k in keys)
    assert len(set(slots)) == len(slots), "one job per slot"
    steps = {(b - a).total_seconds() for a, b in itertools.pairwise(slots)}
    assert steps <= {1.0}, f"no slot skipped or doubled: {steps}"
    assert {(j.tenant, j.owner, j.params["tag"]) for j in jobs} == {("system", "cron", "every-second")}
    # Each firing is a whole Conveyor job: a row, a history, a run (the last may still wait in its queue).
    assert {j.status for j in jobs} <= {"finished", "queued"}
    assert [e.event for e in sql_events(jobs[0].job_id)][:2] == ["queued", "started"]
