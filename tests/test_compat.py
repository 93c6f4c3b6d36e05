"""The seeds' endpoints: each in its own seed's shape and vocabulary, tenant-scoped, switchable off."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.clock import utcnow
from jobs.history.db import session_scope
from jobs.state.lifecycle import record, write_through
from jobs.status import JobStatus
from tests.conftest import Backend, Tenant, configure, make_tenant, seed_job
from tests.services import wait_until
from tests.test_jobs_e2e import wait_status

S = JobStatus


def started_job(tenant: Tenant, progress: float = 42.7, message: str = "step 3/7") -> str:
    job_id = seed_job(tenant.name)
    record(job_id, S.STARTED, event="started", patch={"started_at": utcnow()})
    record(job_id, S.STARTED, event="progress", patch={"progress": progress, "message": message})
    return job_id


# --- seeds 000 / 001: /status/{id} ---------------------------------------------------------------


def test_status_has_both_seed_shapes_and_unknown_ids_are_200_unknown(api: TestClient, tenant: Tenant):
    job_id = started_job(tenant)
    body = api.get(f"/status/{job_id}").json()
    assert body["job_id"] == job_id and body["status"] == "started"
    assert body["progress"] == 42 and body["percent"] == 42  # ints: seed 000's model, Streamlit's bar
    assert body["message"] == "step 3/7" and body["error"] is None and body["result"] is None
    assert body["started_at"] and body["updated_at"] and body["ended_at"] is None

    for unknown in ("6f1c0000-0000-4000-8000-000000000000", "abcd1234"):
        response = api.get(f"/status/{unknown}")
        assert response.status_code == 200
        assert response.json() == {
            "job_id": unknown,
            "status": "unknown",
            "progress": None,
            "percent": 0,
            "message": "",
            "result": None,
            "error": None,
            "created_at": None,
            "enqueued_at": None,
            "started_at": None,
            "ended_at": None,
            "updated_at": None,
        }


def test_status_of_another_tenants_job_looks_unknown(api: TestClient):
    theirs = started_job(make_tenant())
    assert api.get(f"/status/{theirs}").json()["status"] == "unknown"


def test_status_reports_errors_as_the_seeds_string(api: TestClient, tenant: Tenant):
    job_id = started_job(tenant)
    record(
        job_id, S.FAILED, event="failed", patch={"error": {"type": "ValueError", "detail": "disk on fire"}}
    )
    body = api.get(f"/status/{job_id}").json()
    assert body["status"] == "failed" and body["error"] == "ValueError: disk on fire"


def test_compat_routes_need_a_key(app: Any):
    with TestClient(app) as anonymous:
        for method, path in [
            ("GET", "/status/x"),
            ("GET", "/job-status/x"),
            ("POST", "/submit-job"),
            ("POST", "/workflow/run"),
            ("GET", "/api/v1/jobs/status/x"),
            ("GET", "/api/v1/jobs/queue/stats"),
            ("POST", "/api/v1/jobs/cancel/x"),
        ]:
            assert anonymous.request(method, path).status_code == 401, path


# --- seed 004: /submit-job, /job-status/{id} -----------------------------------------------------


def test_submit_job_and_job_status_in_seed_004_shape(api: TestClient, worker: Any):
    submitted = api.post("/submit-job", json={"task": "heavy_compute", "payload": {"user_id": 101}})
    assert submitted.status_code == 200
    body = submitted.json()
    assert set(body) == {"job_id", "status", "submitted_at"} and body["status"] == "queued"
    wait_status(api, body["job_id"], {"finished"})
    status = api.get(f"/job-status/{body['job_id']}").json()
    assert status["status"] == "finished"
    assert status["result"] == {"echo": {"user_id": 101}, "summary": "Processed keys: ['user_id']"}
    assert status["meta"]["task_name"] == "heavy_compute" and status["meta"]["payload"] == {"user_id": 101}
    assert status["meta"]["submitted_at"] == body["submitted_at"]
    assert status["enqueued_at"] and status["started_at"] and status["ended_at"]
    assert status["exc_info"] is None


def test_seed_004_errors(api: TestClient, worker: Any):
    unknown = api.post("/submit-job", json={"task": "rm_rf", "payload": {}})
    assert unknown.status_code == 400 and unknown.json()["detail"] == "Unknown task: rm_rf"
    assert api.post("/submit-job", json={"payload": {}}).status_code == 422
    missing = api.get("/job-status/6f1c0000-0000-4000-8000-000000000000")
    assert missing.status_code == 404 and missing.json()["detail"] == "Job not found"
    theirs = started_job(make_tenant())
    assert api.get(f"/job-status/{theirs}").status_code == 404

    failing = api.post("/submit-job", json={"task": "always_fails", "payload": {"message": "nope"}}).json()
    wait_status(api, failing["job_id"], {"failed"})
    status = api.get(f"/job-status/{failing['job_id']}").json()
    assert status["status"] == "failed" and "ValueError: nope" in status["exc_info"]
    # The traceback arrives with the recorder's SQL write (within ~200 ms).
    full = wait_until(
        lambda: "Traceback" in (s := api.get(f"/job-status/{failing['job_id']}").json())["exc_info"] and s,
        timeout=5,
    )
    assert "ValueError: nope" in full["exc_info"]


# --- seed 001: /workflow/run ---------------------------------------------------------------------


def test_workflow_run_starts_long_task_with_n_steps(api: TestClient):
    started = api.post("/workflow/run", json={"n_steps": 3, "step_seconds": 0})
    assert started.status_code == 200 and set(started.json()) == {"job_id"}
    snap = api.get(f"/api/v1/jobs/{started.json()['job_id']}").json()
    assert snap["task"] == "long_task"
    events = api.get(f"/api/v1/jobs/{snap['job_id']}/events").json()
    assert events["items"][0]["event"] == "queued"
    assert api.post("/workflow/run", json={"n_steps": 0}).status_code == 422


# --- seed 002: /api/v1/jobs/status/{id}, queue stats, cancel, restart ----------------------------


@pytest.mark.parametrize(
    ("moves", "expected"),
    [
        ([], "pending"),
        ([(S.STARTED, {})], "running"),
        ([(S.STARTED, {}), (S.FINISHED, {"result": 1, "ended_at": "2026-01-01T00:00:00Z"})], "completed"),
        ([(S.STARTED, {}), (S.FAILED, {"error": {"type": "E", "detail": "d"}})], "failed"),
        ([(S.CANCELED, {})], "cancelled"),
    ],
)
def test_seed_002_status_vocabulary(
    api: TestClient, tenant: Tenant, moves: list[tuple[JobStatus, dict[str, Any]]], expected: str
):
    job_id = seed_job(tenant.name)
    for status, patch in moves:
        record(job_id, status, event=status.value, patch=patch)
    body = api.get(f"/api/v1/jobs/status/{job_id}").json()
    assert body["status"] == expected
    assert isinstance(body["progress"], float) and isinstance(body["current_step"], str)
    assert set(body) == {
        "job_id",
        "status",
        "progress",
        "current_step",
        "result",
        "error",
        "created_at",
        "started_at",
        "completed_at",
        "updated_at",
    }
    if expected == "failed":
        assert body["error"] == "E: d"
    if expected == "completed":
        assert body["completed_at"] is not None and body["result"] == 1


def test_seed_002_unknown_job_is_404(api: TestClient):
    assert api.get("/api/v1/jobs/status/6f1c0000-0000-4000-8000-000000000000").status_code == 404
    assert api.get(f"/api/v1/jobs/status/{started_job(make_tenant())}").status_code == 404


def test_seed_002_queue_stats_count_the_tenants_jobs(env: Backend, app: Any):
    member = make_tenant(role="member")

    def move(job_id: str, status: JobStatus, **patch: Any) -> None:
        with session_scope() as session:
            write_through(
                record(job_id, status, event=status.value, patch=patch), session=session, event=status.value
            )

    seed_job(member.name)
    ids = [seed_job(member.name) for _ in range(4)]
    for job_id in ids:
        move(job_id, S.STARTED)
    move(ids[2], S.FINISHED)
    move(ids[3], S.FAILED, error={"type": "E", "detail": "d"})
    seed_job(make_tenant().name)  # another tenant's: not counted
    with TestClient(app, headers=member.headers) as client:
        stats = client.get("/api/v1/jobs/queue/stats").json()
    assert stats["pending_jobs"] == 1 and stats["running_jobs"] == 2
    assert stats["completed_jobs"] == 1 and stats["failed_jobs"] == 1 and stats["cancelled_jobs"] == 0
    assert stats["total_jobs"] == 5 and stats["retrying_jobs"] == 0 and stats["scheduled_jobs"] == 0
    assert stats["queue_type"] == "redis"
    for number in ("cache_size", "cpu_usage_percent", "memory_usage_mb", "active_workers"):
        assert isinstance(stats[number], int | float), number
    assert stats["memory_usage_mb"] > 10
    assert stats["queue_health"]["status"] in ("healthy", "degraded", "unhealthy")


def test_seed_002_cancel_and_restart_steer_jobs(api: TestClient, tenant: Tenant):
    waiting = seed_job(tenant.name)
    canceled = api.post(f"/api/v1/jobs/cancel/{waiting}")
    assert canceled.status_code == 200
    assert canceled.json() == {"message": f"Job {waiting} cancelled successfully"}
    assert api.get(f"/api/v1/jobs/status/{waiting}").json()["status"] == "cancelled"
    again = api.post(f"/api/v1/jobs/cancel/{waiting}")
    assert again.status_code == 409 and "canceled" in again.json()["detail"]

    restarted = api.post(f"/api/v1/jobs/restart/{waiting}")
    assert restarted.status_code == 200
    assert restarted.json() == {"message": f"Job {waiting} restarted successfully"}
    assert api.get(f"/api/v1/jobs/{waiting}").json()["attempt"] == 2
    assert api.post(f"/api/v1/jobs/restart/{waiting}").status_code == 409  # queued: nothing to restart

    running = started_job(tenant)
    asked = api.post(f"/api/v1/jobs/cancel/{running}")
    assert asked.status_code == 202 and "requested" in asked.json()["message"]
    for action in ("cancel", "restart"):
        assert api.post(f"/api/v1/jobs/{action}/6f1c0000-0000-4000-8000-000000000000").status_code == 404


def test_one_setting_turns_every_compat_endpoint_off(env: Backend, tenant: Tenant):
    configure({**env.env(), "CONVEYOR_COMPAT_ENDPOINTS": "false"})
    try:
        from api.app import create_app

        with TestClient(create_app(), headers=tenant.headers) as client:
            for method, path in [
                ("GET", "/status/x"),
                ("GET", "/job-status/x"),
                ("POST", "/submit-job"),
                ("POST", "/workflow/run"),
                ("GET", "/api/v1/jobs/status/x"),
                ("GET", "/api/v1/jobs/status/x/poll"),
                ("GET", "/api/v1/jobs/status/x/stream"),
                ("GET", "/api/v1/jobs/queue/stats"),
                ("POST", "/api/v1/jobs/cancel/x"),
                ("POST", "/api/v1/jobs/restart/x"),
            ]:
                assert client.request(method, path).status_code in (404, 405), path
            assert client.get("/api/v1/jobs").status_code == 200
    finally:
        import os

        os.environ.pop("CONVEYOR_COMPAT_ENDPOINTS", None)
        configure(env.env())
