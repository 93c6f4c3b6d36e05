"""A submission that cannot be completed says so with 503 and leaves nothing half-written."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.embedded import free_port
from jobs.history.db import open_session, reset_engine, session_scope
from jobs.history.models import Job
from jobs.settings import get_settings
from jobs.state.redis_conn import reset_redis
from tests.conftest import Backend, PrivateWorld, Tenant


def test_redis_down_at_submit_is_503_and_the_row_is_marked_failed(app: Any, tenant: Tenant, monkeypatch: Any):
    with TestClient(app, headers=tenant.headers) as client:
        assert client.get("/api/v1/jobs").status_code == 200  # the key is now verified and cached
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
        get_settings.cache_clear()
        reset_redis()
        response = client.post("/api/v1/jobs", json={"task": "long_task", "payload": {"n": 1}})
    assert response.status_code == 503
    body = response.json()
    assert "Redis is unavailable" in body["detail"]
    with session_scope() as session:
        row = session.get(Job, body["job_id"])
        assert row is not None
        assert row.status == "failed" and row.error_type == "EnqueueFailed"


def test_a_retry_after_a_503_makes_a_new_job(app: Any, tenant: Tenant, monkeypatch: Any):
    """A 503 is not a stored outcome: retrying with the same Idempotency-Key must not replay the failure."""
    good_url = get_settings().redis_url
    body = {"task": "long_task", "payload": {"n": 1}, "queue": "other"}
    with TestClient(app, headers={**tenant.headers, "Idempotency-Key": "retry-me"}) as client:
        assert client.get("/api/v1/jobs").status_code == 200
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
        get_settings.cache_clear()
        reset_redis()
        failed = client.post("/api/v1/jobs", json=body)
        assert failed.status_code == 503
        monkeypatch.setenv("REDIS_URL", good_url)
        get_settings.cache_clear()
        reset_redis()
        retried = client.post("/api/v1/jobs", json=body)
        assert retried.status_code == 201
        assert retried.json()["job_id"] != failed.json()["job_id"]
        assert client.post("/api/v1/jobs", json=body).json()["job_id"] == retried.json()["job_id"]


def test_database_down_at_submit_is_503_and_nothing_is_enqueued(
    env: Backend, app: Any, tenant: Tenant, redis_client: Any, monkeypatch: Any
):
    from jobs.queues.queueing import get_queue

    queue = get_queue("other", redis_client)  # no worker listens on it: its length is stable
    with TestClient(app, headers=tenant.headers) as client:
        assert client.get("/api/v1/jobs").status_code == 200
        before = queue.count
        monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/none")
        get_settings.cache_clear()
        reset_engine()
        response = client.post(
            "/api/v1/jobs", json={"task": "long_task", "payload": {"n": 1}, "queue": "other"}
        )
        assert response.status_code == 503
        assert "database is unavailable" in response.json()["detail"]
        assert queue.count == before
        listing = client.get("/api/v1/jobs")
        assert listing.status_code == 503


@pytest.mark.parametrize(
    ("setup", "refusal"),
    [
        # Out of memory: no write fits under 1 byte with eviction off.
        ([("maxmemory", "1"), ("maxmemory-policy", "noeviction")], "OutOfMemoryError"),
        # A replica refuses writes: the same server, made a replica of a port nothing listens on
        # (it keeps its data while it cannot reach that primary).
        ([("replica-read-only", "yes")], "ReadOnlyError"),
    ],
)
def test_a_redis_that_refuses_the_enqueue_is_503_and_the_job_never_runs(
    app: Any,
    private_world: PrivateWorld,
    monkeypatch: Any,
    setup: list[tuple[str, str]],
    refusal: str,
):
    """Not only a lost connection: any refusal is a 503 and a `failed` row, so no retry runs twice.
    On a Redis of its own: a replica's refusal unblocks the shared workers' BLPOP with an error."""
    from redis import Redis

    from jobs.queues.queueing import fetch, get_queue
    from jobs.queues.reconciler import Reconciler

    redis_client = Redis.from_url(private_world.redis_url)
    tenant = private_world.tenant

    saved = {name: redis_client.config_get(name)[name] for name, _ in setup}
    with TestClient(app, headers=tenant.headers) as client:
        assert client.get("/api/v1/jobs").status_code == 200  # the key is verified and cached
        try:
            for name, value in setup:
                redis_client.config_set(name, value)
            if refusal == "ReadOnlyError":
                redis_client.execute_command("REPLICAOF", "127.0.0.1", "1")
            response = client.post(
                "/api/v1/jobs", json={"task": "long_task", "payload": {"n": 1}, "queue": "other"}
            )
        finally:
            if refusal == "ReadOnlyError":
                redis_client.execute_command("REPLICAOF", "NO", "ONE")
            for name, value in saved.items():
                redis_client.config_set(name, value)
    assert response.status_code == 503, response.text
    body = response.json()
    assert "Redis refused to enqueue the job" in body["detail"] and refusal in body["detail"]
    job_id = body["job_id"]
    with session_scope() as session:
        row = session.get(Job, job_id)
        assert row is not None
        assert (row.status, row.error_type) == ("failed", "EnqueueFailed")
        assert refusal in (row.error_detail or "")

    # The reconciler (even with no grace at all) finds nothing to run again.
    monkeypatch.setenv("CONVEYOR_RECONCILE_GRACE", "0")
    get_settings.cache_clear()
    Reconciler(redis_client, sessions=open_session, use_lock=False).run_pass(sweep=True)
    assert fetch(job_id, redis_client) is None
    assert job_id not in get_queue("other", redis_client).get_job_ids()
    with session_scope() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.status == "failed"


def test_an_enqueue_that_fails_with_redis_up_is_failed_through_the_gate(
    env: Backend, redis_client: Any, monkeypatch: Any
):
    """Redis is reachable, so the failure passes the gate: live state, journal and SQL all say failed."""
    import json

    from sqlmodel import select

    from jobs.actions import submit as submit_module
    from jobs.history.models import JobEvent
    from jobs.state.live import job_key

    real_enqueue = submit_module.enqueue

    def enqueue_then_break(*args: Any, **kwargs: Any) -> None:
        real_enqueue(*args, **kwargs)
        raise RuntimeError("a bug after RQ queued its half")

    monkeypatch.setattr(submit_module, "enqueue", enqueue_then_break)
    job_ids: list[str] = []
    real_fail = submit_module._mark_enqueue_failed
    monkeypatch.setattr(
        submit_module,
        "_mark_enqueue_failed",
        lambda job, *a, **kw: (job_ids.append(job.job_id), real_fail(job, *a, **kw)),
    )
    with pytest.raises(RuntimeError), session_scope() as session:
        submit_module.submit_job(
            session=session,
            client=redis_client,
            tenant="t-gate",
            owner=None,
            task="long_task",
            payload={"n": 1},
            queue="other",
            idempotency_key="gate-key",
        )
    (job_id,) = job_ids
    doc = json.loads(redis_client.hget(job_key(job_id), "_doc"))
    assert doc["status"] == "failed" and doc["error"]["type"] == "EnqueueFailed"
    assert doc["seq"] == 2  # seeded from the row, then failed: one versioned change
    with session_scope() as session:
        row = session.get(Job, job_id)
        assert row is not None
        assert (row.status, row.error_type, row.seq) == ("failed", "EnqueueFailed", 2)
        assert row.idempotency_key is None  # the client's retry makes a new job
        events = session.exec(select(JobEvent).where(JobEvent.job_id == job_id)).all()
        assert [e.event for e in events][-1] == "failed"
    from jobs.queues.queueing import discard

    discard(job_id, redis_client)  # RQ's half was queued on purpose: leave no job for a later test
