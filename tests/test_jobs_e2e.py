"""Submit over HTTP -> a real worker process runs the job -> status, result and history in SQL."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from jobs.history.db import session_scope
from jobs.history.models import Job, JobEvent
from jobs.state.live import job_key
from tests.conftest import Tenant, make_tenant
from tests.services import wait_until


def submit(api: TestClient, task: str, payload: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    response = api.post("/api/v1/jobs", json={"task": task, "payload": payload or {}, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def wait_status(api: TestClient, job_id: str, statuses: set[str], timeout: float = 20) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        snap = api.get(f"/api/v1/jobs/{job_id}").json()
        return snap if snap["status"] in statuses else None

    return wait_until(check, timeout=timeout, message=f"job {job_id} to reach {statuses}")


def sql_row(job_id: str) -> Job | None:
    with session_scope() as session:
        return session.get(Job, job_id)


def sql_events(job_id: str) -> list[JobEvent]:
    with session_scope() as session:
        return list(session.exec(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def wait_sql_status(job_id: str, status: str, timeout: float = 10) -> Job:
    return wait_until(
        lambda: (row := sql_row(job_id)) is not None and row.status == status and row,
        timeout=timeout,
        message=f"SQL row of {job_id} to say {status}",
    )


def test_long_task_runs_to_finished_with_progress_and_history(
    api: TestClient, worker: Any, redis_client: Any
):
    snap = submit(api, "long_task", {"n": 50, "delay": 0.01})
    job_id = snap["job_id"]
    assert snap["status"] == "queued" and snap["seq"] == 1
    assert len(job_id) == 36

    seen: list[dict[str, Any]] = []

    def progressed() -> bool:
        current = api.get(f"/api/v1/jobs/{job_id}").json()
        seen.append(current)
        return current["status"] == "finished"

    wait_until(progressed, timeout=20, interval=0.01, message="long_task to finish")
    final = seen[-1]
    assert final["result"] == {"sum": 1225, "n": 50}
    assert final["progress"] == 100.0
    assert final["error"] is None
    assert final["started_at"] and final["ended_at"]
    running = [s for s in seen if s["status"] == "started" and s["progress"]]
    assert running, "never observed the job running with progress"
    assert all(s["message"].startswith("step ") for s in running)
    seqs = [s["seq"] for s in seen]
    assert seqs == sorted(seqs), "seq went backwards"

    row = wait_sql_status(job_id, "finished")
    assert row.result == {"sum": 1225, "n": 50}
    assert row.progress == 100.0
    assert row.run_ms is not None and row.wait_ms is not None
    assert row.finished_at is not None and row.failed_at is None
    events = sql_events(job_id)
    names = [e.event for e in events]
    assert names[0] == "queued" and names[1] == "started" and names[-1] == "finished"
    assert "progress" in names
    assert [e.seq for e in events] == sorted({e.seq for e in events})

    # Once Redis forgets the job, SQL answers with the same terminal state.
    redis_client.delete(job_key(job_id))
    from_sql = api.get(f"/api/v1/jobs/{job_id}")
    assert from_sql.status_code == 200
    body = from_sql.json()
    assert body["status"] == "finished"
    assert body["result"] == {"sum": 1225, "n": 50}
    assert body["seq"] == row.seq

    history = api.get(f"/api/v1/jobs/{job_id}/events").json()
    assert [e["event"] for e in history["items"]] == names


def test_failing_task_records_type_and_detail(api: TestClient, worker: Any):
    job_id = submit(api, "always_fails", {"message": "disk on fire"})["job_id"]
    final = wait_status(api, job_id, {"failed"})
    assert final["error"] == {"type": "ValueError", "detail": "disk on fire"}
    assert final["result"] is None
    row = wait_sql_status(job_id, "failed")
    assert row.error_type == "ValueError" and row.error_detail == "disk on fire"
    assert row.failed_at is not None and row.finished_at is None
    failed = [e for e in sql_events(job_id) if e.event == "failed"]
    assert failed and "Traceback" in failed[0].data["traceback"]


def test_heavy_compute_echoes_payload(api: TestClient, worker: Any):
    job_id = submit(api, "heavy_compute", {"user_id": 101, "message": "hello"})["job_id"]
    final = wait_status(api, job_id, {"finished"})
    assert final["result"] == {
        "echo": {"user_id": 101, "message": "hello"},
        "summary": "Processed keys: ['user_id', 'message']",
    }


def test_secrets_in_the_payload_never_reach_sql(api: TestClient, worker: Any):
    job_id = submit(api, "heavy_compute", {"api_key": "sk-live-123", "nested": {"password": "hunter2"}})[
        "job_id"
    ]
    wait_status(api, job_id, {"finished"})
    row = sql_row(job_id)
    assert row is not None
    assert row.params == {"api_key": "[REDACTED]", "nested": {"password": "[REDACTED]"}}


def test_idempotency_key_replays_and_refuses_a_different_body(api: TestClient):
    body = {"task": "long_task", "payload": {"n": 1, "delay": 0}}
    first = api.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "order-42"})
    again = api.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "order-42"})
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["job_id"] == first.json()["job_id"]

    changed = api.post(
        "/api/v1/jobs",
        json={**body, "payload": {"n": 2, "delay": 0}},
        headers={"Idempotency-Key": "order-42"},
    )
    assert changed.status_code == 422
    assert "Idempotency-Key" in changed.json()["detail"]
    with session_scope() as session:
        count = len(session.exec(select(Job).where(Job.idempotency_key == "order-42")).all())
    assert count == 1


def test_idempotency_keys_are_scoped_per_tenant(app: Any, tenant: Tenant):
    other = make_tenant()
    body = {"task": "long_task", "payload": {"n": 1, "delay": 0}}
    with TestClient(app) as client:
        a = client.post("/api/v1/jobs", json=body, headers={**tenant.headers, "Idempotency-Key": "k"})
        b = client.post("/api/v1/jobs", json=body, headers={**other.headers, "Idempotency-Key": "k"})
    assert a.status_code == b.status_code == 201
    assert a.json()["job_id"] != b.json()["job_id"]


def test_a_tenant_cannot_see_another_tenants_job(app: Any, tenant: Tenant, redis_client: Any):
    other = make_tenant(role="member")
    with TestClient(app) as client:
        job_id = client.post(
            "/api/v1/jobs", json={"task": "long_task", "payload": {"n": 1}}, headers=tenant.headers
        ).json()["job_id"]
        assert client.get(f"/api/v1/jobs/{job_id}", headers=tenant.headers).status_code == 200
        assert client.get(f"/api/v1/jobs/{job_id}", headers=other.headers).status_code == 404
        assert client.get(f"/api/v1/jobs/{job_id}/events", headers=other.headers).status_code == 404
        listed = client.get("/api/v1/jobs", headers=other.headers).json()["items"]
        assert job_id not in {j["job_id"] for j in listed}
        redis_client.delete(job_key(job_id))  # the SQL path is scoped too
        assert client.get(f"/api/v1/jobs/{job_id}", headers=other.headers).status_code == 404
        assert client.get(f"/api/v1/jobs/{job_id}", headers=tenant.headers).status_code == 200


def test_list_is_newest_first_filtered_and_paged(api: TestClient):
    ids = [submit(api, "long_task", {"n": 1, "delay": 0}, queue="other")["job_id"] for _ in range(5)]
    submit(api, "heavy_compute", {}, queue="other")

    page = api.get("/api/v1/jobs", params={"task": "long_task", "limit": 2}).json()
    assert [j["job_id"] for j in page["items"]] == ids[::-1][:2]
    collected = [j["job_id"] for j in page["items"]]
    while page["next_cursor"]:
        page = api.get(
            "/api/v1/jobs", params={"task": "long_task", "limit": 2, "cursor": page["next_cursor"]}
        ).json()
        collected += [j["job_id"] for j in page["items"]]
    assert collected == ids[::-1]

    queued = api.get("/api/v1/jobs", params={"status": "queued", "queue": "other"}).json()["items"]
    assert len(queued) == 6
    none = api.get("/api/v1/jobs", params={"status": "finished", "queue": "other"}).json()["items"]
    assert none == []


def test_etag_and_if_none_match(api: TestClient):
    job_id = submit(api, "long_task", {"n": 1}, queue="other")["job_id"]
    first = api.get(f"/api/v1/jobs/{job_id}")
    assert first.headers["ETag"] == '"1"'
    again = api.get(f"/api/v1/jobs/{job_id}", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    assert again.content == b""


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"task": "nope", "payload": {}}, 404, "Known tasks"),
        ({"task": "long_task", "payload": {"n": "many"}}, 422, "schema"),
        ({"task": "long_task", "payload": {"n": -1}}, 422, "schema"),
        ({"task": "long_task", "payload": {}, "queue": "nowhere"}, 422, "Unknown queue"),
        ({"payload": {}}, 422, "task"),
        ({"task": "long_task", "payload": [1, 2]}, 422, "payload"),
    ],
)
def test_bad_submissions_get_clear_errors_and_store_nothing(
    api: TestClient, body: dict[str, Any], status: int, needle: str
):
    before = api.get("/api/v1/jobs").json()["items"]
    response = api.post("/api/v1/jobs", json=body)
    assert response.status_code == status, response.text
    assert needle in response.text
    assert api.get("/api/v1/jobs").json()["items"] == before


def test_unknown_task_lists_the_known_ones(api: TestClient):
    body = api.post("/api/v1/jobs", json={"task": "nope"}).json()
    assert {"long_task", "heavy_compute", "always_fails"} <= set(body["known_tasks"])


def test_payload_errors_name_the_field(api: TestClient):
    body = api.post("/api/v1/jobs", json={"task": "long_task", "payload": {"n": "many"}}).json()
    assert body["errors"][0]["loc"] == ["n"]


def test_malformed_json_is_422(api: TestClient):
    response = api.post(
        "/api/v1/jobs", content=b'{"task": "long_task",', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert "JSON" in response.text


def test_oversized_body_is_413(api: TestClient):
    big = {"task": "heavy_compute", "payload": {"blob": "x" * 2_000_000}}
    response = api.post("/api/v1/jobs", json=big)
    assert response.status_code == 413
    assert "too large" in response.json()["detail"]


def test_oversized_chunked_body_is_413(api: TestClient):
    def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 65536

    response = api.post("/api/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_missing_and_invalid_keys_are_401(app: Any):
    with TestClient(app) as client:
        missing = client.get("/api/v1/jobs")
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert "Authorization: Bearer" in missing.json()["detail"]
        invalid = client.get("/api/v1/jobs", headers={"Authorization": "Bearer cvk_nope_nope"})
        assert invalid.status_code == 401
        assert client.post("/api/v1/jobs", json={"task": "long_task"}).status_code == 401


def test_revoked_key_is_refused(app: Any):
    from jobs.access.auth import revoke_key

    tenant = make_tenant()
    with TestClient(app) as client:
        assert client.get("/api/v1/jobs", headers=tenant.headers).status_code == 200
        with session_scope() as session:
            revoke_key(session, key_id=tenant.key_id)
        assert client.get("/api/v1/jobs", headers=tenant.headers).status_code == 401


def test_unknown_and_malformed_job_ids_are_404(api: TestClient):
    assert api.get("/api/v1/jobs/3f0e2a8e-0000-4000-8000-000000000000").status_code == 404
    assert api.get("/api/v1/jobs/not-a-uuid").status_code == 404
    assert api.get("/api/v1/jobs/not-a-uuid/events").status_code == 404


def test_bad_cursor_is_422(api: TestClient):
    response = api.get("/api/v1/jobs", params={"cursor": "garbage!!"})
    assert response.status_code == 422
    assert "cursor" in response.json()["detail"]


def test_tasks_catalogue_has_schemas(api: TestClient):
    tasks = {t["name"]: t for t in api.get("/api/v1/tasks").json()}
    assert tasks["long_task"]["payload_schema"]["properties"]["n"]["type"] == "integer"
    assert tasks["always_fails"]["queue"] == "default"


def test_health_and_readiness(app: Any):
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok", "database": "ok", "redis": "ok"}
