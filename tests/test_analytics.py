"""GET /api/v1/analytics/summary equals figures computed by hand, on SQLite and on PostgreSQL."""

from __future__ import annotations

import random
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Tenant, make_tenant
from tests.history_fixtures import at, insert, job_row, nearest_rank, pick

WINDOW = {"from": "2026-03-01", "to": "2026-03-04T00:00:00Z"}
COUNTS = ("ended", "finished", "failed", "canceled", "success_rate", "retries", "retried_jobs", "retry_rate")
PCTS = ("count", "p50", "p95", "p99", "avg", "max")


def seed_fixture(tenant: str) -> dict[str, Any]:
    rows = []
    waits = [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    for i, run in enumerate([100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]):
        day = "2026-03-01T10:00:00" if i < 5 else "2026-03-02T10:00:00"
        rows.append(job_row(tenant, task="a", ended=at(day), run_ms=run, wait_ms=waits[i]))
    rows.append(
        job_row(
            tenant,
            task="b",
            status="failed",
            ended=at("2026-03-02T11:00:00"),
            run_ms=50,
            wait_ms=1,
            attempt=3,
            error=("ValueError", "user 12 missing"),
        )
    )
    last_failure = job_row(
        tenant,
        task="b",
        status="failed",
        ended=at("2026-03-02T12:00:00"),
        run_ms=5000,
        wait_ms=2,
        error=("ValueError", "user 99 missing"),
    )
    rows.append(last_failure)
    for run, wait, attempt in [(10, 100, 1), (20, 200, 2), (30, 300, 1)]:
        ended = at("2026-03-03T09:00:00")
        rows.append(job_row(tenant, queue="other", ended=ended, run_ms=run, wait_ms=wait, attempt=attempt))
    rows.append(job_row(tenant, queue="other", status="canceled", ended=at("2026-03-03T09:30:00")))
    # Outside the window, or someone else's: none of these may count.
    rows.append(job_row(tenant, ended=at("2026-02-28T23:59:59"), run_ms=1, wait_ms=1))
    rows.append(job_row(tenant, ended=at("2026-03-04T00:00:00"), run_ms=1, wait_ms=1))
    rows.append(job_row(tenant, status="queued", enqueued=at("2026-03-02T00:00:00")))
    rows.append(job_row("someone-else", ended=at("2026-03-02T10:00:00"), run_ms=99_999, wait_ms=1))
    insert(rows)
    return {"failures": {rows[10].job_id: "user 12 missing", last_failure.job_id: "user 99 missing"}}


@pytest.fixture
def admin(app: Any, env: Any) -> tuple[TestClient, Tenant]:
    tenant = make_tenant()
    return TestClient(app, headers=tenant.headers), tenant


def test_summary_matches_hand_computed_figures(admin: tuple[TestClient, Tenant]):
    client, tenant = admin
    fixture = seed_fixture(tenant.name)
    response = client.get("/api/v1/analytics/summary", params=WINDOW)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["from"] == "2026-03-01T00:00:00Z" and body["tenant"] == tenant.name

    totals = body["totals"]
    assert pick(totals, *COUNTS) == {
        "ended": 16,
        "finished": 13,
        "failed": 2,
        "canceled": 1,
        "success_rate": 0.866667,
        "retries": 3,
        "retried_jobs": 2,
        "retry_rate": 0.1875,
    }
    assert pick(totals["run_ms"], *PCTS) == {
        "count": 15, "p50": 400, "p95": 5000, "p99": 5000, "avg": 707.333, "max": 5000
    }  # fmt: skip
    assert pick(totals["wait_ms"], *PCTS) == {
        "count": 15, "p50": 30, "p95": 300, "p99": 300, "avg": 58.533, "max": 300
    }  # fmt: skip

    queues = {q["queue"]: q for q in body["queues"]}
    assert set(queues) == {"default", "other"}
    assert pick(queues["default"], *COUNTS) == {
        "ended": 12,
        "finished": 10,
        "failed": 2,
        "canceled": 0,
        "success_rate": 0.833333,
        "retries": 2,
        "retried_jobs": 1,
        "retry_rate": 0.166667,
    }
    assert pick(queues["default"]["run_ms"], *PCTS) == {
        "count": 12, "p50": 500, "p95": 5000, "p99": 5000, "avg": 879.167, "max": 5000
    }  # fmt: skip
    assert pick(queues["default"]["wait_ms"], "p50", "p95", "p99", "avg") == {
        "p50": 20, "p95": 50, "p99": 50, "avg": 23.167
    }  # fmt: skip
    assert pick(queues["other"], "ended", "finished", "canceled", "success_rate", "retry_rate") == {
        "ended": 4, "finished": 3, "canceled": 1, "success_rate": 1.0, "retry_rate": 0.25
    }  # fmt: skip
    assert pick(queues["other"]["run_ms"], "p50", "p95", "p99", "avg") == {
        "p50": 20, "p95": 30, "p99": 30, "avg": 20.0
    }  # fmt: skip
    assert pick(queues["other"]["wait_ms"], "p50", "p95") == {"p50": 200, "p95": 300}

    tasks = {t["task"]: t for t in body["tasks"]}
    assert pick(tasks["a"], "ended", "finished", "canceled", "success_rate", "retries") == {
        "ended": 14, "finished": 13, "canceled": 1, "success_rate": 1.0, "retries": 1
    }  # fmt: skip
    assert pick(tasks["a"]["run_ms"], "count", "p50", "p95", "p99") == {
        "count": 13, "p50": 400, "p95": 1000, "p99": 1000
    }  # fmt: skip
    assert pick(tasks["b"], "ended", "failed", "success_rate", "retries", "retried_jobs") == {
        "ended": 2, "failed": 2, "success_rate": 0.0, "retries": 2, "retried_jobs": 1
    }  # fmt: skip
    assert pick(tasks["b"]["run_ms"], "p50", "p95") == {"p50": 50, "p95": 5000}

    assert body["throughput"] == [
        {"day": "2026-03-01", "finished": 5, "failed": 0, "canceled": 0},
        {"day": "2026-03-02", "finished": 5, "failed": 2, "canceled": 0},
        {"day": "2026-03-03", "finished": 3, "failed": 0, "canceled": 1},
    ]
    example = max(fixture["failures"])  # the example is the signature's greatest job id
    assert body["top_errors"] == [
        {
            "signature": "ValueError: user <n> missing",
            "error_type": "ValueError",
            "count": 2,
            "last_seen": "2026-03-02T12:00:00Z",
            "example_job_id": example,
            "example_detail": fixture["failures"][example],
        }
    ]


def test_filters_narrow_every_figure(admin: tuple[TestClient, Tenant]):
    client, tenant = admin
    seed_fixture(tenant.name)
    other = client.get("/api/v1/analytics/summary", params={**WINDOW, "queue": "other"}).json()
    assert pick(other["totals"], "ended", "finished", "canceled") == {
        "ended": 4,
        "finished": 3,
        "canceled": 1,
    }
    assert [q["queue"] for q in other["queues"]] == ["other"]
    b = client.get("/api/v1/analytics/summary", params={**WINDOW, "task": "b"}).json()
    assert pick(b["totals"], "ended", "failed", "success_rate") == {
        "ended": 2,
        "failed": 2,
        "success_rate": 0.0,
    }
    assert b["totals"]["run_ms"]["p50"] == 50
    empty = client.get("/api/v1/analytics/summary", params={**WINDOW, "task": "nope"}).json()
    assert empty["totals"]["ended"] == 0 and empty["totals"]["success_rate"] is None
    assert empty["totals"]["run_ms"] == {
        "count": 0,
        "p50": None,
        "p95": None,
        "p99": None,
        "avg": None,
        "max": None,
    }
    assert len(empty["throughput"]) == 3 and empty["top_errors"] == []


def test_percentiles_are_nearest_rank_on_both_databases(admin: tuple[TestClient, Tenant]):
    client, tenant = admin
    rng = random.Random(5)
    sizes = [1, 2, 3, 19, 20, 21, 99, 100, 101, 137]
    samples: dict[str, list[int]] = {}
    rows = []
    for n in sizes:
        values = [rng.choice([rng.randint(0, 50), rng.randint(0, 100_000)]) for _ in range(n)]
        samples[f"q{n}"] = values
        for v in values:
            rows.append(
                job_row(tenant.name, queue=f"q{n}", ended=at("2026-03-02T10:00:00"), run_ms=v, wait_ms=v)
            )
    insert(rows)
    body = client.get("/api/v1/analytics/summary", params=WINDOW).json()
    got = {q["queue"]: q["run_ms"] for q in body["queues"]}
    for name, values in samples.items():
        expected = {f"p{p}": nearest_rank(values, p) for p in (50, 95, 99)}
        assert pick(got[name], "p50", "p95", "p99") == expected, name
    everything = [v for values in samples.values() for v in values]
    assert pick(body["totals"]["wait_ms"], "p50", "p95", "p99") == {
        f"p{p}": nearest_rank(everything, p) for p in (50, 95, 99)
    }


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"from": "yesterday"}, "ISO 8601"),
        ({"to": "2026-13-01"}, "ISO 8601"),
        ({"from": "2026-03-04", "to": "2026-03-01"}, "must be before"),
        ({"from": "2026-03-01", "to": "2026-03-01"}, "must be before"),
        ({"from": "2020-01-01", "to": "2026-01-01"}, "at most"),
    ],
)
def test_bad_ranges_are_422_with_a_message(admin: tuple[TestClient, Tenant], params: dict, needle: str):
    client, _ = admin
    response = client.get("/api/v1/analytics/summary", params=params)
    assert response.status_code == 422, response.text
    assert needle in response.json()["detail"]


