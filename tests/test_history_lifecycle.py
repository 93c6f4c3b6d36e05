"""Every job's lifecycle in SQL: rows and events for success, failure, retry and cancel,
with monotonic timestamps and wait/run derived from them; large results by reference."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient

from jobs.history.db import session_scope
from jobs.history.models import Job, JobEvent, JobResult
from jobs.history.recorder import Recorder
from jobs.state.lifecycle import record
from jobs.state.live import job_key
from jobs.state.results import blob_key
from jobs.status import JobStatus
from tests.conftest import Backend, seed_job
from tests.services import wait_until
from tests.test_jobs_e2e import sql_events, submit, wait_sql_status, wait_status

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def ms(a: datetime | None, b: datetime | None) -> int:
    assert a is not None and b is not None
    return max(0, round((b - a).total_seconds() * 1000))


def assert_monotonic(row: Job, events: list[JobEvent]) -> None:
    assert row.enqueued_at is not None
    assert row.created_at <= row.enqueued_at
    if row.started_at is not None:
        assert row.enqueued_at <= row.started_at
        assert row.wait_ms == ms(row.enqueued_at, row.started_at)
    if row.ended_at is not None:
        assert (row.started_at or row.enqueued_at) <= row.ended_at <= row.updated_at
        if row.started_at is not None:
            assert row.run_ms == ms(row.started_at, row.ended_at)
    times = [e.created_at for e in events]
    assert times == sorted(times), "event times go backwards"
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    assert events[-1].seq == row.seq


def test_success_row_events_trace_and_tags(api: TestClient, worker: Any):
    response = api.post(
        "/api/v1/jobs",
        json={"task": "long_task", "payload": {"n": 5, "delay": 0.01}, "tags": ["nightly", "team:data"]},
        headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
    )
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    wait_status(api, job_id, {"finished"})
    row = wait_sql_status(job_id, "finished")
    events = sql_events(job_id)
    assert [e.event for e in events][:2] == ["queued", "started"] and events[-1].event == "finished"
    assert_monotonic(row, events)
    assert row.finished_at == row.ended_at and row.failed_at is None and row.canceled_at is None
    assert row.trace_id == TRACE and row.tags == ["nightly", "team:data"]

    record = api.get(f"/api/v1/jobs/{job_id}/record").json()
    assert record["retries"] == 0 and record["attempt"] == 1
    assert record["run_ms"] == row.run_ms and record["wait_ms"] == row.wait_ms
    assert record["params"] == {"n": 5, "delay": 0.01}
    assert record["result"] == {"sum": 10, "n": 5}
    assert record["trace_id"] == TRACE
    listed = api.get("/api/v1/jobs", params={"trace_id": TRACE}).json()["items"]
    assert [j["job_id"] for j in listed] == [job_id]
    tagged = api.get("/api/v1/jobs", params={"tag": "team:data"}).json()["items"]
    assert [j["job_id"] for j in tagged] == [job_id]
    assert api.get("/api/v1/jobs", params={"tag": "nope"}).json()["items"] == []


def test_trace_id_from_x_trace_id_or_generated(api: TestClient):
    given = api.post(
        "/api/v1/jobs", json={"task": "long_task", "queue": "other"}, headers={"X-Trace-Id": "req-42"}
    ).json()["job_id"]
    made = api.post("/api/v1/jobs", json={"task": "long_task", "queue": "other"}).json()["job_id"]
    assert api.get(f"/api/v1/jobs/{given}/record").json()["trace_id"] == "req-42"
    generated = api.get(f"/api/v1/jobs/{made}/record").json()["trace_id"]
    assert len(generated) == 32 and int(generated, 16) >= 0


def test_failure_row_events_and_signature(api: TestClient, worker: Any):
    job_id = submit(api, "always_fails", {"message": "disk 7 on fire at '/var/x'"})["job_id"]
    wait_status(api, job_id, {"failed"})
    row = wait_sql_status(job_id, "failed")
    events = sql_events(job_id)
    assert [e.event for e in events] == ["queued", "started", "failed"]
    assert_monotonic(row, events)
    assert row.failed_at == row.ended_at and row.finished_at is None
    assert row.error_signature == "ValueError: disk <n> on fire at '<s>'"


def test_retry_keeps_every_attempt(api: TestClient, worker: Any):
    job_id = submit(api, "fails_with_retries", {"order": 77})["job_id"]
    final = wait_status(api, job_id, {"failed"}, timeout=30)
    assert final["attempt"] == 3
    row = wait_sql_status(job_id, "failed")
    events = sql_events(job_id)
    lifecycle = [(e.event, e.attempt) for e in events if e.event != "progress"]
    assert lifecycle == [
        ("queued", 1),
        ("started", 1),
        ("retry", 2),
        ("started", 2),
        ("retry", 3),
        ("started", 3),
        ("failed", 3),
    ]
    assert all(e.data and e.data["error"]["type"] == "ValueError" for e in events if e.event == "retry")
    assert_monotonic(row, events)
    assert row.attempt == 3 and row.max_retries == 2
    record = api.get(f"/api/v1/jobs/{job_id}/record").json()
    assert record["retries"] == 2
    assert record["error_signature"] == "ValueError: attempt failed for order <n>"


def test_cancel_row_and_events(env: Backend, redis_client: Any):
    job_id = seed_job()
    result = record(job_id, JobStatus.CANCELED, event="canceled", data={"canceled_by": "key-1"})
    assert result.applied
    Recorder(redis_client, consumer="test-cancel").drain()
    with session_scope() as session:
        row = session.get(Job, job_id)
        assert row is not None
        events = list(session.exec(JobEvent.__table__.select().where(JobEvent.job_id == job_id)).all())
    assert row.status == "canceled" and row.canceled_by == "key-1"
    assert row.canceled_at == row.ended_at and row.ended_at is not None
    assert row.started_at is None and row.wait_ms is None and row.run_ms is None
    assert [e.event for e in events] == ["queued", "canceled"]


def test_terminal_snapshots_expire_and_live_ones_do_not(env: Backend, redis_client: Any):
    from jobs.settings import get_settings

    live = seed_job()
    ended = seed_job()
    record(ended, JobStatus.CANCELED, event="canceled")
    assert redis_client.ttl(job_key(live)) == -1
    ttl = redis_client.ttl(job_key(ended))
    assert get_settings().snapshot_ttl - 5 <= ttl <= get_settings().snapshot_ttl


def test_large_result_is_stored_by_reference(api: TestClient, worker: Any, redis_client: Any):
    job_id = submit(api, "big_result", {"size": 200_000})["job_id"]
    final = wait_status(api, job_id, {"finished"})
    assert final["result"] is None
    ref = final["result_ref"]
    assert ref["url"] == f"/api/v1/jobs/{job_id}/result" and ref["size_bytes"] > 200_000
    body = api.get(ref["url"])
    assert body.status_code == 200 and body.json() == {"blob": "x" * 200_000, "size": 200_000}
    assert len(body.content) == ref["size_bytes"]

    row = wait_sql_status(job_id, "finished")
    assert row.result is None and row.result_ref == ref
    with session_scope() as session:
        stored = session.get(JobResult, job_id)
        assert (
            stored is not None and stored.size_bytes == ref["size_bytes"] and stored.sha256 == ref["sha256"]
        )
    wait_until(lambda: not redis_client.exists(blob_key(job_id, 1)), message="the Redis copy to be dropped")
    # Once Redis forgets the job, SQL serves the snapshot and the result.
    redis_client.delete(job_key(job_id))
    assert api.get(f"/api/v1/jobs/{job_id}").json()["result_ref"] == ref
    assert api.get(ref["url"]).json()["size"] == 200_000
    assert api.get(f"/api/v1/jobs/{job_id}/record").json()["result_ref"] == ref


def test_small_results_stay_inline_and_result_endpoint_errors(api: TestClient, worker: Any):
    job_id = submit(api, "big_result", {"size": 10})["job_id"]
    final = wait_status(api, job_id, {"finished"})
    assert final["result"] == {"blob": "x" * 10, "size": 10} and final["result_ref"] is None
    assert api.get(f"/api/v1/jobs/{job_id}/result").json() == final["result"]

    waiting = submit(api, "long_task", {"n": 1}, queue="other")["job_id"]
    not_yet = api.get(f"/api/v1/jobs/{waiting}/result")
    assert not_yet.status_code == 409 and "queued" in not_yet.json()["detail"]
    assert api.get("/api/v1/jobs/3f0e2a8e-0000-4000-8000-000000000000/result").status_code == 404


def test_a_result_over_the_hard_limit_is_refused(env: Backend, redis_client: Any, monkeypatch: Any):
    import pytest

    from jobs.settings import get_settings
    from jobs.state.results import ResultTooLarge, result_patch

    monkeypatch.setenv("CONVEYOR_RESULT_MAX_BYTES", "2048")
    monkeypatch.setenv("CONVEYOR_RESULT_INLINE_MAX_BYTES", "1024")
    get_settings.cache_clear()
    try:
        with pytest.raises(ResultTooLarge, match="CONVEYOR_RESULT_MAX_BYTES"):
            result_patch("j", 1, {"blob": "x" * 5000}, redis_client)
        assert result_patch("j", 1, {"a": 1}, redis_client) == {"result": {"a": 1}, "result_ref": None}
        # A stashed result waits in Redis with a TTL: the safety net if no recorder ever moves it.
        stashed = result_patch("j", 1, {"blob": "y" * 1500}, redis_client)
        assert stashed["result"] is None and stashed["result_ref"]["size_bytes"] > 1500
        ttl = redis_client.ttl(blob_key("j", 1))
        assert get_settings().result_blob_ttl - 5 <= ttl <= get_settings().result_blob_ttl
    finally:
        monkeypatch.delenv("CONVEYOR_RESULT_MAX_BYTES")
        monkeypatch.delenv("CONVEYOR_RESULT_INLINE_MAX_BYTES")
        redis_client.delete(blob_key("j", 1))
        get_settings.cache_clear()
