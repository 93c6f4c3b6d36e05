"""The batch pages: in real headless Chromium (submit a JSON Lines file, watch one bar reach 100 %,
see polling stop, page through the jobs, cancel from the page), and tenancy without a browser."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import Backend, ServerProcess, Tenant, WorkerProcess, make_tenant
from tests.test_web_browser import ARGS, CHROMIUM, PageWatch, _chromium_or_skip, shoot
from tests.web_support import sign_in


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield launched
        launched.close()


def signed_in_page(chromium: Any, server: ServerProcess, tenant: Tenant) -> tuple[Any, Any, PageWatch]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    watch = PageWatch(page)
    page.goto(f"{server.url}/sign-in")
    page.fill("#api_key", tenant.key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs")
    return context, page, watch


def test_submit_a_batch_from_a_file_and_watch_its_one_bar(
    chromium: Any, live_server: ServerProcess, worker: WorkerProcess, backend: Backend, tmp_path: Path
):
    tenant = make_tenant("member")
    context, page, watch = signed_in_page(chromium, live_server, tenant)
    lines = "\n".join('{"task": "long_task", "payload": {"n": 4, "delay": 0.03}}' for _ in range(30))
    path = tmp_path / "jobs.jsonl"
    path.write_text(lines + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "long_task", "payload": {}}\n{"task": "long_task", "payload": {"n": "x"}}\n')

    page.goto(f"{live_server.url}/batches/new")
    page.set_input_files("#jobs-file", str(bad))
    page.click("#batch-submit")
    assert "jobs[1].payload.n" in page.inner_text("#batch-error")
    assert httpx.get(f"{live_server.url}/api/v1/batches", headers=tenant.headers).json()["items"] == []

    page.set_input_files("#jobs-file", str(path))
    page.fill("#batch-name", "thirty")
    shoot(page, "batch-new", backend)
    page.click("#batch-submit")
    page.wait_for_url(re.compile(r"/batches/[0-9a-f-]{36}$"))
    batch_id = page.url.rsplit("/", 1)[-1]
    assert "thirty" in page.inner_text("h1")
    page.evaluate("window.__sameDocument = true")
    seen: set[int] = set()
    shot = False
    deadline = time.monotonic() + 60
    while page.get_attribute("#batch-live", "data-status") != "finished" and time.monotonic() < deadline:
        value = page.get_attribute("#batch-live [role=progressbar]", "aria-valuenow")
        if value is not None:
            seen.add(int(value))
        if not shot and 20 <= max(seen, default=0) < 80:
            shoot(page, "batch-running", backend)
            shot = True
        page.wait_for_timeout(100)
    assert page.get_attribute("#batch-live", "data-status") == "finished"
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
    assert len([v for v in seen if 0 < v < 100]) >= 2, f"the bar did not move: {sorted(seen)}"
    assert page.locator("#batch-live [role=progressbar]").count() == 1, "one bar for the batch"
    assert page.inner_text("#batch-percent") == "100 %"
    assert page.inner_text("#batch-counts dd[data-status=finished]") == "30"
    assert page.get_attribute("#batch-live", "hx-trigger") is None
    polled = watch.count(rf"/batches/{batch_id}/live")
    page.wait_for_timeout(2500)
    assert watch.count(rf"/batches/{batch_id}/live") == polled, "the batch page kept polling after the end"
    shoot(page, "batch-finished", backend)

    # The jobs table pages through the batch: 25, then 5.
    assert page.locator("#batch-jobs tbody tr").count() == 25
    page.click("#batch-jobs-next")
    page.wait_for_url(re.compile(r"cursor="))
    assert page.locator("#batch-jobs tbody tr").count() == 5

    # The jobs list shows the batch.
    page.goto(f"{live_server.url}/jobs")
    assert page.locator(f"#recent-batches #batch-row-{batch_id}").count() == 1
    shoot(page, "jobs-with-batches", backend)
    assert watch.dialogs == [] and watch.problems == [], watch.problems
    context.close()


def test_cancel_a_batch_from_its_page(chromium: Any, live_server: ServerProcess, worker: WorkerProcess):
    tenant = make_tenant("member")
    context, page, watch = signed_in_page(chromium, live_server, tenant)
    jobs = [{"task": "long_task", "payload": {"n": 40, "delay": 0.05}}] * 5
    created = httpx.post(f"{live_server.url}/api/v1/batches", json={"jobs": jobs}, headers=tenant.headers)
    batch_id = created.json()["batch_id"]
    page.goto(f"{live_server.url}/batches/{batch_id}")
    page.focus("#batch-cancel")
    page.keyboard.press("Enter")
    page.wait_for_selector("#batch-live[data-status=canceled]", timeout=30_000)
    assert page.is_visible("#batch-restart") and not page.is_visible("#batch-cancel")
    assert watch.problems == [], watch.problems
    context.close()


def test_batch_pages_keep_to_the_signed_in_tenant(app: Any, api: TestClient, tenant: Tenant):
    batch_id = api.post(
        "/api/v1/batches", json={"jobs": [{"task": "long_task", "payload": {"n": 0}}]}
    ).json()["batch_id"]
    other = make_tenant("admin")
    with TestClient(app) as client:
        sign_in(client, other.key)
        assert client.get(f"/batches/{batch_id}").status_code == 404
        assert client.get(f"/batches/{batch_id}/live").status_code == 404
        assert batch_id not in client.get("/batches").text
        assert batch_id not in client.get("/jobs").text
    with TestClient(app) as client:
        sign_in(client, tenant.key)
        assert client.get(f"/batches/{batch_id}").status_code == 200
        assert batch_id in client.get("/batches").text
