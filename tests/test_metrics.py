"""GET /metrics: Prometheus exposition that counts each job exactly once, guarded by an admin key."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, make_tenant
from tests.services import wait_until
from tests.test_jobs_e2e import submit, wait_status


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_each_job_once(api: TestClient, worker: Any):
    before = scrape(api)
    done = submit(api, "long_task", {"n": 2, "delay": 0.01})["job_id"]
    failed = submit(api, "always_fails", {})["job_id"]
    wait_status(api, done, {"finished"})
    wait_status(api, failed, {"failed"})

    def ended_in(samples: dict, status: str) -> float:
        return value(samples, "conveyor_jobs_ended_total", queue="default", status=status)

    # The recorder counts each change as it acknowledges its journal entry: a moment after the fact.
    after = wait_until(
        lambda: (
            (s := scrape(api))
            and ended_in(s, "finished") > ended_in(before, "finished")
            and ended_in(s, "failed") > ended_in(before, "failed")
            and s
        ),
        timeout=10,
        message="the recorder to count both jobs",
    )

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("conveyor_jobs_ended_total", queue="default", status="finished") >= 1
    assert delta("conveyor_jobs_ended_total", queue="default", status="failed") >= 1
    ended = sum(
        delta("conveyor_jobs_ended_total", queue="default", status=s)
        for s in ("finished", "failed", "canceled")
    )
    assert delta("conveyor_job_run_seconds_count", queue="default") == ended - delta(
        "conveyor_jobs_ended_total", queue="default", status="canceled"
    )
    assert delta("conveyor_job_wait_seconds_count", queue="default") >= 2
    assert value(after, "conveyor_job_run_seconds_bucket", queue="default", le="+Inf") == value(
        after, "conveyor_job_run_seconds_count", queue="default"
    )
    assert (
        value(after, "conveyor_workers", state="busy") + value(after, "conveyor_workers", state="idle") >= 1
    )
    assert ("conveyor_queue_depth", (("queue", "default"),)) in after
    assert ("conveyor_jobs", (("queue", "default"), ("status", "queued"))) in after


def test_metrics_need_an_admin_key_unless_public(app: Any, env: Any, monkeypatch: Any):
    from jobs.settings import get_settings

    member = make_tenant("member")
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=member.headers).status_code == 403
        monkeypatch.setenv("CONVEYOR_METRICS_PUBLIC", "true")
        get_settings.cache_clear()
        try:
            assert client.get("/metrics").status_code == 200
        finally:
            monkeypatch.delenv("CONVEYOR_METRICS_PUBLIC")
            get_settings.cache_clear()


def test_the_app_does_not_import_prometheus_client_until_scraped():
    code = (
        "import sys; from api.app import create_app; create_app(); print('prometheus_client' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_batch_is_counted_with_one_command_per_distinct_field(redis_client: Any):
    """The recorder's tally: many jobs' changes sum to one HINCRBY/HINCRBYFLOAT per field."""
    import uuid

    from jobs.reporting.metrics import Tally, read_counters

    queue = f"tally-{uuid.uuid4().hex[:8]}"
    times = {"enqueued_at": "2026-01-01T00:00:00.000Z", "started_at": "2026-01-01T00:00:00.020Z"}
    tally = Tally()
    for _ in range(3):
        tally.observe("started", {"status": "started", "queue": queue, **times})
        tally.observe("progress", {"status": "started", "queue": queue, **times})
        ended = {**times, "ended_at": times["started_at"]}
        tally.observe("finished", {"status": "finished", "queue": queue, **ended})
    tally.observe("finished", {"status": "finished", "queue": queue})  # no times: ended, nothing timed
    with redis_client.pipeline(transaction=True) as pipe:
        tally.send(pipe)
        assert len(pipe.command_stack) == 7  # wait bucket, count, sum; ended; run bucket, count, sum
        pipe.execute()
    counters = read_counters(redis_client)
    assert counters.ended[(queue, "finished")] == 4
    assert (counters.wait[queue].count, counters.wait[queue].buckets["0.025"]) == (3, 3)
    assert abs(counters.wait[queue].total - 0.06) < 1e-9
    run = counters.run[queue]
    assert (run.count, run.buckets["0.005"], run.total) == (3, 3, 0)
