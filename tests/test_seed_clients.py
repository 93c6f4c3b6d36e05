"""The seeds' own client code, run against a live server.

Each function below is the seed's, as the seed wrote it (requests, prints and
all); the only changes are the server's address (a test server's port instead
of localhost:8000) and the `Authorization` header, as the issue allows.
"""

from __future__ import annotations

import ast
import json
import time
from typing import Any
from urllib.parse import urlparse

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import ServerProcess, Tenant

BASE = "http://localhost:8000"  # replaced per test with the live server's address
AUTH: dict[str, str] = {}


@pytest.fixture(autouse=True)
def seed_globals(live_server: ServerProcess, tenant: Tenant, worker: Any) -> None:
    global BASE, AUTH
    BASE, AUTH = live_server.url, tenant.headers


# --- seed 000, "3) C) Python client (requests)" --------------------------------------------------


def poll(job_id: str, base="http://localhost:8000", timeout=60):  # type: ignore[no-untyped-def]
    start = time.time()
    delay = 0.5
    while True:
        r = requests.get(f"{base}/status/{job_id}", headers=AUTH)
        s = r.json()
        if s["status"] in ("finished", "failed"):
            return s
        if time.time() - start > timeout:
            raise TimeoutError("Polling timed out")
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)


def test_seed_000_poll_until_finished_and_failed():
    job_id = requests.post(
        f"{BASE}/submit-job", json={"task": "long_task", "payload": {"n": 20, "delay": 0.02}}, headers=AUTH
    ).json()["job_id"]
    final = poll(job_id, base=BASE, timeout=30)
    assert final["status"] == "finished" and final["progress"] == 100
    assert final["result"] == {"sum": 190, "n": 20} and final["error"] is None

    failing = requests.post(
        f"{BASE}/submit-job", json={"task": "always_fails", "payload": {"message": "boom"}}, headers=AUTH
    ).json()["job_id"]
    final = poll(failing, base=BASE, timeout=30)
    assert final["status"] == "failed" and final["error"] == "ValueError: boom"


# --- seed 001, the Streamlit client's loop and the React WebSocket client -------------------------


def streamlit_run(n_steps: int) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """The Streamlit app's requests, with `prog.progress` recorded instead of drawn."""
    bars: list[tuple[int, str]] = []
    API = BASE
    resp = requests.post(f"{API}/workflow/run", json={"n_steps": n_steps, "step_seconds": 0.05}, headers=AUTH)
    resp = resp.json()
    job_id = resp["job_id"]
    while True:
        data = requests.get(f"{API}/status/{job_id}", headers=AUTH).json()
        pct = data.get("percent", 0)
        msg = f"{data['status']}: {data.get('message', '')}"
        assert isinstance(pct, int) and 0 <= pct <= 100  # st.progress takes an int 0..100
        bars.append((pct, msg))
        if data["status"] in ("finished", "failed", "canceled"):
            break
        time.sleep(0.1)  # the seed sleeps 1.0 s; a shorter tick keeps the test short
    return data, bars


def test_seed_001_streamlit_polling_loop():
    data, bars = streamlit_run(8)
    assert data["status"] == "finished" and data["percent"] == 100
    assert data["message"] == "step 8/8"
    assert any(msg.startswith("started: step ") for _, msg in bars)
    assert [pct for pct, _ in bars] == sorted(pct for pct, _ in bars)


def test_seed_001_websocket_client_gets_snapshot_then_updates_then_close():
    job_id = requests.post(
        f"{BASE}/workflow/run", json={"n_steps": 10, "step_seconds": 0.05}, headers=AUTH
    ).json()["job_id"]
    host = urlparse(BASE).netloc
    # Browsers cannot set headers on a WebSocket: the key travels as ?access_token=.
    seen: list[dict[str, Any]] = []
    with connect(f"ws://{host}/ws/{job_id}?access_token={AUTH['Authorization'][7:]}") as ws:
        try:
            while True:
                seen.append(json.loads(ws.recv(timeout=20)))  # ws.onmessage: setSnap(JSON.parse(...))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1000
    assert seen[0]["job_id"] == job_id and seen[-1]["status"] == "finished"
    assert seen[-1]["percent"] == 100 and seen[-1]["message"] == "step 10/10"
    percents = [s["percent"] for s in seen]
    assert percents == sorted(percents) and len(set(percents)) >= 4


# --- seed 002, "Best Practices" ----------------------------------------------------------------


def monitor_job_completion(job_id, max_attempts=60, poll_interval=5):  # type: ignore[no-untyped-def]
    """Monitor job until completion with exponential backoff."""
    attempt = 0

    while attempt < max_attempts:
        try:
            response = requests.get(f"{BASE}/api/v1/jobs/status/{job_id}", headers=AUTH)
            response.raise_for_status()

            job_status = response.json()

            print(
                f"Job {job_id}: {job_status['status']} - {job_status['progress']:.1f}% - "
                f"{job_status['current_step']}"
            )

            if job_status["status"] in ["completed", "failed", "cancelled"]:
                return job_status

            # Exponential backoff with jitter
            sleep_time = min(poll_interval * (2**attempt), 30)  # Max 30 seconds
            time.sleep(sleep_time)
            attempt += 1

        except requests.exceptions.RequestException as e:
            print(f"Error polling job status: {e}")
            time.sleep(poll_interval)
            attempt += 1

    raise TimeoutError(f"Job {job_id} did not complete within {max_attempts * poll_interval} seconds")


