"""Pausing, resuming and draining a queue, with a real worker blocked waiting on it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.queues.queueing import get_queue
from tests.conftest import Tenant, make_tenant
from tests.test_jobs_e2e import submit, wait_status

QUEUE = "control"  # the control_worker's queue


@pytest.fixture
def operator(app: Any, redis_client: Any) -> Iterator[TestClient]:
    """An operator's client; the queue is resumed afterwards whatever the test did."""
    with TestClient(app, headers=make_tenant("operator").headers) as client:
        yield client
        client.post(f"/api/v1/queues/{QUEUE}/resume")


def stats_of(client: TestClient) -> dict[str, Any]:
    queues = client.get("/api/v1/queue/stats").json()["queues"]
    found: dict[str, Any] = next(q for q in queues if q["name"] == QUEUE)
    return found


def test_a_paused_queue_holds_new_jobs_and_resume_releases_them(
    operator: TestClient, control_worker: Any, redis_client: Any
) -> None:
    running = submit(operator, "long_task", {"n": 30, "delay": 0.1}, queue=QUEUE)["job_id"]
    wait_status(operator, running, {"started"})
    paused = operator.post(f"/api/v1/queues/{QUEUE}/pause")
    assert paused.status_code == 200 and paused.json() == {"name": QUEUE, "paused": True, "draining": False}
    held = submit(operator, "long_task", {"n": 1}, queue=QUEUE)["job_id"]
    assert wait_status(operator, running, {"finished"}, timeout=20)  # what runs goes on
    time.sleep(2.5)  # the worker is idle now, blocked waiting on the queue: it must not start it
    assert operator.get(f"/api/v1/jobs/{held}").json()["status"] == "queued"
    queue = get_queue(QUEUE, redis_client)
    assert held in queue.get_job_ids()  # back at the head, not lost in an intermediate list
    assert redis_client.llen(queue.intermediate_queue_key) == 0
    assert stats_of(operator)["paused"] is True
    health = operator.get("/api/v1/queue/stats").json()["health"]
    assert any(r["code"] == "queue_paused" and r["queue"] == QUEUE for r in health["reasons"])

    resumed = operator.post(f"/api/v1/queues/{QUEUE}/resume")
    assert resumed.json()["paused"] is False
    wait_status(operator, held, {"finished"}, timeout=15)
    assert stats_of(operator)["paused"] is False


def test_a_draining_queue_refuses_submits_with_409(operator: TestClient) -> None:
    assert operator.post(f"/api/v1/queues/{QUEUE}/drain").json()["draining"] is True
    refused = operator.post("/api/v1/jobs", json={"task": "long_task", "payload": {}, "queue": QUEUE})
    assert refused.status_code == 409, refused.text
    assert "draining" in refused.json()["detail"] and "resume" in refused.json()["detail"]
    assert stats_of(operator)["draining"] is True
    other = operator.post("/api/v1/jobs", json={"task": "long_task", "payload": {"n": 1}, "queue": "other"})
    assert other.status_code == 201  # only that queue
    operator.post(f"/api/v1/queues/{QUEUE}/resume")
    again = operator.post("/api/v1/jobs", json={"task": "long_task", "payload": {"n": 1}, "queue": QUEUE})
    assert again.status_code == 201, again.text


def test_only_operators_steer_queues_and_unknown_ones_are_422(
    app: Any, tenant: Tenant, operator: TestClient
) -> None:
    with TestClient(app, headers=tenant.headers) as admin:
        refused = admin.post(f"/api/v1/queues/{QUEUE}/pause")
        assert refused.status_code == 403 and "operator" in refused.json()["detail"]
    unknown = operator.post("/api/v1/queues/nope/pause")
    assert unknown.status_code == 422 and "Known queues" in unknown.json()["detail"]
    assert operator.post(f"/api/v1/queues/{QUEUE}/explode").status_code == 422


def test_the_queue_page_shows_the_state_and_operators_get_the_buttons(app: Any, operator: TestClient) -> None:
    from tests.web_support import csrf_from, sign_in

    key = make_tenant("operator")
    with TestClient(app) as client:
        sign_in(client, key.key)
        page = client.get("/queue")
        assert f'action="/queue/{QUEUE}/pause"' in page.text
        done = client.post(
            f"/queue/{QUEUE}/pause", data={"csrf_token": csrf_from(page.text)}, follow_redirects=False
        )
        assert done.status_code == 303
        page = client.get("/queue")
        assert 'status-paused">paused' in page.text and f'action="/queue/{QUEUE}/resume"' in page.text
    admin = make_tenant("admin")
    with TestClient(app) as client:
        sign_in(client, admin.key)
        page = client.get("/queue")
        assert f'action="/queue/{QUEUE}/pause"' not in page.text
        refused = client.post(f"/queue/{QUEUE}/resume", data={"csrf_token": csrf_from(page.text)})
        assert refused.status_code == 403
