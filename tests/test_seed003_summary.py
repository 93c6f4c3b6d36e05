"""Seed 003's `GET /analytics/summary?days=N`, in its own flat shape, on rows with known figures."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient

from jobs.clock import utcnow
from tests.conftest import Backend, Tenant, configure, make_tenant
from tests.history_fixtures import insert, job_row


def fixture(tenant: str) -> None:
    now = utcnow()
    hour = timedelta(hours=1)
    rows = [
        job_row(tenant, run_ms=run, wait_ms=wait, ended=now - hour * (i + 1))
        for i, (run, wait) in enumerate([(100, 10), (200, 20), (300, 30), (400, 40)])
    ]
    rows.append(
        job_row(tenant, status="failed", run_ms=1000, wait_ms=50, ended=now - 2 * hour, error=("E", "x"))
    )
    rows.append(job_row(tenant, queue="other", run_ms=50, wait_ms=500, ended=now - 3 * hour))
    rows.append(job_row(tenant, queue="other", status="canceled", ended=now - 4 * hour))
    rows.append(job_row(tenant, run_ms=99_999, wait_ms=9_999, ended=now - timedelta(days=10)))
    insert(rows)


def test_the_last_days_in_seed_003s_shape(app: Any, tenant: Tenant) -> None:
    fixture(tenant.name)
    with TestClient(app, headers=tenant.headers) as client:
        response = client.get("/analytics/summary", params={"days": 7})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {
            "from_ts", "to_ts", "success_rate", "total_finished", "total_failed", "p95_run_ms",
            "avg_wait_ms_by_queue",
        }  # fmt: skip
        assert (body["total_finished"], body["total_failed"]) == (5, 1)
        assert body["success_rate"] == 0.833333
        assert body["p95_run_ms"] == 1000.0
        assert body["avg_wait_ms_by_queue"] == {"default": 30.0, "other": 500.0}
        span = client.get("/analytics/summary").json()  # the seed's default: 7 days
        assert span["total_finished"] == 5
        wider = client.get("/analytics/summary", params={"days": 30}).json()
        assert wider["total_finished"] == 6 and wider["p95_run_ms"] == 99_999.0
        for bad in ("0", "-1", "seven", "100000"):
            assert client.get("/analytics/summary", params={"days": bad}).status_code == 422, bad
    stranger = make_tenant()
    with TestClient(app, headers=stranger.headers) as client:
        empty = client.get("/analytics/summary").json()
        assert (empty["total_finished"], empty["success_rate"], empty["avg_wait_ms_by_queue"]) == (0, 0.0, {})


def test_the_compat_switch_turns_it_off(env: Backend, tenant: Tenant) -> None:
    configure({**env.env(), "CONVEYOR_COMPAT_ENDPOINTS": "false"})
    try:
        from api.app import create_app

        with TestClient(create_app(), headers=tenant.headers) as client:
            assert client.get("/analytics/summary").status_code == 404
            assert client.get("/api/v1/analytics/summary").status_code == 200
    finally:
        import os

        os.environ.pop("CONVEYOR_COMPAT_ENDPOINTS", None)
        configure(env.env())
