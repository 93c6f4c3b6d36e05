"""Pages pushed over SSE (issue 14) in real headless Chromium, against a real uvicorn and worker.

A running job's page moves (bar, message, timeline, log) with one stream and no polling
request; its log panel follows the newest line; a page whose stream cannot be had polls
instead, and goes back to the stream by itself; the jobs table moves over its own stream.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import test_web_browser
from tests.conftest import FAST_ENV, Backend, ServerProcess, Tenant, WorkerProcess, make_tenant
from tests.test_web_browser import PageWatch, shoot

browser = test_web_browser.browser  # the fixture: one headless Chromium for the module

QUEUE = "logs"


@pytest.fixture(scope="module")
def push_worker(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    name = f"push-{uuid.uuid4().hex[:6]}"
    log_path = tmp_path_factory.mktemp("push-worker") / "worker.log"
    proc = WorkerProcess(backend, log_path, name, FAST_ENV, queues=QUEUE, args=("--concurrency", "2")).start()
    yield proc
    proc.stop()


def signed_in(browser: Any, server: ServerProcess) -> tuple[Any, Any, PageWatch, Tenant]:
    tenant = make_tenant("member")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    watch = PageWatch(page)
    page.goto(f"{server.url}/sign-in")
    page.fill("#api_key", tenant.key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs")
    return context, page, watch, tenant


def submit(server: ServerProcess, tenant: Tenant, payload: dict[str, Any]) -> str:
    response = httpx.post(
        f"{server.url}/api/v1/jobs",
        json={"task": "log_lines", "payload": payload, "queue": QUEUE},
        headers=tenant.headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


def wait_js(page: Any, expression: str, timeout: float = 15) -> None:
    """Wait until ``expression`` is true in the page (Playwright's wait_for_function evaluates
    strings with eval, which the pages' CSP refuses; evaluate itself is not subject to it)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"never true: {expression}")
        page.wait_for_timeout(50)


def status_of(page: Any) -> str | None:
    value: str | None = page.get_attribute("#job-live", "data-status")
    return value


def test_a_running_jobs_page_moves_over_one_stream_without_polling(
    browser: Any, live_server: ServerProcess, push_worker: WorkerProcess, backend: Backend
):
    context, page, watch, tenant = signed_in(browser, live_server)
    job_id = submit(live_server, tenant, {"lines": 60, "step": 0.08, "tag": "pushed"})
    page.goto(f"{live_server.url}/jobs/{job_id}")
    assert page.get_attribute("#job-stream", "sse-connect", timeout=5000).startswith(f"/jobs/{job_id}/stream")
    seen: set[int] = set()
    messages: set[str] = set()
    started_in_timeline = False
    shot = False
    deadline = time.monotonic() + 40
    while status_of(page) != "finished" and time.monotonic() < deadline:
        value = page.get_attribute("#job-live [role=progressbar]", "aria-valuenow")
        if value is not None:
            seen.add(int(value))
        if page.locator("#job-message").count():
            messages.add(page.inner_text("#job-message"))
        if status_of(page) == "started" and page.locator("#timeline >> text=started").count():
            started_in_timeline = True
        if not shot and 40 <= max(seen, default=0) < 80:
            shoot(page, "job-log", backend)
            shot = True
        page.wait_for_timeout(50)
    assert status_of(page) == "finished"
    assert len([v for v in seen if 0 < v < 100]) >= 5, f"the bar did not move: {sorted(seen)}"
    assert len(messages) >= 5, messages
    assert started_in_timeline, "the timeline did not show the start while the job ran"
    page.wait_for_selector("#timeline >> text=finished")
    wait_js(page, "document.querySelectorAll('#log-lines li').length === 60")
    texts = page.locator("#log-lines li .text").all_inner_texts()
    assert texts == [f"pushed line {i}" + (" password=[REDACTED]" if i % 100 == 0 else "") for i in range(60)]
    page.wait_for_selector("#job-stream[data-live=ended]")  # the stream closed on its `end` event
    page.wait_for_timeout(1000)
    assert watch.count(rf"/jobs/{job_id}/stream") == 1, watch.requests
    assert watch.count(rf"/jobs/{job_id}/(live|log|timeline)") == 0, "the page polled while streaming"
    assert watch.problems == [], watch.problems
    context.close()


def test_the_log_panel_follows_its_newest_line(
    browser: Any, live_server: ServerProcess, push_worker: WorkerProcess
):
    context, page, _, tenant = signed_in(browser, live_server)
    job_id = submit(live_server, tenant, {"lines": 120, "step": 0.03, "tag": "follow"})
    page.goto(f"{live_server.url}/jobs/{job_id}")
    wait_js(page, "document.querySelectorAll('#log-lines li').length > 40")
    at_bottom = (
        "(l => l.scrollHeight > l.clientHeight && l.scrollTop + l.clientHeight >= l.scrollHeight - 10)"
    )
    assert page.evaluate(f"{at_bottom}(document.getElementById('log-lines'))"), "the panel did not follow"
    wait_js(page, "document.querySelectorAll('#log-lines li').length === 120", timeout=30)
    assert page.evaluate(f"{at_bottom}(document.getElementById('log-lines'))")
    context.close()


def test_a_page_whose_stream_is_cut_polls_then_goes_back_to_the_stream(
    browser: Any, live_server: ServerProcess, push_worker: WorkerProcess
):
    context, page, watch, tenant = signed_in(browser, live_server)
    job_id = submit(live_server, tenant, {"lines": 200, "step": 0.05, "tag": "cut"})
    page.route("**/stream*", lambda route: route.abort())  # no stream can be had
    page.goto(f"{live_server.url}/jobs/{job_id}")
    page.wait_for_selector("#job-stream[data-live=polling]")
    wait_js(page, "document.querySelectorAll('#log-lines li').length > 10")  # lines by polling
    assert watch.count(rf"/jobs/{job_id}/live") >= 1 and watch.count(rf"/jobs/{job_id}/log") >= 1
    moved_from = page.get_attribute("#job-live [role=progressbar]", "aria-valuenow")
    wait_js(
        page,
        f"(document.querySelector('#job-live [role=progressbar]').getAttribute('aria-valuenow') || '0') "
        f"!== '{moved_from}'",
    )
    page.unroute("**/stream*")  # the stream is back: the page takes it up by itself
    page.wait_for_selector("#job-stream[data-live=push]", timeout=20_000)
    assert status_of(page) == "started", "the job ended before the test could see the stream back"
    page.wait_for_timeout(1200)  # a poll in flight when the stream came back may still land
    polled = watch.count(rf"/jobs/{job_id}/(live|log)")
    page.wait_for_timeout(2000)
    assert watch.count(rf"/jobs/{job_id}/(live|log)") == polled, "the page kept polling with its stream back"
    wait_js(page, "document.querySelectorAll('#log-lines li').length === 200", timeout=30)
    seqs = page.eval_on_selector_all("#log-lines li", "items => items.map(li => Number(li.dataset.seq))")
    assert seqs == list(range(1, 201)), "lines were lost or shown twice across the switch"
    # htmx logs each refused connection (its sseError event) to the console: nothing else may show.
    assert [p for p in watch.problems if p != "console: [object Event]"] == [], watch.problems
    context.close()


def test_the_jobs_table_moves_over_one_stream(
    browser: Any, live_server: ServerProcess, push_worker: WorkerProcess
):
    context, page, watch, tenant = signed_in(browser, live_server)
    job_id = submit(live_server, tenant, {"lines": 40, "step": 0.05})
    page.goto(f"{live_server.url}/jobs")
    assert page.get_attribute("#table-stream", "sse-connect") == "/jobs/table/stream"
    page.wait_for_selector(f"#row-{job_id} .badge.status-finished", timeout=30_000)
    assert watch.count(r"/jobs/table/stream") == 1, [r for r in watch.requests if "table" in r]
    assert watch.count(r"/jobs/table(\?|$)") == 0, "the table polled while streaming"
    page.wait_for_selector("#table-stream[data-live=ended]")
    context.close()
