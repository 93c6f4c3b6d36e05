"""The pages end to end in real headless Chromium (Debian's `chromium`, driven by Playwright).

Against a real uvicorn and a real worker: sign in, submit `long_task` from its
generated form, watch the bar move to 100 % and the result appear without a
reload, count the fragment requests to see polling stop once the job ended,
cancel a running job from the keyboard, read a failed job's error (whose
text is markup that must stay inert), and save a screenshot of every page
(tests/artifacts/screenshots/; the key ones are committed under
docs/screenshots/).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IN_CI, ROOT, Backend, ServerProcess, Tenant, WorkerProcess, make_tenant

CHROMIUM = os.environ.get("CONVEYOR_TEST_CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / "tests" / "artifacts" / "screenshots"
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)> \" onmouseover=\"alert(2)"


def _chromium_or_skip() -> None:
    problem = None
    if not Path(CHROMIUM).exists():
        problem = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is not installed (pip install -e '.[dev]')"
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {problem}: the browser tests must run in CI", pytrace=False)
    pytest.skip(f"!!! SKIPPING THE BROWSER TESTS: {problem} !!!")


@pytest.fixture(scope="module")
def polling_server(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose pages poll, as under AWS Lambda (CONVEYOR_WEB_PUSH=false): the polling these
    tests count (tests/test_web_push.py has the pushed pages)."""
    log_path = tmp_path_factory.mktemp("polling-server") / "server.log"
    server = ServerProcess(backend, log_path, {"CONVEYOR_WEB_PUSH": "false"}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


class PageWatch:
    """What a page did that a test must see: dialogs (script ran), CSP refusals and errors, requests."""

    def __init__(self, page: Any) -> None:
        self.dialogs: list[str] = []
        self.problems: list[str] = []
        self.requests: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("console", self._console)
        page.on("request", lambda request: self.requests.append(request.url))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, message: Any) -> None:
        # CSP refusals and script errors; not the deliberate 401/409/422 answers the browser logs.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console: {message.text}")

    def count(self, pattern: str) -> int:
        return sum(1 for url in self.requests if re.search(pattern, url))


