"""Secrets are redacted on every surface a payload reaches: Redis, SQL, events, logs, the API, pages."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.clock import utcnow
from jobs.records import job_record
from tests.history_fixtures import insert, job_row
from tests.test_jobs_e2e import sql_events, submit, wait_sql_status, wait_status

SECRETS = ("hunter2", "tok-999", "pw-777", "sec-qz9")


def assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {where}"


def test_results_and_progress_messages(api: TestClient, worker: Any):
    job_id = submit(api, "leaky", {})["job_id"]
    final = wait_status(api, job_id, {"finished"})
    assert final["result"] == {"token": "[REDACTED]", "nested": {"client_secret": "[REDACTED]"}, "value": 42}
    row = wait_sql_status(job_id, "finished")
    assert row.result == final["result"]
    messages = [e.message or "" for e in sql_events(job_id)]
    assert "connecting with password=[REDACTED]" in messages
    for path in ("", "/record", "/events", "/result"):
        assert_clean(api.get(f"/api/v1/jobs/{job_id}{path}").text, f"GET …{path}")
    assert_clean(api.get("/api/v1/jobs").text, "the job list")


def test_errors_tracebacks_and_worker_logs(api: TestClient, worker: Any):
    job_id = submit(api, "leaky", {"fail": True})["job_id"]
    final = wait_status(api, job_id, {"failed"})
    detail = final["error"]["detail"]
    assert detail == "login failed: password=[REDACTED] token=[REDACTED] at postgresql://u:[REDACTED]@db/x"
    row = wait_sql_status(job_id, "failed")
    assert row.error_detail == detail
    failed = next(e for e in sql_events(job_id) if e.event == "failed")
    assert "Traceback" in failed.data["traceback"]
    assert_clean(str(failed.data), "the failed event")
    assert_clean(api.get(f"/api/v1/jobs/{job_id}/events").text, "GET /events")
    analytics = api.get("/api/v1/analytics/summary").json()
    assert any("login failed" in e["example_detail"] for e in analytics["top_errors"])
    assert_clean(str(analytics["top_errors"]), "analytics top errors")
    log = worker.log()
    assert "login failed" in log, "the worker should have logged the failure"
    assert_clean(log, "the worker's log")
    trace_id = api.get(f"/api/v1/jobs/{job_id}/record").json()["trace_id"]
    assert f"[trace {trace_id}]" in log, "the worker's lines about the job should carry its trace id"


def test_rendering_redacts_with_the_current_list(api: TestClient, tenant: Any, monkeypatch: Any):
    """A key added to CONVEYOR_REDACT_KEYS later also hides what was stored before (API and pages)."""
    from jobs.settings import get_settings

    row = job_row(tenant.name, status="failed", ended=utcnow(), run_ms=1, wait_ms=1)
    row.params = {"customer_ssn": "078-05-1120", "n": 1}
    row.error_type, row.error_detail = "ValueError", "bad customer_ssn=078-05-1120"
    insert([row])
    monkeypatch.setenv("CONVEYOR_REDACT_KEYS", '["password", "ssn"]')
    get_settings.cache_clear()
    try:
        record = api.get(f"/api/v1/jobs/{row.job_id}/record").json()
        assert record["params"] == {"customer_ssn": "[REDACTED]", "n": 1}
        assert record["error"]["detail"] == "bad customer_ssn=[REDACTED]"
        page_view = job_record(row)  # what the pages render
        assert page_view.params["customer_ssn"] == "[REDACTED]"
        assert "078-05-1120" not in page_view.model_dump_json()
    finally:
        monkeypatch.delenv("CONVEYOR_REDACT_KEYS")
        get_settings.cache_clear()


def test_api_process_logs_are_redacted(app: Any, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING):
        logging.getLogger("conveyor.test").warning("retrying with %s", "api_key=sk-live-123")
        try:
            raise RuntimeError("password=hunter2")
        except RuntimeError:
            logging.getLogger("conveyor.test").exception("boom")
    assert "sk-live-123" not in caplog.text and "api_key=[REDACTED]" in caplog.text
    assert "hunter2" not in caplog.text and "password=[REDACTED]" in caplog.text
