"""A submission that cannot be completed says so with 503 and leaves nothing half-written."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from jobs.db import reset_engine, session_scope
from jobs.embedded import free_port
from jobs.models import Job
from jobs.redis_conn import reset_redis
from jobs.settings import get_settings
from tests.conftest import Backend, Tenant


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
    from jobs.queueing import get_queue

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
