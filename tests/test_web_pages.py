"""The pages and fragments through the TestClient: sessions, scoping, CSRF, escaping, polling, ETags."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.status import JobStatus
from tests.conftest import ROOT, Backend, Tenant, WorkerProcess, configure, make_tenant, seed_job
from tests.services import wait_until
from tests.web_support import csrf_from, sign_in

HOSTILE = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"
HTMX_SHA256 = "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"
SSE_EXT_SHA256 = "98a46496de0c3605fbffdce9167ba427bdd9553184f83f149c261891a92c0136"


@pytest.fixture
def web(app: Any, tenant: Tenant) -> Iterator[TestClient]:
    """A browser-like client signed in as ``tenant`` (an admin of its own tenant)."""
    with TestClient(app) as client:
        sign_in(client, tenant.key)
        yield client


def token(client: TestClient, path: str = "/jobs") -> str:
    return csrf_from(client.get(path).text)


def drive(job_id: str, to: JobStatus, **patch: Any) -> None:
    """Move a seeded job through the gate, as a worker would, and write it through to SQL."""
    from jobs.history.db import session_scope
    from jobs.state.lifecycle import record, write_through

    result = record(job_id, to, event=to.value, patch=patch)
    assert result.applied
    with session_scope() as session:
        write_through(result, session=session, event=to.value)


def submit(client: TestClient, task: str, **values: str) -> Any:
    form = client.get(f"/jobs/new/{task}")
    data = {"csrf_token": csrf_from(form.text), **values}
    key = re.search(r'name="idempotency_key" value="([^"]+)"', form.text)
    if key:
        data["idempotency_key"] = key.group(1)
    return client.post(f"/jobs/new/{task}", data=data, follow_redirects=False)


# --- signing in and out ---------------------------------------------------------------------------


def test_signed_out_pages_redirect_and_fragments_answer_401(app: Any):
    with TestClient(app) as client:
        page = client.get("/jobs?status=failed", follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"] == "/sign-in?next=/jobs%3Fstatus%3Dfailed"
        fragment = client.get("/jobs/table", headers={"HX-Request": "true"}, follow_redirects=False)
        assert fragment.status_code == 401
        assert fragment.headers["hx-redirect"].startswith("/sign-in?next=")
        assert client.get("/queue", follow_redirects=False).status_code == 303


def test_sign_in_sets_a_signed_http_only_cookie_without_the_key(app: Any, tenant: Tenant):
    with TestClient(app) as client:
        response = sign_in(client, tenant.key, next_path="/queue")
        assert response.headers["location"] == "/queue"
        cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("conveyor_session="))
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "path", "max-age"} <= attributes
        assert "samesite=lax" in cookie.lower()
        assert "secure" not in attributes  # plain http here; see the https test
        secret_part = tenant.key.split("_", 2)[2]  # cvk_<key id>_<secret>; the secret may hold "_"
        assert tenant.key not in cookie and secret_part not in cookie
        assert client.get("/queue").status_code == 200


def test_the_cookie_is_secure_over_https(app: Any, tenant: Tenant):
    with TestClient(app, base_url="https://testserver") as client:
        response = sign_in(client, tenant.key)
        cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("conveyor_session="))
        assert "; secure" in cookie.lower()


def test_a_wrong_key_an_expired_form_and_a_foreign_next_are_refused(app: Any, tenant: Tenant):
    with TestClient(app) as client:
        form = client.get("/sign-in")
        csrf = csrf_from(form.text)
        wrong = client.post("/sign-in", data={"api_key": "cvk_nope", "csrf_token": csrf})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        forged = client.post("/sign-in", data={"api_key": tenant.key, "csrf_token": "forged"})
        assert forged.status_code == 403
        away = client.post(
            "/sign-in",
            data={"api_key": tenant.key, "csrf_token": csrf, "next": "//evil.example/x"},
            follow_redirects=False,
        )
        assert away.status_code == 303 and away.headers["location"] == "/jobs"
    with TestClient(app) as fresh:  # no sign-in cookie: a cross-site form cannot sign anyone in
        response = fresh.post("/sign-in", data={"api_key": tenant.key, "csrf_token": csrf})
        assert response.status_code == 403
        assert "conveyor_session" not in fresh.cookies


def test_tampered_expired_and_revoked_sessions_sign_you_out(app: Any, tenant: Tenant, monkeypatch: Any):
    from jobs.access.auth import revoke_key
    from jobs.history.db import session_scope
    from web import session as web_session

    with TestClient(app) as client:
        sign_in(client, tenant.key)
        value = client.cookies["conveyor_session"]
        version, body, signature = value.split(".")
        client.cookies.set("conveyor_session", f"{version}.{body}x.{signature}")
        assert client.get("/jobs", follow_redirects=False).status_code == 303

        client.cookies.set("conveyor_session", value)
        assert client.get("/jobs", follow_redirects=False).status_code == 200
        monkeypatch.setattr(web_session.time, "time", lambda: time.time_ns() / 1e9 + 9 * 3600)
        assert client.get("/jobs", follow_redirects=False).status_code == 303
        monkeypatch.undo()

        assert client.get("/jobs", follow_redirects=False).status_code == 200
        with session_scope() as db:
            revoke_key(db, key_id=tenant.key_id)
        assert client.get("/jobs", follow_redirects=False).status_code == 303


def test_sign_out_needs_the_token_and_clears_the_cookie(web: TestClient):
    refused = web.post("/sign-out", follow_redirects=False)
    assert refused.status_code == 403
    assert web.get("/jobs", follow_redirects=False).status_code == 200
    response = web.post("/sign-out", data={"csrf_token": token(web)}, follow_redirects=False)
    assert response.status_code == 303
    assert (
        'conveyor_session=""' in response.headers["set-cookie"]
        or "max-age=0" in response.headers["set-cookie"].lower()
    )
    assert web.get("/jobs", follow_redirects=False).status_code == 303


# --- what every page carries ------------------------------------------------------------------------


@pytest.mark.parametrize("push", [False, True], ids=["polling", "pushed"])
def test_pages_carry_the_csp_and_no_inline_script_or_style(
    web: TestClient, tenant: Tenant, env: Backend, monkeypatch: pytest.MonkeyPatch, push: bool
):
    monkeypatch.setenv("CONVEYOR_WEB_PUSH", "true" if push else "false")
    configure(env.env())
    job_id = seed_job(tenant=tenant.name)
    for path in ("/jobs", "/jobs/new", "/jobs/new/long_task", f"/jobs/{job_id}", "/queue", "/analytics"):
        response = web.get(path)
        assert response.status_code == 200, (path, response.text)
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        html = response.text
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], path
        assert re.findall(r"\s(on\w+|style|hx-on[:\w-]*)=", html) == [], path
        assert '"allowEval":false' in html.replace("&#34;", '"') and "includeIndicatorStyles" in html
        assert 'hx-headers=\'{"X-CSRF-Token": "' in html
        if not push:
            assert "sse-connect" not in html and "hx-ext" not in html
        elif path in ("/jobs", f"/jobs/{job_id}"):  # a live job: its pages stream, from 'self' only
            assert re.search(r'hx-ext="sse" sse-connect="/jobs/[^"]*stream[^"]*" sse-close="end"', html), path
            assert '<script src="/static/htmx-ext-sse.min.js' in html


def test_htmx_is_the_vendored_2x_release(web: TestClient):
    response = web.get("/static/htmx.min.js")
    assert response.status_code == 200
    assert "javascript" in response.headers["content-type"]
    assert hashlib.sha256(response.content).hexdigest() == HTMX_SHA256
    assert (ROOT / "web" / "static" / "htmx.LICENSE").read_text().startswith("Zero-Clause BSD")
    assert 'version:"2.0.11"' in response.text.replace(" ", "")


def test_the_sse_extension_is_the_vendored_release(web: TestClient):
    response = web.get("/static/htmx-ext-sse.min.js")
    assert response.status_code == 200 and "javascript" in response.headers["content-type"]
    assert hashlib.sha256(response.content).hexdigest() == SSE_EXT_SHA256
    assert (ROOT / "web" / "static" / "htmx-ext-sse.LICENSE").read_text().startswith("BSD Zero Clause")


def test_pages_poll_under_lambda_and_their_streams_are_not_served(
    web: TestClient, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
):
    job_id = seed_job(tenant=tenant.name)
    assert "sse-connect" in web.get(f"/jobs/{job_id}").text  # a container: pushed
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "conveyor-api")  # what caps long polls there
    html = web.get(f"/jobs/{job_id}").text
    assert "sse-connect" not in html and 'hx-trigger="every 1s"' in html
    assert 'id="log-poller"' in html and f"/jobs/{job_id}/log?after=0" in html
    assert web.get(f"/jobs/{job_id}/stream").status_code == 404
    assert web.get("/jobs/table/stream").status_code == 404
    assert "sse-connect" not in web.get("/jobs").text


def test_a_page_stream_refuses_a_bad_resume_point(web: TestClient, tenant: Tenant):
    job_id = seed_job(tenant=tenant.name)
    assert web.get(f"/jobs/{job_id}/stream", params={"seq": -1}).status_code == 422
    for bad in ("7", "a.b", "1.99999999999999"):
        refused = web.get(f"/jobs/{job_id}/stream", headers={"Last-Event-ID": bad})
        assert refused.status_code == 422 and "Last-Event-ID" in refused.text, bad
    assert web.get(f"/jobs/{job_id}/log", params={"after": 10**12}).status_code == 422


def test_the_log_poller_appends_out_of_band_and_stops_at_the_end(web: TestClient, tenant: Tenant):
    job_id = seed_job(tenant=tenant.name)
    from jobs.clock import utcnow
    from jobs.state.job_logs import append_lines, encode_line
    from jobs.state.redis_conn import get_redis

    line = encode_line(at=utcnow(), level="INFO", logger="t", message="<b>hello</b>", attempt=1)
    append_lines(get_redis(), {job_id: [line, line]}, now=time.time())
    polled = web.get(f"/jobs/{job_id}/log", params={"after": 1}).text
    assert 'hx-swap-oob="beforeend:#log-lines"' in polled and 'data-seq="2"' in polled
    assert 'data-seq="1"' not in polled and "&lt;b&gt;hello&lt;/b&gt;" in polled
    assert f"/jobs/{job_id}/log?after=2" in polled and 'hx-trigger="every 1s"' in polled
    drive(job_id, JobStatus.STARTED)
    drive(job_id, JobStatus.FINISHED, result={"ok": True})
    done = web.get(f"/jobs/{job_id}/log", params={"after": 2}).text
    assert "hx-trigger" not in done and "hx-swap-oob" not in done


# --- scoping ----------------------------------------------------------------------------------------


def test_every_page_and_fragment_is_scoped_to_the_tenant(web: TestClient, tenant: Tenant, app: Any):
    other = make_tenant("admin")  # an admin of another tenant still sees only its own in the pages
    theirs = seed_job(tenant=other.name)
    ours = seed_job(tenant=tenant.name)
    assert ours in web.get("/jobs").text and theirs not in web.get("/jobs").text
    assert theirs not in web.get("/jobs/table").text
    for path in (
        f"/jobs/{theirs}",
        f"/jobs/{theirs}/live",
        f"/jobs/{theirs}/timeline",
        f"/jobs/{theirs}/result",
    ):
        assert web.get(path).status_code == 404, path
    csrf = token(web)
    refused = web.post(f"/jobs/{theirs}/cancel", headers={"X-CSRF-Token": csrf, "HX-Request": "true"})
    assert refused.status_code == 404
    with TestClient(app) as them:
        sign_in(them, other.key)
        assert theirs in them.get("/jobs").text and ours not in them.get("/jobs").text
        assert them.get(f"/jobs/{ours}").status_code == 404


def test_unknown_and_malformed_ids_are_404_pages(web: TestClient):
    for path in (
        "/jobs/not-a-uuid",
        "/jobs/3f0e2a8e-0000-4000-8000-000000000000/live",
        "/jobs/new/no_such_task",
    ):
        response = web.get(path)
        assert response.status_code == 404, path
        assert "text/html" in response.headers["content-type"]


# --- escaping and redaction ------------------------------------------------------------------------


def test_hostile_messages_results_and_errors_render_inert(web: TestClient, tenant: Tenant):
    from jobs.clock import utcnow

    finished = seed_job(tenant=tenant.name)
    drive(finished, JobStatus.STARTED, started_at=utcnow(), progress=50.0, message=HOSTILE)
    drive(finished, JobStatus.FINISHED, progress=100.0, result={"html": HOSTILE, HOSTILE: [HOSTILE]})
    failed = seed_job(tenant=tenant.name)
    drive(failed, JobStatus.STARTED, started_at=utcnow(), message=HOSTILE)
    drive(failed, JobStatus.FAILED, error={"type": HOSTILE, "detail": HOSTILE})
    pages = [
        web.get(p).text for p in (f"/jobs/{finished}", f"/jobs/{failed}", f"/jobs/{failed}/live", "/jobs")
    ]
    for html in pages:
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "\"'><img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0]
    assert "&lt;img src=x onerror=alert(2)&gt;" in pages[1]


def test_secrets_are_redacted_on_every_page(web: TestClient, tenant: Tenant):
    from jobs.clock import utcnow

    job_id = seed_job(tenant=tenant.name)
    drive(job_id, JobStatus.STARTED, started_at=utcnow(), message="connecting with password=hunter2")
    html = web.get(f"/jobs/{job_id}").text + web.get("/jobs").text + web.get(f"/jobs/{job_id}/live").text
    assert "hunter2" not in html and "[REDACTED]" in html
    drive(job_id, JobStatus.FINISHED, result={"token": "tok-999", "nested": {"api_key": "k-1"}})
    html = web.get(f"/jobs/{job_id}").text
    assert "tok-999" not in html and "k-1" not in html


# --- the polling fragments -------------------------------------------------------------------------


def test_the_job_fragment_polls_until_terminal_then_drops_its_trigger(web: TestClient, tenant: Tenant):
    from jobs.clock import utcnow

    job_id = seed_job(tenant=tenant.name)
    queued = web.get(f"/jobs/{job_id}/live")
    assert 'hx-trigger="every 1s"' in queued.text and f'hx-get="/jobs/{job_id}/live"' in queued.text
    assert "hx-trigger" not in queued.headers
    drive(
        job_id, JobStatus.STARTED, started_at=utcnow(), progress=42.0, message="step 21/50", eta_seconds=3.5
    )
    running = web.get(f"/jobs/{job_id}/live", headers={"HX-Request": "true"})
    assert 'role="progressbar"' in running.text and 'aria-valuenow="42"' in running.text
    assert 'aria-valuemin="0"' in running.text and 'aria-valuemax="100"' in running.text
    assert "42 %" in running.text and "step 21/50" in running.text and "3.5 s" in running.text
    drive(job_id, JobStatus.FINISHED, progress=100.0, result={"sum": 1225})
    done = web.get(f"/jobs/{job_id}/live", headers={"HX-Request": "true"})
    assert done.status_code == 200
    assert "hx-trigger=" not in done.text and "hx-get=" not in done.text.split("<form")[0]
    assert 'data-polling="no"' in done.text and "&#34;sum&#34;: 1225" in done.text
    assert done.headers["hx-trigger"] == "job-ended"
    assert 'aria-valuenow="100"' in done.text


def test_a_scheduled_job_polls_slowly(web: TestClient, tenant: Tenant):
    job_id = seed_job(tenant=tenant.name)
    drive(job_id, JobStatus.SCHEDULED)
    assert 'hx-trigger="every 5s"' in web.get(f"/jobs/{job_id}/live").text


def test_fragments_answer_304_until_something_changes(web: TestClient, tenant: Tenant):
    from jobs.clock import utcnow

    job_id = seed_job(tenant=tenant.name)
    first = web.get(f"/jobs/{job_id}/live")
    etag = first.headers["etag"]
    same = web.get(f"/jobs/{job_id}/live", headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.content == b""
    table = web.get("/jobs/table")
    table_etag = table.headers["etag"]
    assert web.get("/jobs/table", headers={"If-None-Match": table_etag}).status_code == 304
    drive(job_id, JobStatus.STARTED, started_at=utcnow(), progress=10.0)
    assert web.get(f"/jobs/{job_id}/live", headers={"If-None-Match": etag}).status_code == 200
    assert web.get("/jobs/table", headers={"If-None-Match": table_etag}).status_code == 200


def test_the_table_polls_fast_while_jobs_move_slowly_while_they_wait_and_not_at_all_after(
    web: TestClient, tenant: Tenant
):
    from jobs.clock import utcnow

    assert "hx-trigger" not in web.get("/jobs/table").text  # no jobs
    job_id = seed_job(tenant=tenant.name)
    drive(job_id, JobStatus.STARTED, started_at=utcnow(), progress=5.0)
    table = web.get("/jobs/table").text
    assert table.count("hx-trigger") == 1 and 'hx-trigger="every 1s"' in table  # one poller, not one per row
    drive(job_id, JobStatus.PAUSED)
    assert 'hx-trigger="every 5s"' in web.get("/jobs/table").text
    drive(job_id, JobStatus.CANCELED)
    assert "hx-trigger" not in web.get("/jobs/table").text
    assert 'hx-trigger="every' not in web.get("/jobs?status=canceled").text


def test_the_table_filters_and_pages(web: TestClient, tenant: Tenant):
    ids = [seed_job(tenant=tenant.name) for _ in range(27)]
    drive(ids[0], JobStatus.CANCELED)
    first = web.get("/jobs").text
    assert first.count('<tr id="row-') == 25 and ids[-1] in first and ids[0] not in first
    cursor = re.search(r'cursor=([^"&]+)">Older', first)
    assert cursor
    second = web.get(f"/jobs?cursor={cursor.group(1)}").text
    assert second.count('<tr id="row-') == 2 and ids[0] in second
    canceled = web.get("/jobs?status=canceled").text
    assert canceled.count('<tr id="row-') == 1 and ids[0] in canceled
    assert web.get("/jobs?status=bogus").status_code == 200  # an unknown status filters nothing
    assert web.get("/jobs?cursor=garbage").status_code == 422


# --- control --------------------------------------------------------------------------------------


def test_control_needs_the_csrf_token(web: TestClient, tenant: Tenant):
    job_id = seed_job(tenant=tenant.name)
    refused = web.post(f"/jobs/{job_id}/cancel", headers={"HX-Request": "true"})
    assert refused.status_code == 403
    assert web.post(f"/jobs/{job_id}/cancel", data={"csrf_token": "wrong"}).status_code == 403
    assert 'data-status="queued"' in web.get(f"/jobs/{job_id}/live").text  # nothing changed


def test_control_by_htmx_returns_the_fragment_and_by_form_redirects(web: TestClient, tenant: Tenant):
    csrf = token(web)
    job_id = seed_job(tenant=tenant.name)
    live = web.get(f"/jobs/{job_id}/live").text
    assert (
        'id="action-cancel"' in live and 'id="action-restart"' not in live and 'id="action-pause"' not in live
    )
    response = web.post(f"/jobs/{job_id}/cancel", headers={"X-CSRF-Token": csrf, "HX-Request": "true"})
    assert response.status_code == 200
    assert 'data-status="canceled"' in response.text and 'id="action-restart"' in response.text
    again = web.post(f"/jobs/{job_id}/cancel", headers={"X-CSRF-Token": csrf, "HX-Request": "true"})
    assert again.status_code == 409 and "Cannot cancel" in again.text and 'role="alert"' in again.text
    other = seed_job(tenant=tenant.name)
    plain = web.post(f"/jobs/{other}/cancel", data={"csrf_token": csrf}, follow_redirects=False)
    assert plain.status_code == 303 and plain.headers["location"] == f"/jobs/{other}"
    illegal = web.post(f"/jobs/{other}/pause", data={"csrf_token": csrf})
    assert illegal.status_code == 409 and "Cannot pause" in illegal.text
    assert web.post(f"/jobs/{other}/explode", data={"csrf_token": csrf}).status_code in (404, 405, 422)


# --- submitting -----------------------------------------------------------------------------------


def test_the_form_is_generated_from_the_payload_schema(web: TestClient):
    html = web.get("/jobs/new/long_task").text
    n = re.search(r'<input type="number" id="field-n"[^>]*>', html, re.S)
    assert n and 'min="0"' in n.group(0) and 'max="10000000"' in n.group(0) and 'value="50"' in n.group(0)
    assert 'step="1"' in n.group(0)
    delay = re.search(r'<input type="number" id="field-delay"[^>]*>', html, re.S)
    assert delay and 'step="any"' in delay.group(0) and 'value="0.02"' in delay.group(0)
    assert "How many steps to run." in html and 'aria-describedby="field-n-help field-n-hint"' in html
    echo = web.get("/jobs/new/heavy_compute").text
    assert '<textarea id="field-__payload__"' in echo
    index = web.get("/jobs/new").text
    assert 'href="/jobs/new/long_task"' in index and 'href="/jobs/new/always_fails"' in index


def test_field_errors_are_shown_next_to_their_fields(web: TestClient):
    response = submit(web, "long_task", n="many", delay="-1")
    assert response.status_code == 422
    html = response.text
    assert re.search(r'id="field-n-error">Enter a whole number.', html)
    assert re.search(r'id="field-delay-error">[^<]*greater than or equal to 0', html)
    assert 'value="many"' in html  # what was typed stays
    assert 'aria-invalid="true"' in html
    bad_json = submit(web, "heavy_compute", __payload__="{not json")
    assert bad_json.status_code == 422 and "Enter valid JSON" in bad_json.text
    not_object = submit(web, "heavy_compute", __payload__="[1, 2]")
    assert not_object.status_code == 422 and "JSON object" in not_object.text


def test_submitting_goes_to_the_job_page_once_however_often_it_is_sent(web: TestClient):
    form = web.get("/jobs/new/heavy_compute")
    data = {
        "csrf_token": csrf_from(form.text),
        "idempotency_key": re.search(r'name="idempotency_key" value="([^"]+)"', form.text).group(1),  # type: ignore[union-attr]
        "__payload__": '{"text": "naïve ✓"}',
    }
    first = web.post("/jobs/new/heavy_compute", data=data, follow_redirects=False)
    assert first.status_code == 303 and re.fullmatch(r"/jobs/[0-9a-f-]{36}", first.headers["location"])
    second = web.post("/jobs/new/heavy_compute", data=data, follow_redirects=False)
    assert second.headers["location"] == first.headers["location"]
    page = web.get(first.headers["location"])
    assert page.status_code == 200 and "naïve ✓" in page.text
    assert web.post("/jobs/new/heavy_compute", data={**data, "csrf_token": ""}).status_code == 403


def test_large_results_link_to_the_result_route(web: TestClient, worker: WorkerProcess, env: Backend):
    response = submit(web, "big_result", size="40000")
    job_id = response.headers["location"].rsplit("/", 1)[-1]
    wait_until(lambda: 'data-status="finished"' in web.get(f"/jobs/{job_id}/live").text, timeout=20)
    html = web.get(f"/jobs/{job_id}").text
    assert f'href="/jobs/{job_id}/result"' in html and "KiB" in html and "x" * 1000 not in html
    result = web.get(f"/jobs/{job_id}/result")
    assert result.status_code == 200 and result.json()["size"] == 40000


def test_queue_and_analytics_pages_show_the_tenants_numbers(web: TestClient, tenant: Tenant):
    from jobs.clock import utcnow

    job_id = seed_job(tenant=tenant.name)
    drive(job_id, JobStatus.STARTED, started_at=utcnow())
    drive(job_id, JobStatus.FAILED, error={"type": "KeyError", "detail": "'sku'"})
    queue = web.get("/queue").text
    assert "Health:" in queue and "other" in queue
    analytics = web.get("/analytics?days=1").text
    assert "KeyError" in analytics and '<svg class="chart"' in analytics and 'role="img"' in analytics
    assert web.get("/analytics?days=0").status_code == 422


# --- issue 11: the secret alone cannot mint a session ---------------------------------------------


def _forge(payload: dict[str, Any]) -> str:
    """A cookie signed with the real secret, as someone who knows only the secret could make it."""
    import base64
    import json

    from web.session import _session_signer

    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")
    return _session_signer().sign(body).decode()


def test_the_secret_and_a_key_id_alone_cannot_mint_a_session(app: Any, tenant: Tenant):
    claims = {"k": tenant.key_id, "t": tenant.name, "r": "admin", "i": int(time.time()), "s": "forged-sid"}
    with TestClient(app) as client:
        for payload in (claims, {**claims, "b": ""}, {**claims, "b": "0" * 32}):
            client.cookies.set("conveyor_session", _forge(payload))
            assert client.get("/jobs", follow_redirects=False).status_code == 303, payload


def test_a_session_dies_when_its_key_hash_changes(app: Any, tenant: Tenant):
    """A key replaced under the same id (rotation) ends the sessions the old key opened."""
    from jobs.access import auth
    from jobs.history.db import session_scope
    from jobs.history.models import ApiKey

    with TestClient(app) as client:
        sign_in(client, tenant.key)
        assert client.get("/jobs", follow_redirects=False).status_code == 200
        with session_scope() as db:
            row = db.get(ApiKey, tenant.key_id)
            assert row is not None
            row.key_hash = auth.hash_key("cvk_rotated_" + tenant.key_id)
            db.add(row)
        auth.clear_cache()
        assert client.get("/jobs", follow_redirects=False).status_code == 303


def _sign_in_cookie_via(
    env: Backend, tmp_path: Path, tenant: Tenant, trusted: str, forwarded: dict[str, str]
) -> str:
    """Sign in through a real `conveyor api` process, as a TLS proxy on 127.0.0.1 would pass it on."""
    import httpx

    from jobs.embedded import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env.env(), "CONVEYOR_TRUSTED_PROXIES": trusted},
        stdout=(tmp_path / "api.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None

        wait_until(up, timeout=30, interval=0.1, message="conveyor api to answer")
        form = httpx.get(f"{url}/sign-in", headers=forwarded)
        response = httpx.post(
            f"{url}/sign-in",
            data={"api_key": tenant.key, "csrf_token": csrf_from(form.text), "next": "/jobs"},
            cookies=dict(form.cookies.items()),  # a Secure cookie, which httpx keeps off plain http
            headers=forwarded,
        )
        assert response.status_code == 303, response.text
        return next(c for c in response.headers.get_list("set-cookie") if c.startswith("conveyor_session="))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_behind_a_trusted_tls_proxy_the_cookie_is_secure(env: Backend, tmp_path: Path, tenant: Tenant):
    https = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    trusted = _sign_in_cookie_via(env, tmp_path, tenant, "127.0.0.1", https)
    assert "; secure" in trusted.lower()
    untrusted = _sign_in_cookie_via(env, tmp_path, tenant, "10.9.9.9", https)  # anyone could send it
    assert "; secure" not in untrusted.lower()
