"""Cancel, pause, resume and restart, over HTTP, on queued, running and finished jobs, with real workers."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.queues.queueing import fetch, get_queue
from jobs.state.live import heartbeat_key
from tests.conftest import Backend, ServerProcess, Tenant, make_tenant
from tests.services import wait_until
from tests.test_cli import conveyor
from tests.test_jobs_e2e import sql_events, sql_row, submit, wait_sql_status, wait_status


def control(api: TestClient, job_id: str, action: str, **body: Any) -> Any:
    return api.post(f"/api/v1/jobs/{job_id}/{action}", json=body or None)


def events(api: TestClient, job_id: str) -> list[dict[str, Any]]:
    return api.get(f"/api/v1/jobs/{job_id}/events").json()["items"]


# --- cancel ------------------------------------------------------------------------------------------


def test_cancel_a_queued_job_takes_it_out_of_its_queue(api: TestClient, tenant: Tenant, redis_client: Any):
    job_id = submit(api, "long_task", {"n": 1}, queue="other")["job_id"]
    queue = get_queue("other", redis_client)
    assert job_id in queue.get_job_ids()

    response = control(api, job_id, "cancel", reason="not needed")
    assert response.status_code == 200, response.text
    snap = response.json()
    assert snap["status"] == "canceled" and snap["ended_at"]
    assert job_id not in queue.get_job_ids()
    rq_job = fetch(job_id, redis_client)
    assert rq_job is not None and rq_job.get_status() == "canceled"

    row = sql_row(job_id)  # written through: SQL says so at once
    assert row is not None and row.status == "canceled"
    assert row.canceled_by == tenant.key_id and row.canceled_at is not None
    canceled = [e for e in events(api, job_id) if e["event"] == "canceled"]
    assert canceled[0]["data"] == {"canceled_by": tenant.key_id, "reason": "not needed"}

    again = control(api, job_id, "cancel")
    assert again.status_code == 409
    body = again.json()
    assert body["status"] == "canceled" and body["allowed_actions"] == ["restart"]
    assert "it is canceled" in body["detail"]


def test_cancel_a_scheduled_job(api: TestClient, redis_client: Any):
    snap = submit(api, "long_task", {"n": 1}, queue="other", delay=3600)
    assert snap["status"] == "scheduled"
    registry = get_queue("other", redis_client).scheduled_job_registry
    assert snap["job_id"] in registry.get_job_ids()
    assert control(api, snap["job_id"], "cancel").json()["status"] == "canceled"
    assert snap["job_id"] not in registry.get_job_ids()


def test_a_job_canceled_while_queued_is_never_started(
    api: TestClient, control_worker: Any, redis_client: Any
):
    """The gate decides: a worker that dequeues a job a moment after its cancel refuses to start it."""
    job_id = submit(api, "steps", {"steps": 1, "step": 0}, queue="other")["job_id"]
    assert control(api, job_id, "cancel").status_code == 200
    # Put the RQ job where the control worker takes it, as if it had been dequeued in the same instant.
    rq_job = fetch(job_id, redis_client)
    assert rq_job is not None
    get_queue("control", redis_client).enqueue_job(rq_job)
    time.sleep(1.0)
    assert [e["event"] for e in events(api, job_id)] == ["queued", "canceled"]


def test_cancel_a_running_job_cooperatively(api: TestClient, tenant: Tenant, control_worker: Any):
    # Half-second steps: the job obeys at its next step, after the repeated request below (with
    # 50 ms steps it sometimes obeyed first, and the repeat got 409 for a job already canceled).
    job_id = submit(api, "steps", {"steps": 400, "step": 0.5})["job_id"]
    wait_status(api, job_id, {"started"})
    asked = time.monotonic()
    response = control(api, job_id, "cancel")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "started"
    assert control(api, job_id, "cancel").status_code == 202  # asking again is harmless

    final = wait_status(api, job_id, {"canceled"}, timeout=10)
    assert time.monotonic() - asked < 2, "the job should obey at its next checkpoint"
    assert final["ended_at"] and final["error"] is None
    row = wait_sql_status(job_id, "canceled")
    assert row.canceled_by == tenant.key_id
    names = [e["event"] for e in events(api, job_id)]
    assert names[-2:] == ["cancel_requested", "canceled"]
    assert names.count("cancel_requested") == 1
    canceled = next(e for e in events(api, job_id) if e["event"] == "canceled")
    assert canceled["data"]["forced"] is False and canceled["data"]["canceled_by"] == tenant.key_id
    time.sleep(1.5)  # RQ must not retry or run it again
    assert sql_row(job_id).status == "canceled"  # type: ignore[union-attr]


def test_a_job_that_never_checks_in_is_stopped_by_force(
    api: TestClient, tenant: Tenant, control_worker: Any, short_cancel_grace: Any
):
    job_id = submit(api, "spin", {"seconds": 120})["job_id"]
    wait_status(api, job_id, {"started"})
    asked = time.monotonic()
    assert control(api, job_id, "cancel").status_code == 202
    time.sleep(0.5)
    assert api.get(f"/api/v1/jobs/{job_id}").json()["status"] == "started"  # within its grace

    wait_status(api, job_id, {"canceled"}, timeout=15)
    took = time.monotonic() - asked
    assert took < 6, f"forced stop took {took:.1f}s (grace 1 s + reconciler interval 0.5 s)"
    row = wait_sql_status(job_id, "canceled")
    assert row.canceled_by == tenant.key_id
    canceled = next(e for e in events(api, job_id) if e["event"] == "canceled")
    assert canceled["data"]["forced"] is True

    # The worker lives on and takes the next job.
    next_id = submit(api, "steps", {"steps": 2, "step": 0})["job_id"]
    wait_status(api, next_id, {"finished"}, timeout=15)


def test_cancel_a_finished_job_is_409(api: TestClient, control_worker: Any):
    job_id = submit(api, "steps", {"steps": 1, "step": 0})["job_id"]
    wait_status(api, job_id, {"finished"})
    response = control(api, job_id, "cancel")
    assert response.status_code == 409
    body = response.json()
    assert body["status"] == "finished" and body["allowed_actions"] == []
    assert "Cannot cancel job" in body["detail"] and "finished" in body["detail"]


# --- pause and resume ------------------------------------------------------------------------------


def test_pause_holds_a_running_job_keeps_its_heartbeat_and_stops_its_timeout_clock(
    api: TestClient, control_worker: Any, redis_client: Any
):
    # 20 steps of 50 ms: 1 s of work under a 3-second timeout, paused for longer than that.
    job_id = submit(api, "steps", {"steps": 20, "step": 0.05, "report": True}, timeout=3)["job_id"]
    wait_until(lambda: (api.get(f"/api/v1/jobs/{job_id}").json()["progress"] or 0) > 10, timeout=10)
    response = control(api, job_id, "pause")
    assert response.status_code == 202
    paused = wait_status(api, job_id, {"paused"}, timeout=5)
    assert control(api, job_id, "pause").status_code == 409  # already paused

    time.sleep(4)  # longer than the heartbeat TTL (3 s) and the job's whole timeout
    held = api.get(f"/api/v1/jobs/{job_id}").json()
    assert held["status"] == "paused" and held["progress"] == paused["progress"]
    assert redis_client.ttl(heartbeat_key(job_id)) > 0

    response = control(api, job_id, "resume")
    assert response.status_code == 202
    final = wait_status(api, job_id, {"finished", "failed"}, timeout=15)
    assert final["status"] == "finished", final["error"]
    assert final["attempt"] == 1
    wait_sql_status(job_id, "finished")
    names = [e["event"] for e in events(api, job_id)]
    for event in ("pause_requested", "paused", "resume_requested", "resumed"):
        assert event in names
    assert names.index("paused") < names.index("resumed") < names.index("finished")


def test_pause_and_resume_refuse_what_makes_no_sense(api: TestClient, control_worker: Any):
    queued = submit(api, "long_task", {"n": 1}, queue="other")["job_id"]
    response = control(api, queued, "pause")
    assert response.status_code == 409
    assert response.json()["allowed_actions"] == ["cancel"]
    assert control(api, queued, "resume").status_code == 409

    running = submit(api, "steps", {"steps": 200, "step": 0.05})["job_id"]
    wait_status(api, running, {"started"})
    assert control(api, running, "resume").status_code == 409  # not paused
    restart = control(api, running, "restart")
    assert restart.status_code == 409 and restart.json()["allowed_actions"] == ["cancel", "pause"]
    control(api, running, "cancel")
    wait_status(api, running, {"canceled"})
    assert control(api, running, "pause").status_code == 409
    assert control(api, running, "resume").status_code == 409


def test_a_pause_not_reached_yet_can_be_withdrawn(api: TestClient, control_worker: Any):
    # A task that only checks in every 2 s: the pause request waits, and resume withdraws it.
    job_id = submit(api, "steps", {"steps": 2, "step": 2})["job_id"]
    wait_status(api, job_id, {"started"})
    assert control(api, job_id, "pause").status_code == 202
    response = control(api, job_id, "resume")
    assert response.status_code == 200
    final = wait_status(api, job_id, {"finished"}, timeout=15)
    wait_sql_status(job_id, "finished")
    names = [e["event"] for e in events(api, job_id)]
    assert "resume_requested" in names and "paused" not in names and final["status"] == "finished"


def test_cancel_a_paused_job(api: TestClient, control_worker: Any):
    job_id = submit(api, "steps", {"steps": 400, "step": 0.05})["job_id"]
    wait_status(api, job_id, {"started"})
    control(api, job_id, "pause")
    wait_status(api, job_id, {"paused"})
    assert control(api, job_id, "cancel").status_code == 202
    wait_status(api, job_id, {"canceled"}, timeout=5)


# --- restart ---------------------------------------------------------------------------------------


def test_restart_a_failed_job_runs_it_again_under_the_same_id(
    api: TestClient, tenant: Tenant, control_worker: Any
):
    job_id = submit(api, "always_fails", {"message": "boom"}, queue="control")["job_id"]
    wait_status(api, job_id, {"failed"})

    response = control(api, job_id, "restart", reason="try again")
    assert response.status_code == 200, response.text
    snap = response.json()
    assert snap["job_id"] == job_id and snap["status"] == "queued" and snap["attempt"] == 2
    assert snap["error"] is None and snap["ended_at"] is None

    final = wait_status(api, job_id, {"failed"})
    assert final["attempt"] == 2
    row = wait_until(
        lambda: (r := sql_row(job_id)) is not None and r.attempt == 2 and r.status == "failed" and r
    )
    assert row.error_type == "ValueError"
    history = sql_events(job_id)
    assert [(e.event, e.attempt) for e in history if e.event in ("started", "failed", "restarted")] == [
        ("started", 1),
        ("failed", 1),
        ("restarted", 2),
        ("started", 2),
        ("failed", 2),
    ]
    restarted = next(e for e in history if e.event == "restarted")
    assert restarted.data["restarted_by"] == tenant.key_id and restarted.data["reason"] == "try again"


def test_restart_a_canceled_job_and_refuse_the_others(api: TestClient, redis_client: Any):
    job_id = submit(api, "long_task", {"n": 1}, queue="other")["job_id"]
    assert control(api, job_id, "restart").status_code == 409  # still queued
    control(api, job_id, "cancel")
    response = control(api, job_id, "restart")
    assert response.status_code == 200
    assert response.json()["status"] == "queued" and response.json()["attempt"] == 2
    assert job_id in get_queue("other", redis_client).get_job_ids()
    row = sql_row(job_id)
    assert row is not None and row.status == "queued" and row.canceled_by is None


def test_restart_after_rq_forgot_the_job_uses_the_sql_row(api: TestClient, redis_client: Any):
    from jobs.queues.queueing import discard

    job_id = submit(api, "long_task", {"n": 3}, queue="other")["job_id"]
    control(api, job_id, "cancel")
    discard(job_id, redis_client)  # as if RQ's record had expired
    assert control(api, job_id, "restart").status_code == 200
    rq_job = fetch(job_id, redis_client)
    assert rq_job is not None and rq_job.kwargs["payload"] == {"n": 3, "delay": 0.02}


def test_restart_refuses_when_the_secrets_of_the_payload_are_gone(api: TestClient, redis_client: Any):
    from jobs.queues.queueing import discard

    job_id = submit(api, "heavy_compute", {"api_token": "s3cret"}, queue="other")["job_id"]
    control(api, job_id, "cancel")
    discard(job_id, redis_client)
    response = control(api, job_id, "restart")
    assert response.status_code == 409
    assert "secrets" in response.json()["detail"]


def test_a_finished_job_is_not_restarted(api: TestClient, control_worker: Any):
    job_id = submit(api, "steps", {"steps": 1, "step": 0})["job_id"]
    wait_status(api, job_id, {"finished"})
    response = control(api, job_id, "restart")
    assert response.status_code == 409
    assert "submit a new job" in response.json()["detail"]


# --- who may ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["cancel", "pause", "resume", "restart"])
def test_another_tenants_job_is_404(app: Any, tenant: Tenant, action: str):
    other = make_tenant(role="member")
    with TestClient(app) as client:
        job_id = client.post(
            "/api/v1/jobs",
            json={"task": "long_task", "payload": {"n": 1}, "queue": "other"},
            headers=tenant.headers,
        ).json()["job_id"]
        response = client.post(f"/api/v1/jobs/{job_id}/{action}", headers=other.headers)
        assert response.status_code == 404
        assert client.post(f"/api/v1/jobs/not-a-uuid/{action}", headers=tenant.headers).status_code == 404
        missing = "3f0e2a8e-0000-4000-8000-000000000000"
        assert client.post(f"/api/v1/jobs/{missing}/{action}", headers=tenant.headers).status_code == 404
        assert client.post(f"/api/v1/jobs/{job_id}/{action}").status_code == 401


def test_the_cli_and_the_client_steer_jobs(env: Backend, live_server: ServerProcess, tenant: Tenant):
    from conveyor_client import Client, ConveyorAPIError

    common = ["--url", live_server.url, "--key", tenant.key]
    with Client(live_server.url, tenant.key) as client:
        job = client.submit("long_task", {"n": 1}, queue="other")
        done = conveyor("cancel", job.job_id, "--reason", "cli", "--json", *common)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "canceled"
        again = conveyor("cancel", job.job_id, *common)
        assert again.returncode == 1 and "409" in again.stderr and "it is canceled" in again.stderr

        restarted = client.restart(job.job_id)
        assert restarted.status == "queued" and restarted.attempt == 2
        assert client.cancel(job.job_id).status == "canceled"
        with pytest.raises(ConveyorAPIError) as refused:
            client.pause(job.job_id)
        assert refused.value.status_code == 409
        done = conveyor("restart", job.job_id, "--json", *common)
        assert done.returncode == 0 and json.loads(done.stdout)["attempt"] == 3


def test_allowed_actions_are_derived_from_the_status_table(monkeypatch: Any) -> None:
    from jobs import status as status_table
    from jobs.actions.control import allowed_actions

    S = status_table.JobStatus
    expected = {
        (S.QUEUED, None): ["cancel"],
        (S.SCHEDULED, None): ["cancel"],
        (S.DEFERRED, None): ["cancel"],
        (S.STARTED, None): ["cancel", "pause"],
        (S.STARTED, ""): ["cancel", "pause"],
        (S.STARTED, "pause"): ["cancel", "resume"],
        (S.STARTED, "cancel"): ["cancel"],
        (S.PAUSED, None): ["cancel", "resume"],
        (S.PAUSED, "pause"): ["cancel", "resume"],
        (S.PAUSED, "cancel"): ["cancel"],
        (S.FINISHED, None): [],
        (S.FAILED, None): ["restart"],
        (S.CANCELED, None): ["restart"],
    }
    for (status, control), actions in expected.items():
        assert allowed_actions(status, control) == actions, (status, control)
    # A table where a paused job could only be canceled offers no resume: no second table to edit.
    monkeypatch.setitem(status_table.TRANSITIONS, S.PAUSED, frozenset({S.CANCELED, S.FAILED}))
    assert allowed_actions(S.PAUSED) == ["cancel"]