def shoot(page: Any, name: str, backend: Backend) -> None:
    if backend.name == "sqlite":  # one set is enough
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def wait_for_status(page: Any, statuses: set[str], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = page.get_attribute("#job-live", "data-status")
        if status in statuses:
            return status
        page.wait_for_timeout(100)
    raise AssertionError(
        f"job never reached {statuses}; it is {page.get_attribute('#job-live', 'data-status')}"
    )


def submit_from_form(page: Any, server: ServerProcess, task: str, values: dict[str, str]) -> str:
    page.goto(f"{server.url}/jobs/new")
    page.click(f"a[href='/jobs/new/{task}']")
    for name, value in values.items():
        page.fill(f"#field-{name}", value)
    page.click("form.payload button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[-1]


def test_sign_in_submit_watch_cancel_and_fail(
    browser: Any, polling_server: ServerProcess, worker: WorkerProcess, backend: Backend
):
    live_server = polling_server
    tenant: Tenant = make_tenant("member")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    watch = PageWatch(page)

    # Signed out, a page sends you to the form, and back after signing in.
    page.goto(f"{live_server.url}/jobs")
    assert "/sign-in" in page.url
    shoot(page, "sign-in", backend)
    page.fill("#api_key", "cvk_wrong_key")
    page.click("button[type=submit]")
    assert "not valid" in page.inner_text("[role=alert]")
    page.fill("#api_key", tenant.key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/jobs")
    assert tenant.name in page.inner_text("header")
    assert page.evaluate("htmx.version").startswith("2.")

    # Submit long_task from the generated form; watch the bar move without a reload.
    page.goto(f"{live_server.url}/jobs/new/long_task")
    assert page.get_attribute("#field-n", "max") == "10000000"
    shoot(page, "submit-form", backend)
    job_id = submit_from_form(page, live_server, "long_task", {"n": "40", "delay": "0.1"})
    page.evaluate("window.__sameDocument = true")
    seen: set[int] = set()
    shot = False
    deadline = time.monotonic() + 30
    while page.get_attribute("#job-live", "data-status") != "finished" and time.monotonic() < deadline:
        value = page.get_attribute("#job-live [role=progressbar]", "aria-valuenow")
        if value is not None:
            seen.add(int(value))
        if not shot and 30 <= max(seen, default=0) < 70:
            shoot(page, "job-running", backend)
            shot = True
        page.wait_for_timeout(100)
    assert page.get_attribute("#job-live", "data-status") == "finished"
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
    assert len([v for v in seen if 0 < v < 100]) >= 2, f"the bar did not move: {sorted(seen)}"
    assert page.get_attribute("#job-live [role=progressbar]", "aria-valuenow") == "100"
    assert page.inner_text("#job-percent") == "100 %"
    assert '"sum": 780' in page.inner_text("#job-result")
    page.wait_for_selector("#timeline >> text=finished")  # reloaded once the job ended

    # Polling stopped: the fragment came back without its trigger, and no request follows.
    assert page.get_attribute("#job-live", "hx-trigger") is None
    polled = watch.count(rf"/jobs/{job_id}/live")
    assert polled >= 2
    page.wait_for_timeout(2500)
    assert watch.count(rf"/jobs/{job_id}/live") == polled, "the job page kept polling after the end"
    shoot(page, "job-finished", backend)

    # Cancel a running job from the keyboard.
    running_id = submit_from_form(page, live_server, "long_task", {"n": "400", "delay": "0.05"})
    wait_for_status(page, {"started"})
    page.focus("#action-cancel")
    page.keyboard.press("Enter")
    assert wait_for_status(page, {"canceled"}) == "canceled"
    assert page.is_visible("#action-restart") and not page.is_visible("#action-cancel")
    shoot(page, "job-canceled", backend)

    # A failed job shows its error in red, and markup in it stays text.
    failed_id = submit_from_form(page, live_server, "always_fails", {"message": HOSTILE})
    wait_for_status(page, {"failed"})
    assert page.inner_text("#job-error .error-type") == "ValueError"
    assert HOSTILE in page.inner_text("#job-error .error-detail")
    assert page.locator("#job-error img").count() == 0
    shoot(page, "job-failed", backend)

    # The jobs table: every job, newest first, one poller at most.
    page.goto(f"{live_server.url}/jobs")
    rows = page.locator("table.jobs tbody tr")
    ids = [rows.nth(i).get_attribute("id") for i in range(rows.count())]
    assert ids[:3] == [f"row-{failed_id}", f"row-{running_id}", f"row-{job_id}"]
    assert page.locator("[hx-trigger]").count() == 0  # nothing live: nothing polls
    shoot(page, "jobs", backend)

    for name in ("queue", "analytics"):
        page.goto(f"{live_server.url}/{name}")
        assert page.locator("main h1").inner_text().lower() == name
        shoot(page, name, backend)
    assert page.locator("svg.chart rect.finished").count() >= 1

    # Phone width: the job page and the table still read.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, storage_state=context.storage_state())
    small = phone.new_page()
    small.goto(f"{live_server.url}/jobs/{job_id}")
    assert small.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    shoot(small, "phone-job", backend)
    small.goto(f"{live_server.url}/jobs")
    shoot(small, "phone-jobs", backend)
    phone.close()

    # Sign out: the cookie is gone and pages send you to the form again.
    page.click("header .who button")
    page.wait_for_url(re.compile(r"/sign-in"))
    page.goto(f"{live_server.url}/jobs")
    assert "/sign-in" in page.url

    assert watch.dialogs == [], f"script from job data ran: {watch.dialogs}"
    assert watch.problems == [], watch.problems
    context.close()


def test_the_jobs_table_polls_while_a_job_runs_and_stops_after(
    browser: Any, polling_server: ServerProcess, worker: WorkerProcess
):
    live_server = polling_server
    tenant = make_tenant("member")
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    watch = PageWatch(page)
    page.goto(f"{live_server.url}/sign-in")
    page.fill("#api_key", tenant.key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/jobs")
    created = httpx.post(
        f"{live_server.url}/api/v1/jobs",
        json={"task": "long_task", "payload": {"n": 30, "delay": 0.05}},
        headers=tenant.headers,
    )
    assert created.status_code == 201
    page.goto(f"{live_server.url}/jobs")
    assert page.get_attribute("#jobs-table", "hx-trigger") == "every 1s"
    page.wait_for_selector("#jobs-table[data-polling=no]", timeout=30_000)
    assert page.locator("#jobs-table .badge").first.inner_text() == "finished"
    polled = watch.count(r"/jobs/table")
    assert polled >= 1
    page.wait_for_timeout(2500)
    assert watch.count(r"/jobs/table") == polled
    assert watch.problems == [], watch.problems
    context.close()


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".opblock"), ("/redoc", "h1")])
def test_the_api_docs_render_offline_under_their_csp(
    browser: Any, live_server: ServerProcess, backend: Backend, path: str, rendered: str
):
    """Swagger UI and ReDoc draw the API from the package's own assets, refused nothing by the CSP."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = PageWatch(page)
    page.goto(f"{live_server.url}{path}")
    page.wait_for_selector(rendered, timeout=20_000)
    assert "/api/v1/jobs" in page.inner_text("body")
    # ReDoc's attribution image points at its CDN: the policy refuses it (nothing leaves the browser).
    attribution = "cdn.redoc.ly/redoc/logo-mini"
    assert [p for p in watch.problems if attribution not in p] == []
    local = (live_server.url, f"blob:{live_server.url}", "data:")  # ReDoc's search worker is a blob
    assert [url for url in watch.requests if not url.startswith(local) and attribution not in url] == []
    shoot(page, f"api{path.replace('/', '-')}", backend)
    context.close()
