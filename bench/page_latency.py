"""How soon a job page shows a `progress.update`: pushed over SSE versus polled, in headless Chromium.

One stack (embedded Redis, SQLite, a worker) and two servers: one whose pages are pushed (the
default in a container) and one whose pages poll (`CONVEYOR_WEB_PUSH=false`, as under AWS
Lambda). For each, a job (`bench.tasks.timed_progress`) makes UPDATES progress updates
INTERVAL s apart, each one's message the wall-clock time just before `progress.update`; a
MutationObserver in the open job page notes when each message appears in the DOM (the
browser and the worker share this machine's clock). The latency of an update is the time from
it to the first DOM change that shows it or a later one (a polling page skips updates: what it
never shows still waited until the page moved past it). Prints p50/p95/max for both and ends
with `ratio X.XX` = polling p95 / push p95 (higher: the pushed page is that many times quicker
at its 95th percentile; the issue's budget is a push p95 under 250 ms).

python bench/page_latency.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import Stack
from jobs.embedded import free_port

UPDATES = int(os.environ.get("PAGE_LATENCY_UPDATES", "50"))
INTERVAL = float(os.environ.get("PAGE_LATENCY_INTERVAL", "0.2"))
CHROMIUM = os.environ.get("CONVEYOR_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]

# Runs in the page through Playwright's evaluate (which the page's CSP does not govern).
OBSERVE = """() => {
  window.__seen = [];
  let last = null;
  const look = () => {
    const el = document.getElementById('job-message');
    const text = el ? el.textContent : null;
    if (text && text !== last) {
      last = text;
      window.__seen.push([text, performance.timeOrigin + performance.now()]);
    }
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, characterData: true});
  look();
}"""


def measure(browser: Any, stack: Stack, url: str) -> tuple[list[float], int]:
    """Milliseconds from each update to the page showing it (or a later one), and how many
    updates the page showed."""
    import httpx

    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{url}/sign-in")
    page.fill("#api_key", stack.key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/jobs")
    go_key = f"bench:go:{uuid.uuid4().hex}"
    response = httpx.post(
        f"{url}/api/v1/jobs",
        json={
            "task": "timed_progress",
            "payload": {
                "updates": UPDATES,
                "interval": INTERVAL,
                "go_key": go_key,
                "times_key": f"{go_key}:t",
            },
        },
        headers={"Authorization": f"Bearer {stack.key}"},
    )
    response.raise_for_status()
    job_id = response.json()["job_id"]
    page.goto(f"{url}/jobs/{job_id}")
    page.evaluate(OBSERVE)
    page.wait_for_timeout(1500)  # the stream is open (or the poller started) before the first update
    from jobs.state.redis_conn import get_redis

    get_redis().set(go_key, "1", ex=600)
    deadline = time.monotonic() + UPDATES * INTERVAL + 60
    while page.get_attribute("#job-live", "data-status") != "finished" and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    page.wait_for_timeout(1500)
    seen: list[list[Any]] = page.evaluate("window.__seen")
    context.close()
    emitted = sorted(float(t) for t in get_redis().lrange(go_key + ":t", 0, -1))
    shown = sorted((float(text) * 1000, at_ms) for text, at_ms in seen if _is_time(text))
    latencies = []
    for sent in emitted:
        later = [at_ms for shown_sent, at_ms in shown if shown_sent >= sent * 1000 - 0.001]
        if later:
            latencies.append(min(later) - sent * 1000)
    if not latencies:
        raise RuntimeError(
            f"no update measured at {url}: {len(emitted)} sent, {len(shown)} shown; {seen[:3]}"
        )
    return latencies, len(shown)


def _is_time(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def percentile(values: list[float], pct: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


def summary(name: str, measured: tuple[list[float], int]) -> float:
    latencies, shown = measured
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    print(
        f"{name:8} {shown:3d}/{UPDATES} updates shown  p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  "
        f"max {max(latencies):7.1f} ms"
    )
    return p95


def main() -> int:
    from playwright.sync_api import sync_playwright

    stack = Stack(queues=["bench"])
    try:
        push_port, poll_port = free_port(), free_port()
        stack.serve("api.main:app", push_port)
        stack.serve("api.main:app", poll_port, {"CONVEYOR_WEB_PUSH": "false"})
        stack.start_worker("bench")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            pushed = measure(browser, stack, f"http://127.0.0.1:{push_port}")
            polled = measure(browser, stack, f"http://127.0.0.1:{poll_port}")
            browser.close()
    finally:
        stack.close()
    print(f"progress.update -> DOM change, {UPDATES} updates {INTERVAL:g} s apart, headless Chromium:")
    push_p95 = summary("pushed", pushed)
    poll_p95 = summary("polled", polled)
    print(f"ratio {poll_p95 / push_p95:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
