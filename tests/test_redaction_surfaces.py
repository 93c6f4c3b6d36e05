"""Secrets are redacted on every surface a payload reaches: Redis, SQL, events, logs, the API, pages."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.clock import utcnow
from jobs.history.records import job_record
from tests.history_fixtures import insert, job_row
from tests.history_tasks import FREE_TEXT_SECRETS
from tests.services import wait_until
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


# --- free text: secrets with no secret-looking key around them ---------------------------------

FREE = tuple(FREE_TEXT_SECRETS.values())


def assert_no_free_secret(text: str, where: str) -> None:
    for secret in (*SECRETS, *FREE):
        assert secret not in text, f"{secret!r} leaked into {where}"


def _signed_in(app: Any, tenant: Any) -> TestClient:
    from tests.web_support import sign_in

    client = TestClient(app)
    sign_in(client, tenant.key)
    return client


def test_free_text_in_results_messages_and_params_is_redacted_everywhere(
    api: TestClient, app: Any, tenant: Any, worker: Any
):
    job_id = submit(api, "chatty", {"note": "login with pwd=hunter2"})["job_id"]
    final = wait_status(api, job_id, {"finished"})
    assert final["result"] == {
        "message": "password=[REDACTED]",
        "log": ["slack [REDACTED]"],
        "ok": "passenger author",  # ordinary words are kept
    }
    row = wait_sql_status(job_id, "finished")
    assert row.result == final["result"]
    assert row.params == {"fail": False, "note": "login with pwd=[REDACTED]"}
    messages = [e.message or "" for e in sql_events(job_id)]
    assert "calling with Bearer [REDACTED] as [REDACTED]" in messages
    for path in ("", "/record", "/events", "/result"):
        assert_no_free_secret(api.get(f"/api/v1/jobs/{job_id}{path}").text, f"GET …{path}")
    assert_no_free_secret(api.get(f"/job-status/{job_id}").text, "/job-status")
    pages = _signed_in(app, tenant)
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/timeline", "/jobs"):
        page = pages.get(path)
        assert page.status_code == 200, path
        assert_no_free_secret(page.text, path)


def test_free_text_in_errors_rq_records_and_compat_status_is_redacted(api: TestClient, worker: Any):
    from rq.job import Job as RQJob

    from jobs.queues.queueing import SERIALIZER
    from jobs.state.redis_conn import get_redis

    job_id = submit(api, "chatty", {"fail": True})["job_id"]
    final = wait_status(api, job_id, {"failed"})
    assert final["error"]["detail"] == "push failed with [REDACTED] via https://bot:[REDACTED]@git.example"
    row = wait_sql_status(job_id, "failed")
    assert_no_free_secret(str(row.error_detail), "SQL error_detail")
    assert_no_free_secret(str([e.data for e in sql_events(job_id)]), "SQL event data")
    compat = api.get(f"/job-status/{job_id}").json()
    assert "push failed" in compat["exc_info"]
    assert_no_free_secret(str(compat), "/job-status")

    # RQ's own record of the failure: its job hash (exc_info) and its results.
    rq_job = RQJob.fetch(job_id, connection=get_redis(), serializer=SERIALIZER)
    text = str(rq_job.exc_info or "") + "".join(str(r.exc_string) for r in rq_job.results())
    assert "push failed" in text, "RQ should have kept the exception's text"
    assert_no_free_secret(text, "RQ's record of the job")
    assert_no_free_secret(worker.log(), "the worker's log")


def test_rq_keeps_no_secret_of_a_keyed_error(api: TestClient, worker: Any):
    from rq.job import Job as RQJob

    from jobs.queues.queueing import SERIALIZER
    from jobs.state.redis_conn import get_redis

    job_id = submit(api, "leaky", {"fail": True})["job_id"]
    wait_status(api, job_id, {"failed"})
    rq_job = wait_until(
        lambda: (j := RQJob.fetch(job_id, connection=get_redis(), serializer=SERIALIZER)).exc_info and j,
        timeout=10,
        message="RQ to record the failure",
    )
    assert "login failed" in rq_job.exc_info
    assert_clean(rq_job.exc_info, "RQ's exc_info")


def test_database_errors_never_show_statement_parameters(env: Any, tenant: Any):
    """A failing statement's error (logged by the recorder, kept when an entry is set aside)
    names the statement, not the values, which hold params, results and messages."""
    import sqlalchemy as sa

    from jobs.history.db import session_scope

    row = job_row(tenant.name, status="queued", enqueued=utcnow())
    insert([row])
    clone = job_row(tenant.name, status="queued", enqueued=utcnow())
    clone.job_id, clone.params = row.job_id, {"note": "hunter2-in-a-param"}
    with pytest.raises(sa.exc.IntegrityError) as caught, session_scope() as session:
        session.add(clone)
    assert "hunter2-in-a-param" not in str(caught.value)
    assert "parameters hidden" in str(caught.value).lower()
