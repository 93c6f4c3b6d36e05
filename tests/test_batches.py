"""Batches: submit many jobs in one request, all or nothing; one snapshot for all; cancel, restart."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from jobs.history.db import session_scope
from jobs.history.models import Batch, Job, JobEvent
from tests.conftest import Tenant, make_tenant
from tests.services import wait_until


def job(n: int = 1, delay: float = 0.0, **extra: Any) -> dict[str, Any]:
    return {"task": "long_task", "payload": {"n": n, "delay": delay}, **extra}


def submit_batch(api: TestClient, jobs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    response = api.post("/api/v1/batches", json={"jobs": jobs, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def sql_counts(batch_id: str) -> dict[str, int]:
    with session_scope() as session:
        rows = session.execute(
            sa.select(Job.status, sa.func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
        )
        return {status: count for status, count in rows}


def stored_for(tenant: str) -> tuple[int, int]:
    """(batches, jobs) stored for ``tenant``."""
    with session_scope() as session:
        batches = session.scalar(sa.select(sa.func.count()).select_from(Batch).where(Batch.tenant == tenant))
        jobs = session.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.tenant == tenant))
    return batches or 0, jobs or 0


def wait_batch(api: TestClient, batch_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        snap = api.get(f"/api/v1/batches/{batch_id}").json()
        return snap if snap["status"] in statuses else None

    return wait_until(check, timeout=timeout, interval=0.1, message=f"batch {batch_id} to reach {statuses}")


def test_a_batch_is_stored_in_one_go_with_its_job_ids_in_order(api: TestClient, tenant: Tenant):
    created = submit_batch(api, [job(n=i) for i in range(5)], name="five", tags=["import"])
    assert created["size"] == 5 and len(created["job_ids"]) == 5
    with session_scope() as session:
        rows = {
            row.job_id: row
            for row in session.exec(sa.select(Job).where(Job.batch_id == created["batch_id"])).scalars()
        }  # type: ignore[call-overload]
        events = session.scalar(
            sa.select(sa.func.count())
            .select_from(JobEvent)
            .where(JobEvent.job_id.in_(created["job_ids"]), JobEvent.event == "queued")  # type: ignore[attr-defined]
        )
    assert set(rows) == set(created["job_ids"])
    assert [rows[j].params["n"] for j in created["job_ids"]] == [0, 1, 2, 3, 4]
    assert all(r.tenant == tenant.name and r.tags and "import" in r.tags for r in rows.values())
    assert events == 5
    for job_id in created["job_ids"]:  # each job reads like a single submit's
        snap = api.get(f"/api/v1/jobs/{job_id}").json()
        assert snap["status"] in ("queued", "started", "finished", "canceled")
    snap = api.get(f"/api/v1/batches/{created['batch_id']}").json()
    assert snap["name"] == "five" and snap["size"] == 5 and sum(snap["counts"].values()) == 5
    listed = api.get("/api/v1/jobs", params={"batch": created["batch_id"]}).json()
    assert {item["job_id"] for item in listed["items"]} == set(created["job_ids"])


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"task": "long_task", "payload": {"n": "many"}}, "jobs[2].payload.n"),
        ({"task": "no_such_task", "payload": {}}, "jobs[2].task"),
        ({"task": "long_task", "payload": {}, "queue": "nowhere"}, "jobs[2].queue"),
        ({"task": "long_task", "payload": {}, "depends_on": ["x"]}, "jobs[2].depends_on"),
    ],
)
def test_one_bad_job_refuses_the_batch_naming_it_and_stores_nothing(
    api: TestClient, tenant: Tenant, bad: dict[str, Any], field: str
):
    response = api.post("/api/v1/batches", json={"jobs": [job(), job(), bad, job()]})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field and body["index"] == 2
    assert field in body["detail"]
    assert stored_for(tenant.name) == (0, 0)


def test_a_malformed_job_is_refused_by_the_schema_naming_its_index(api: TestClient, tenant: Tenant):
    response = api.post("/api/v1/batches", json={"jobs": [job(), {"payload": {}}]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "jobs", 1, "task"]
    assert stored_for(tenant.name) == (0, 0)


def test_an_empty_batch_is_refused(api: TestClient, tenant: Tenant):
    response = api.post("/api/v1/batches", json={"jobs": []})
    assert response.status_code == 422 and "at least one job" in response.json()["detail"]


def test_idempotency_key_replays_the_same_batch_and_refuses_another_body(api: TestClient, tenant: Tenant):
    headers = {"Idempotency-Key": "import-42"}
    jobs = [job(n=i) for i in range(3)]
    first = api.post("/api/v1/batches", json={"jobs": jobs}, headers=headers)
    again = api.post("/api/v1/batches", json={"jobs": jobs}, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert stored_for(tenant.name) == (1, 3)
    other = api.post("/api/v1/batches", json={"jobs": jobs[:2]}, headers=headers)
    assert other.status_code == 422 and "different batch" in other.json()["detail"]
    assert stored_for(tenant.name) == (1, 3)


def test_past_the_cap_a_batch_is_413_naming_the_cap(
    env: Any, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
):
    from api.app import create_app
    from jobs.settings import get_settings

    monkeypatch.setenv("CONVEYOR_BATCH_MAX_JOBS", "3")
    get_settings.cache_clear()
    try:
        with TestClient(create_app(), headers=tenant.headers) as client:
            response = client.post("/api/v1/batches", json={"jobs": [job()] * 4})
            assert response.status_code == 413
            assert "at most 3 jobs" in response.json()["detail"] and response.json()["max_jobs"] == 3
            assert stored_for(tenant.name) == (0, 0)
            assert client.post("/api/v1/batches", json={"jobs": [job()] * 3}).status_code == 201
    finally:
        monkeypatch.delenv("CONVEYOR_BATCH_MAX_JOBS")
        get_settings.cache_clear()


def test_every_batch_route_keeps_to_its_tenant(app: Any, api: TestClient, tenant: Tenant):
    created = submit_batch(api, [job(n=0)])
    batch_id = created["batch_id"]
    other = make_tenant(role="admin")
    with TestClient(app, headers=other.headers) as stranger:
        assert stranger.get(f"/api/v1/batches/{batch_id}").status_code == 404
        assert stranger.get(f"/api/v1/batches/{batch_id}/poll", params={"timeout": 1}).status_code == 404
        assert stranger.get(f"/api/v1/batches/{batch_id}/stream").status_code == 404
        assert stranger.post(f"/api/v1/batches/{batch_id}/cancel").status_code == 404
        assert stranger.post(f"/api/v1/batches/{batch_id}/restart").status_code == 404
        assert stranger.get("/api/v1/batches").json()["items"] == []
        assert stranger.get("/api/v1/jobs", params={"batch": batch_id}).json()["items"] == []
        assert stranger.get(f"/api/v1/jobs/{created['job_ids'][0]}").status_code == 404
        with stranger.websocket_connect(f"/api/v1/batches/{batch_id}/ws") as ws:
            message = ws.receive()
            assert message["type"] == "websocket.close" and message["code"] == 4404
    assert api.get(f"/api/v1/batches/{batch_id}").status_code == 200
    listed = api.get("/api/v1/batches").json()["items"]
    assert [b["batch_id"] for b in listed] == [batch_id]
    assert api.get("/api/v1/batches/not-a-batch").status_code == 404


def test_retention_prunes_a_batch_once_its_jobs_are_gone(api: TestClient, tenant: Tenant):
    from datetime import timedelta

    from jobs.clock import utcnow
    from jobs.history.retention import prune

    later = {"task": "long_task", "payload": {"n": 0}, "delay": 3600}  # no worker takes them meanwhile
    created = submit_batch(api, [later, later])
    batch_id = created["batch_id"]
    long_ago = utcnow() - timedelta(days=400)
    with session_scope() as session:
        session.execute(sa.update(Batch).where(Batch.batch_id == batch_id).values(created_at=long_ago))
        session.execute(  # one job ended long ago, the other still waits: the batch stays
            sa.update(Job)
            .where(Job.job_id == created["job_ids"][0])
            .values(status="finished", ended_at=long_ago, created_at=long_ago)
        )
    with session_scope() as session:
        report = prune(session=session, older_than=timedelta(days=90))
    assert report.jobs >= 1 and report.job_batches == 0
    assert api.get(f"/api/v1/batches/{batch_id}").status_code == 200
    with session_scope() as session:
        session.execute(
            sa.update(Job)
            .where(Job.job_id == created["job_ids"][1])
            .values(status="canceled", ended_at=long_ago, created_at=long_ago)
        )
    with session_scope() as session:
        report = prune(session=session, older_than=timedelta(days=90))
    assert report.job_batches == 1
    assert api.get(f"/api/v1/batches/{batch_id}").status_code == 404


def test_an_operator_reaches_every_tenants_batches_and_a_member_its_own(
    app: Any, api: TestClient, tenant: Tenant
):
    batch_id = submit_batch(api, [job(n=0)])["batch_id"]
    member = make_tenant("member", name=tenant.name)
    operator = make_tenant("operator")
    with TestClient(app, headers=member.headers) as client:
        assert client.get(f"/api/v1/batches/{batch_id}").status_code == 200
        assert client.get("/api/v1/batches", params={"tenant": "*"}).status_code == 403
    with TestClient(app, headers=operator.headers) as client:
        assert client.get(f"/api/v1/batches/{batch_id}").status_code == 200
        everyone = client.get("/api/v1/batches", params={"tenant": "*", "limit": 200}).json()["items"]
        assert batch_id in [b["batch_id"] for b in everyone]
        own = client.get("/api/v1/batches").json()["items"]
        assert batch_id not in [b["batch_id"] for b in own]
        assert client.post(f"/api/v1/batches/{batch_id}/cancel").status_code == 200


def test_a_batch_takes_a_submit_token_per_job_and_each_job_keeps_its_timeout_cap(
    api: TestClient, tenant: Tenant
):
    from jobs.settings import get_settings

    # The default bursts are the batch cap itself; a tenant an operator gave a smaller one:
    burst = 5
    operator = make_tenant("operator")
    lowered = api.put(
        f"/api/v1/tenants/{tenant.name}/limits", json={"key_submit_burst": burst}, headers=operator.headers
    )
    assert lowered.status_code == 200, lowered.text
    over = api.post("/api/v1/batches", json={"jobs": [job(n=0)] * (burst + 1)})
    assert over.status_code == 422 and "submit burst" in over.json()["detail"]
    cap = get_settings().max_timeout_seconds
    capped = api.post("/api/v1/batches", json={"jobs": [job(n=0), job(n=0, timeout=cap + 1)]})
    assert capped.status_code == 422, capped.text
    assert capped.json()["field"] == "jobs[1].timeout" and "max_timeout_seconds" in capped.json()["detail"]
    assert stored_for(tenant.name) == (0, 0)
    accepted = api.post("/api/v1/batches", json={"jobs": [job(n=0)] * 3})
    assert accepted.status_code == 201 and "RateLimit-Remaining" in accepted.headers


def test_redis_down_fails_the_whole_batch_in_sql_and_a_retry_with_its_key_makes_a_new_one(
    app: Any, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
):
    from jobs.embedded import free_port
    from jobs.settings import get_settings
    from jobs.state.redis_conn import reset_redis

    good_url = get_settings().redis_url
    body = {"jobs": [job(n=1), job(n=2)]}
    with TestClient(app, headers={**tenant.headers, "Idempotency-Key": "batch-retry"}) as client:
        assert client.get("/api/v1/jobs").status_code == 200  # the key is verified and cached
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
        get_settings.cache_clear()
        reset_redis()
        failed = client.post("/api/v1/batches", json=body)
        assert failed.status_code == 503, failed.text
        assert "Redis is unavailable" in failed.json()["detail"]
        failed_id = failed.json()["batch_id"]
        assert sql_counts(failed_id) == {"failed": 2}
        with session_scope() as session:
            rows = session.execute(sa.select(Job.error_type).where(Job.batch_id == failed_id)).scalars()
            assert set(rows) == {"EnqueueFailed"}
        monkeypatch.setenv("REDIS_URL", good_url)
        get_settings.cache_clear()
        reset_redis()
        retried = client.post("/api/v1/batches", json=body)
        assert retried.status_code == 201, retried.text
        assert retried.json()["batch_id"] != failed_id
        snap = client.get(f"/api/v1/batches/{failed_id}").json()
        assert snap["status"] == "failed" and snap["counts"]["failed"] == 2
