"""A batch end to end: a real uvicorn, a real worker; SSE, WebSocket and long poll of the batch,
its counts in SQL, cancel and restart of a whole batch."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import sqlalchemy as sa
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from jobs.history.db import session_scope
from jobs.history.models import Job
from tests.conftest import Backend, ServerProcess, Tenant
from tests.live_support import LIVE_ENV, collect_stream
from tests.services import wait_until


@pytest.fixture(scope="module")
def server(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("batch-server") / "server.log"
    # A batch takes a submit token per job (jobs/access/admission.py): bursts that hold the 1,000-job batch.
    bursts = {"CONVEYOR_TENANT_SUBMIT_BURST": "5000", "CONVEYOR_KEY_SUBMIT_BURST": "5000"}
    proc = ServerProcess(backend, log, extra_env={**LIVE_ENV, **bursts}).start()
    yield proc
    proc.stop()


def submit_batch(server: ServerProcess, tenant: Tenant, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}/api/v1/batches", json={"jobs": jobs}, headers=tenant.headers, timeout=60
    )
    assert response.status_code == 201, response.text
    return response.json()


def sql_counts(batch_id: str) -> dict[str, int]:
    with session_scope() as session:
        rows = session.execute(
            sa.select(Job.status, sa.func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
        )
        return {status: count for status, count in rows}


def ws_snapshots(server: ServerProcess, tenant: Tenant, batch_id: str, out: list[dict[str, Any]]) -> None:
    url = "ws://" + urlparse(server.url).netloc + f"/api/v1/batches/{batch_id}/ws?access_token={tenant.key}"
    with connect(url) as ws:
        try:
            while True:
                out.append(json.loads(ws.recv(timeout=120)))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1000


def polled_snapshots(server: ServerProcess, tenant: Tenant, batch_id: str, out: list[dict[str, Any]]) -> None:
    since = 0
    while True:
        response = httpx.get(
            f"{server.url}/api/v1/batches/{batch_id}/poll",
            params={"since": since, "timeout": 10},
            headers=tenant.headers,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        snap = response.json()
        out.append(snap)
        since = snap["seq"]
        if snap["status"] in ("finished", "failed", "canceled"):
            return


def assert_coherent(snaps: list[dict[str, Any]], size: int) -> None:
    seqs = [s["seq"] for s in snaps]
    assert seqs == sorted(set(seqs)), "batch seq must strictly increase"
    progress = [s["progress"] for s in snaps]
    assert progress == sorted(progress), "the batch's progress went backwards"
    assert all(sum(s["counts"].values()) == size for s in snaps)
    final = snaps[-1]
    assert final["status"] == "finished" and final["counts"]["finished"] == size
    assert final["progress"] == 100.0 and final["finished_share"] == 1.0 and final["ended_at"]
    assert final["eta_seconds"] is None
    assert final["success_rate"] == 1.0 and final["duration_seconds"] > 0


def test_a_batch_of_1000_ends_with_right_counts_in_sql_and_on_every_channel(
    server: ServerProcess, worker: Any, tenant: Tenant
):
    size = 1000
    # A blocker keeps the worker busy while the watchers join, so they see the batch from its start.
    blocker = httpx.post(
        f"{server.url}/api/v1/jobs",
        json={"task": "long_task", "payload": {"n": 10, "delay": 0.05}},
        headers=tenant.headers,
        timeout=30,
    )
    assert blocker.status_code == 201
    created = submit_batch(server, tenant, [{"task": "long_task", "payload": {"n": 1, "delay": 0}}] * size)
    batch_id = created["batch_id"]
    sse: list[Any] = []
    ws: list[dict[str, Any]] = []
    polled: list[dict[str, Any]] = []

    def follow_sse() -> None:
        status, events, ended = collect_stream(
            f"{server.url}/api/v1/batches/{batch_id}/stream", tenant.headers, timeout=120
        )
        assert status == 200 and ended
        sse.extend(events)

    threads = [
        threading.Thread(target=follow_sse),
        threading.Thread(target=ws_snapshots, args=(server, tenant, batch_id, ws)),
        threading.Thread(target=polled_snapshots, args=(server, tenant, batch_id, polled)),
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
        assert not thread.is_alive(), "a watcher never saw the batch end"
    took = time.monotonic() - started
    sse_snaps = [e.data for e in sse]
    for snaps in (sse_snaps, ws, polled):
        assert_coherent(snaps, size)
        assert snaps[-1]["seq"] == sse_snaps[-1]["seq"]
    assert [e.id for e in sse] == [str(s["seq"]) for s in sse_snaps]
    # Coalesced: at most one message per 100 ms (plus the first and a heartbeat's re-read or two),
    # where 1,000 jobs make at least 3,000 changes (queued, started, progress, finished).
    assert len(sse_snaps) <= took / 0.1 + 5, (len(sse_snaps), took)
    assert len(ws) <= took / 0.1 + 5
    assert any(0 < s["progress"] < 100 for s in sse_snaps), "no intermediate progress was seen"
    wait_until(lambda: sql_counts(batch_id) == {"finished": size}, timeout=30, message="SQL to catch up")
    listed = httpx.get(f"{server.url}/api/v1/batches", headers=tenant.headers).json()["items"]
    assert listed[0]["batch_id"] == batch_id and listed[0]["counts"]["finished"] == size


def test_cancel_then_restart_a_whole_batch(server: ServerProcess, worker: Any, tenant: Tenant):
    blocker = httpx.post(
        f"{server.url}/api/v1/jobs",
        json={"task": "long_task", "payload": {"n": 20, "delay": 0.05}},
        headers=tenant.headers,
        timeout=30,
    )
    assert blocker.status_code == 201
    created = submit_batch(server, tenant, [{"task": "long_task", "payload": {"n": 1, "delay": 0}}] * 20)
    batch_id = created["batch_id"]
    canceled = httpx.post(
        f"{server.url}/api/v1/batches/{batch_id}/cancel", headers=tenant.headers, timeout=30
    )
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["applied"] + canceled.json()["skipped"] >= 1
    snap = httpx.get(f"{server.url}/api/v1/batches/{batch_id}", headers=tenant.headers).json()
    running = snap["counts"]["started"] + snap["counts"]["paused"]  # a running job was asked to stop
    assert snap["counts"]["canceled"] + running >= canceled.json()["applied"]

    def ended() -> dict[str, Any] | None:
        s = httpx.get(f"{server.url}/api/v1/batches/{batch_id}", headers=tenant.headers).json()
        return s if s["status"] in ("finished", "canceled", "failed") else None

    snap = wait_until(ended, timeout=30, message="the canceled batch to end")
    assert snap["status"] == "canceled" and snap["counts"]["canceled"] >= 1
    restarted = httpx.post(
        f"{server.url}/api/v1/batches/{batch_id}/restart", headers=tenant.headers, timeout=30
    )
    assert restarted.status_code == 200, restarted.text
    assert restarted.json()["applied"] == snap["counts"]["canceled"]
    final = wait_until(
        lambda: (s := ended()) is not None and s["status"] == "finished" and s,
        timeout=60,
        message="the restarted batch to finish",
    )
    assert final["counts"]["finished"] == 20 and final["seq"] > snap["seq"]
    again = httpx.post(f"{server.url}/api/v1/batches/{batch_id}/restart", headers=tenant.headers, timeout=30)
    assert again.json()["applied"] == 0


def wait_job(server: ServerProcess, tenant: Tenant, job_id: str, statuses: set[str]) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        snap = httpx.get(f"{server.url}/api/v1/jobs/{job_id}", headers=tenant.headers).json()
        return snap if snap["status"] in statuses else None

    return wait_until(check, timeout=60, interval=0.1, message=f"job {job_id} to reach {statuses}")


def submit_after(
    server: ServerProcess, tenant: Tenant, batch_id: str, mode: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"task": "long_task", "payload": {"n": 1, "delay": 0}, "depends_on": [batch_id]}
    if mode:
        body["batch_dependency"] = mode
    return httpx.post(f"{server.url}/api/v1/jobs", json=body, headers=tenant.headers)


def test_a_job_waits_for_a_whole_batch(server: ServerProcess, worker: Any, tenant: Tenant):
    jobs = [{"task": "long_task", "payload": {"n": 2, "delay": 0.05}}] * 10
    batch_id = submit_batch(server, tenant, jobs)["batch_id"]
    waiter = submit_after(server, tenant, batch_id)
    assert waiter.status_code == 201, waiter.text
    assert waiter.json()["status"] == "deferred"
    done = wait_job(server, tenant, waiter.json()["job_id"], {"finished", "failed"})
    assert done["status"] == "finished"
    batch = httpx.get(f"{server.url}/api/v1/batches/{batch_id}", headers=tenant.headers).json()
    assert batch["status"] == "finished"
    assert done["started_at"] >= batch["ended_at"], "the waiter ran before the batch ended"
    # Once the batch has finished, a new waiter runs at once.
    late = submit_after(server, tenant, batch_id)
    assert late.status_code == 201 and late.json()["status"] == "queued"


def test_a_batch_that_did_not_all_finish_fails_its_waiter_unless_all_ended_was_asked(
    server: ServerProcess, worker: Any, tenant: Tenant
):
    jobs = [{"task": "long_task", "payload": {"n": 1, "delay": 0}}, {"task": "always_fails", "payload": {}}]
    blocker = {"task": "long_task", "payload": {"n": 10, "delay": 0.05}}  # the batch waits behind it
    assert httpx.post(f"{server.url}/api/v1/jobs", json=blocker, headers=tenant.headers).status_code == 201
    batch_id = submit_batch(server, tenant, jobs)["batch_id"]
    strict = submit_after(server, tenant, batch_id).json()
    lenient = submit_after(server, tenant, batch_id, "all_ended").json()
    assert (
        wait_job(server, tenant, strict["job_id"], {"failed", "finished"})["error"]["type"]
        == "DependencyFailed"
    )
    assert wait_job(server, tenant, lenient["job_id"], {"failed", "finished"})["status"] == "finished"
    ended = httpx.get(f"{server.url}/api/v1/batches/{batch_id}", headers=tenant.headers).json()
    assert ended["status"] == "failed" and ended["success_rate"] == 0.5
    refused = submit_after(server, tenant, batch_id)
    assert refused.status_code == 409 and "could never run" in refused.json()["detail"]
    mixed = httpx.post(
        f"{server.url}/api/v1/jobs",
        json={"task": "long_task", "payload": {}, "depends_on": [batch_id, strict["job_id"]]},
        headers=tenant.headers,
    )
    assert mixed.status_code == 422 and "nothing else" in mixed.json()["detail"]