def test_tenant_scoping(app: Any, env: Any):
    admin, member = make_tenant("operator"), make_tenant("member")
    seed_fixture(member.name)
    with TestClient(app) as client:
        mine = client.get("/api/v1/analytics/summary", params=WINDOW, headers=member.headers).json()
        assert mine["totals"]["ended"] == 16 and mine["tenant"] == member.name
        assert (
            client.get(
                "/api/v1/analytics/summary", params={**WINDOW, "tenant": admin.name}, headers=member.headers
            ).status_code
            == 403
        )
        assert (
            client.get(
                "/api/v1/analytics/summary", params={**WINDOW, "tenant": "*"}, headers=member.headers
            ).status_code
            == 403
        )
        theirs = client.get(
            "/api/v1/analytics/summary", params={**WINDOW, "tenant": member.name}, headers=admin.headers
        ).json()
        assert theirs["totals"]["ended"] == 16
        own = client.get("/api/v1/analytics/summary", params=WINDOW, headers=admin.headers).json()
        assert own["totals"]["ended"] == 0
        every = client.get(
            "/api/v1/analytics/summary", params={**WINDOW, "tenant": "*"}, headers=admin.headers
        ).json()
        assert every["tenant"] is None and every["totals"]["ended"] >= 17  # includes someone-else's
