"""GET /api/v1/queue/stats: counts computed by hand, workers, oldest wait and the health verdict."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.clock import utcnow
from jobs.settings import get_settings
from tests.conftest import make_tenant
from tests.history_fixtures import insert, job_row


def seed_stats(tenant: str) -> None:
    now = utcnow()
    ago = lambda s: now - timedelta(seconds=s)  # noqa: E731
    rows = [job_row(tenant, status="queued", enqueued=ago(s)) for s in (100, 50, 10)]
    rows += [
        job_row(tenant, status="deferred", enqueued=ago(400)),
        job_row(tenant, status="scheduled", enqueued=ago(-60)),
        job_row(tenant, status="queued", attempt=2, enqueued=ago(5)),
        job_row(tenant, status="scheduled", attempt=3, enqueued=ago(-30)),
        job_row(tenant, status="started", enqueued=ago(30), wait_ms=1000),
        job_row(tenant, status="started", enqueued=ago(30), wait_ms=2000),
        job_row(tenant, status="paused", enqueued=ago(30), wait_ms=1000),
    ]
    rows += [job_row(tenant, ended=ago(60 * i), run_ms=10, wait_ms=1) for i in range(1, 6)]
    rows += [job_row(tenant, status="failed", ended=ago(120), run_ms=5, wait_ms=1) for _ in range(2)]
    rows += [job_row(tenant, status="canceled", ended=ago(90))]
    rows += [job_row(tenant, ended=ago(2 * 86400), run_ms=10, wait_ms=1) for _ in range(4)]  # outside 24 h
    rows += [job_row(tenant, queue="other", status="queued", enqueued=ago(500)) for _ in range(2)]
    insert(rows)


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    def apply(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"CONVEYOR_{name.upper()}", value)
        get_settings.cache_clear()

    yield apply
    monkeypatch.undo()
    get_settings.cache_clear()


def test_counts_oldest_wait_workers_and_health(app: Any, env: Any, worker: Any):
    tenant = make_tenant("admin")
    seed_stats(tenant.name)
    with TestClient(app, headers=tenant.headers) as client:
        body = client.get("/api/v1/queue/stats").json()
    assert body["tenant"] == tenant.name and body["window_s"] == 86400
    queues = {q["name"]: q for q in body["queues"]}
    assert queues["default"]["counts"] == {
        "pending": 4,
        "scheduled": 1,
        "retrying": 2,
        "running": 2,
        "paused": 1,
        "completed": 5,
        "failed": 2,
        "cancelled": 1,
        "total": 18,
    }
    assert queues["other"]["counts"]["pending"] == 2 and queues["other"]["counts"]["total"] == 2
    assert body["totals"]["pending"] == 6 and body["totals"]["total"] == 20
    assert body["by_status"]["queued"] == 6 and body["by_status"]["deferred"] == 1
    assert body["by_status"]["finished"] == 5
    assert 99 <= queues["default"]["oldest_waiting_age_s"] < 130
    assert 499 <= queues["other"]["oldest_waiting_age_s"] < 530
    assert body["oldest_waiting_age_s"] == queues["other"]["oldest_waiting_age_s"]

    assert body["workers"]["active"] >= 1
    ours = [w for w in body["workers"]["items"] if w["name"].startswith(f"{worker.name}.")]  # its child
    assert ours and ours[0]["queues"] == ["default"] and ours[0]["heartbeat_age_s"] is not None
    assert queues["default"]["workers"] >= 1 and queues["other"]["workers"] == 0
    assert queues["default"]["rq"] is not None  # admins see RQ's own depth

    # The worker listens on `default` only, so the two jobs waiting on `other` never run.
    health = body["health"]
    assert health["status"] == "unhealthy"
    codes = {(r["code"], r["queue"]) for r in health["reasons"]}
    assert ("queue_unserved", "other") in codes
    assert not any(code == "failure_rate" for code, _ in codes)  # 7 ended < 20 needed to judge


def test_thresholds_are_settings(app: Any, env: Any, worker: Any, settings_env: Any):
    tenant = make_tenant("admin")
    seed_stats(tenant.name)
    settings_env(health_min_ended="5", health_max_wait="200", health_max_backlog="3")
    with TestClient(app, headers=tenant.headers) as client:
        reasons = client.get("/api/v1/queue/stats").json()["health"]["reasons"]
    by_code = {(r["code"], r["queue"]): r for r in reasons}
    assert ("failure_rate", None) in by_code and "2 of 7" in by_code[("failure_rate", None)]["message"]
    assert ("slow_start", "other") in by_code and ("slow_start", "default") not in by_code
    assert ("backlog", "default") in by_code and "6 jobs wait" in by_code[("backlog", "default")]["message"]


def test_window_and_scoping(app: Any, env: Any):
    admin, member = make_tenant("operator"), make_tenant("member")
    seed_stats(member.name)
    with TestClient(app) as client:
        wide = client.get("/api/v1/queue/stats", params={"window": "3d"}, headers=member.headers).json()
        assert wide["window_s"] == 3 * 86400 and wide["totals"]["completed"] == 9
        assert all(q["rq"] is None for q in wide["queues"])  # RQ's depth is tenant-blind: admins only
        assert (
            client.get(
                "/api/v1/queue/stats", params={"tenant": admin.name}, headers=member.headers
            ).status_code
            == 403
        )
        for bad in ("soon", "0s", "5000d"):
            response = client.get("/api/v1/queue/stats", params={"window": bad}, headers=member.headers)
            assert response.status_code == 422 and "window" in response.json()["detail"]
        theirs = client.get(
            "/api/v1/queue/stats", params={"tenant": member.name}, headers=admin.headers
        ).json()
        assert theirs["totals"]["total"] == 20
        every = client.get("/api/v1/queue/stats", params={"tenant": "*"}, headers=admin.headers).json()
        assert every["tenant"] is None and every["totals"]["total"] >= 20