def wait_for_job_change(job_id, current_status=None, timeout=30):  # type: ignore[no-untyped-def]
    """Wait for job status change using long polling."""
    params = {"timeout": timeout}
    if current_status:
        params["current_status"] = current_status

    response = requests.get(f"{BASE}/api/v1/jobs/status/{job_id}/poll", params=params, headers=AUTH)
    response.raise_for_status()

    return response.json()


def stream_job_updates(job_id):  # type: ignore[no-untyped-def]
    """Stream real-time job updates using server-sent events."""
    response = requests.get(f"{BASE}/api/v1/jobs/status/{job_id}/stream", stream=True, headers=AUTH)

    for line in response.iter_lines():
        if line.startswith(b"data: "):
            data = line[6:].decode("utf-8")  # Remove 'data: ' prefix
            try:
                update = json.loads(data)
                print(f"Job Update: {update}")

                # Handle different update types
                if "error" in update:
                    print(f"Error: {update['error']}")
                    break
                elif update.get("status") in ["completed", "failed", "cancelled"]:
                    print("Job finished")
                    break

            except json.JSONDecodeError:
                continue


def check_queue_health():  # type: ignore[no-untyped-def]
    """Check overall queue health and performance."""
    try:
        response = requests.get(f"{BASE}/api/v1/jobs/queue/stats", headers=AUTH)
        response.raise_for_status()
        stats = response.json()

        # Check for concerning metrics
        alerts = []

        if stats["failed_jobs"] > stats["total_jobs"] * 0.1:  # >10% failure rate
            alerts.append(f"High failure rate: {stats['failed_jobs']}/{stats['total_jobs']} jobs failed")

        if stats["cpu_usage_percent"] > 90:
            alerts.append(f"High CPU usage: {stats['cpu_usage_percent']}%")

        if stats["memory_usage_mb"] > 1000:  # >1GB
            alerts.append(f"High memory usage: {stats['memory_usage_mb']}MB")

        if stats["pending_jobs"] > 10:
            alerts.append(f"Large pending queue: {stats['pending_jobs']} jobs waiting")

        if not alerts:
            print("Queue health: GOOD")
            print(f"Active jobs: {stats['running_jobs']}")
            print(f"Workers: {stats.get('active_workers', 'unknown')}")
        else:
            print("Queue health: WARNING")
            for alert in alerts:
                print(f"  - {alert}")

        return stats

    except Exception as e:
        print(f"Failed to check queue health: {e}")
        return None


def submit(task: str, payload: dict[str, Any]) -> str:
    response = requests.post(f"{BASE}/submit-job", json={"task": task, "payload": payload}, headers=AUTH)
    response.raise_for_status()
    return str(response.json()["job_id"])


def test_seed_002_monitor_job_completion(capsys: pytest.CaptureFixture[str]):
    job_id = submit("long_task", {"n": 20, "delay": 0.03})
    final = monitor_job_completion(job_id, poll_interval=0.05)
    assert final["status"] == "completed" and final["progress"] == 100.0
    assert final["current_step"] == "step 20/20" and final["completed_at"]
    out = capsys.readouterr().out
    assert f"Job {job_id}: completed - 100.0% - step 20/20" in out


def test_seed_002_long_poll_waits_for_a_status_change():
    job_id = submit("long_task", {"n": 10, "delay": 0.05})
    first = wait_for_job_change(job_id, current_status="pending", timeout=10)
    assert first["status"] in ("running", "completed")
    last = wait_for_job_change(job_id, current_status="running", timeout=10)
    assert last["status"] == "completed"
    started = time.monotonic()
    same = wait_for_job_change(job_id, current_status="completed", timeout=1)
    assert same["status"] == "completed" and time.monotonic() - started >= 0.9


def test_seed_002_stream_prints_updates_until_finished(capsys: pytest.CaptureFixture[str]):
    job_id = submit("long_task", {"n": 15, "delay": 0.05})
    stream_job_updates(job_id)
    out = capsys.readouterr().out
    prefix = "Job Update: "
    updates = [ast.literal_eval(line[len(prefix) :]) for line in out.splitlines() if line.startswith(prefix)]
    assert updates and updates[-1]["status"] == "completed"
    assert out.rstrip().endswith("Job finished")
    assert "running" in {u["status"] for u in updates}

    failing = submit("always_fails", {"message": "kaput"})
    stream_job_updates(failing)
    assert "Error: ValueError: kaput" in capsys.readouterr().out


def test_seed_002_queue_health(capsys: pytest.CaptureFixture[str]):
    stats = check_queue_health()
    assert stats is not None and stats["active_workers"] >= 1
    assert "Queue health:" in capsys.readouterr().out
