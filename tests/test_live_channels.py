"""Long poll, SSE and WebSocket end to end: a real worker runs the job, a real uvicorn serves it."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from jobs.state.lifecycle import record
from jobs.status import JobStatus
from tests.conftest import Backend, ServerProcess, Tenant, make_tenant, seed_job
from tests.live_support import HEARTBEAT, LIVE_ENV, collect_stream, read_events, write_without_publishing

S = JobStatus


@pytest.fixture(scope="module")
def server(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A uvicorn with a short heartbeat and send timeout, so the loss and slow-client paths are quick."""
    log = tmp_path_factory.mktemp("live-server") / "server.log"
    proc = ServerProcess(backend, log, extra_env=LIVE_ENV).start()
    yield proc
    proc.stop()


def submit(server: ServerProcess, tenant: Tenant, payload: dict[str, Any], task: str = "long_task") -> str:
    response = httpx.post(
        f"{server.url}/api/v1/jobs", json={"task": task, "payload": payload}, headers=tenant.headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


def submit_behind_a_blocker(server: ServerProcess, tenant: Tenant, payload: dict[str, Any]) -> str:
    """A job that stays queued for ~0.5 s: the one worker is busy with a job submitted just before."""
    submit(server, tenant, {"n": 10, "delay": 0.05})
    return submit(server, tenant, payload)


def assert_lifecycle(snaps: list[dict[str, Any]], *, final: str = "finished") -> None:
    """queued -> started -> increasing progress -> final, seq strictly increasing, nothing after."""
    statuses = [s["status"] for s in snaps]
    assert statuses[0] == "queued", statuses
    assert "started" in statuses
    assert statuses[-1] == final and statuses.count(final) == 1
    seqs = [s["seq"] for s in snaps]
    assert seqs == sorted(set(seqs)), f"seq not strictly increasing: {seqs}"
    progress = [s["progress"] for s in snaps if s["status"] == "started" and s["progress"] is not None]
    assert progress == sorted(progress), "progress went backwards"
    assert len(set(progress)) >= 8, f"too few progress updates arrived: {progress}"


# --- SSE -----------------------------------------------------------------------------------------


def test_sse_follows_a_job_from_queued_to_finished_and_closes(
    server: ServerProcess, worker: Any, tenant: Tenant
):
    job_id = submit_behind_a_blocker(server, tenant, {"n": 30, "delay": 0.03})
    started = time.monotonic()
    status, events, ended = collect_stream(f"{server.url}/api/v1/jobs/{job_id}/stream", tenant.headers)
    assert status == 200 and ended, "the server must end the stream after the terminal snapshot"
    assert time.monotonic() - started < 20
    snaps = [e.data for e in events]
    assert_lifecycle(snaps)
    assert [e.id for e in events] == [str(s["seq"]) for s in snaps]
    assert snaps[-1]["result"] == {"sum": 435, "n": 30}
    assert all(s["job_id"] == job_id for s in snaps)
    # The ETA appears once the job has run long enough to estimate its rate, and goes at the end.
    etas = [s["eta_seconds"] for s in snaps if s["status"] == "started"]
    assert etas[0] is None and any(eta is not None and 0 < eta < 5 for eta in etas)
    assert snaps[-1]["eta_seconds"] is None


def test_sse_resumes_with_last_event_id_without_repeats_or_gaps_at_the_end(
    server: ServerProcess, worker: Any, tenant: Tenant
):
    job_id = submit_behind_a_blocker(server, tenant, {"n": 30, "delay": 0.03})
    url = f"{server.url}/api/v1/jobs/{job_id}/stream"
    _, first, ended = collect_stream(url, tenant.headers, limit=3)
    assert not ended and len(first) == 3
    resume_from = first[-1].id
    assert resume_from is not None
    _, rest, ended = collect_stream(url, {**tenant.headers, "Last-Event-ID": resume_from})
    assert ended
    assert all(int(e.id or 0) > int(resume_from) for e in rest), "an event was replayed"
    assert_lifecycle([e.data for e in first + rest])

    terminal = rest[-1]
    # Resuming right before the end yields exactly the terminal snapshot; after it, 204 (an
    # EventSource stops reconnecting on 204).
    _, last, ended = collect_stream(url, {**tenant.headers, "Last-Event-ID": str(int(terminal.id or 0) - 1)})
    assert [e.data for e in last] == [terminal.data] and ended
    status, nothing, _ = collect_stream(url, {**tenant.headers, "Last-Event-ID": terminal.id or ""})
    assert status == 204 and nothing == []
    # `since` does the same for clients that cannot set headers.
    status, _, _ = collect_stream(f"{url}?since={terminal.id}", tenant.headers)
    assert status == 204


def test_sse_accepts_a_query_string_key_and_refuses_bad_requests(server: ServerProcess, tenant: Tenant):
    job_id = seed_job(tenant.name)
    record(job_id, S.STARTED, event="started")
    record(job_id, S.FINISHED, event="finished", patch={"result": 1})
    url = f"{server.url}/api/v1/jobs/{job_id}/stream"

    status, events, ended = collect_stream(f"{url}?access_token={tenant.key}", {})
    assert status == 200 and ended and [e.data["status"] for e in events] == ["finished"]

    assert httpx.get(url).status_code == 401
    assert httpx.get(f"{url}?access_token=nope").status_code == 401
    other = make_tenant()
    assert httpx.get(url, headers=other.headers).status_code == 404
    assert httpx.get(f"{server.url}/api/v1/jobs/not-a-job/stream", headers=tenant.headers).status_code == 404
    bad = httpx.get(url, headers={**tenant.headers, "Last-Event-ID": "yesterday"})
    assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["detail"]
    # The key in a URL is never a substitute elsewhere: plain GETs want the header.
    assert httpx.get(f"{server.url}/api/v1/jobs/{job_id}?access_token={tenant.key}").status_code == 401


def test_a_quiet_stream_sends_heartbeat_comments(server: ServerProcess, tenant: Tenant):
    job_id = seed_job(tenant.name)
    lines: list[str] = []
    with httpx.stream("GET", f"{server.url}/api/v1/jobs/{job_id}/stream", headers=tenant.headers) as r:
        started = time.monotonic()
        for line in r.iter_lines():
            lines.append(line)
            if lines.count(": heartbeat") >= 2:
                break
    assert time.monotonic() - started < HEARTBEAT * 6
    assert lines[0].startswith("retry:")
    assert sum(1 for line in lines if line.startswith("data:")) == 1  # just the current snapshot


# --- long poll -----------------------------------------------------------------------------------


def test_long_poll_follows_a_job_from_queued_to_finished(server: ServerProcess, worker: Any, tenant: Tenant):
    job_id = submit_behind_a_blocker(server, tenant, {"n": 30, "delay": 0.03})
    url = f"{server.url}/api/v1/jobs/{job_id}/poll"
    snaps = [httpx.get(f"{server.url}/api/v1/jobs/{job_id}", headers=tenant.headers).json()]
    deadline = time.monotonic() + 20
    while snaps[-1]["status"] != "finished" and time.monotonic() < deadline:
        asked = time.monotonic()
        response = httpx.get(url, params={"since": snaps[-1]["seq"], "timeout": 10}, headers=tenant.headers)
        assert response.status_code == 200
        assert time.monotonic() - asked < 5, "a long poll must answer as soon as the job changes"
        assert response.headers["ETag"] == f'"{response.json()["seq"]}"'
        snaps.append(response.json())
    assert_lifecycle(snaps)


def test_long_poll_answers_at_once_when_behind_and_at_timeout_when_nothing_changes(
    server: ServerProcess, tenant: Tenant
):
    job_id = seed_job(tenant.name)
    record(job_id, S.STARTED, event="started")  # seq 2
    url = f"{server.url}/api/v1/jobs/{job_id}/poll"

    asked = time.monotonic()
    behind = httpx.get(url, params={"since": 1, "timeout": 30}, headers=tenant.headers)
    assert behind.json()["seq"] == 2 and time.monotonic() - asked < 1
    other = httpx.get(url, params={"current_status": "queued", "timeout": 30}, headers=tenant.headers)
    assert other.json()["status"] == "started"

    asked = time.monotonic()
    quiet = httpx.get(url, params={"since": 2, "timeout": 1}, headers=tenant.headers)
    waited = time.monotonic() - asked
    assert quiet.status_code == 200 and quiet.json()["seq"] == 2
    assert 0.9 < waited < 3

    # Without since/current_status: the next change. A progress write with the same status
    # does not satisfy current_status, but does satisfy since.
    result: dict[str, Any] = {}

    def poll(name: str, **params: Any) -> None:
        result[name] = httpx.get(url, params={"timeout": 10, **params}, headers=tenant.headers).json()

    threads = [
        threading.Thread(target=poll, args=("next",)),
        threading.Thread(target=poll, args=("status",), kwargs={"current_status": "started"}),
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    record(job_id, S.STARTED, event="progress", from_statuses=(S.STARTED,), patch={"progress": 50.0})
    threads[0].join(5)
    assert result["next"]["progress"] == 50.0 and result["next"]["seq"] == 3
    assert "status" not in result
    record(job_id, S.FINISHED, event="finished", patch={"result": "ok"})
    threads[1].join(5)
    assert result["status"]["status"] == "finished"


def test_long_poll_refuses_bad_input(server: ServerProcess, tenant: Tenant):
    job_id = seed_job(tenant.name)
    url = f"{server.url}/api/v1/jobs/{job_id}/poll"
    for params in ({"timeout": 0}, {"timeout": 301}, {"since": -1}, {"current_status": "running"}):
        assert httpx.get(url, params=params, headers=tenant.headers).status_code == 422, params
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, params={"timeout": 1}, headers=make_tenant().headers).status_code == 404


def test_the_poll_timeout_is_capped_under_lambda(monkeypatch: pytest.MonkeyPatch):
    from starlette.requests import Request

    from api.routes.live import poll_seconds

    plain = Request({"type": "http", "headers": []})
    mangum = Request({"type": "http", "headers": [], "aws.event": {}, "aws.context": None})
    assert poll_seconds(300, plain) == 300
    assert poll_seconds(300, mangum) == 25 and poll_seconds(10, mangum) == 10
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "conveyor-api")
    assert poll_seconds(300, plain) == 25


# --- WebSocket -----------------------------------------------------------------------------------


def ws_url(server: ServerProcess, path: str) -> str:
    return "ws://" + urlparse(server.url).netloc + path


def test_websocket_follows_a_job_and_closes_normally(server: ServerProcess, worker: Any, tenant: Tenant):
    job_id = submit_behind_a_blocker(server, tenant, {"n": 30, "delay": 0.03})
    snaps: list[dict[str, Any]] = []
    with connect(ws_url(server, f"/api/v1/jobs/{job_id}/ws?access_token={tenant.key}")) as ws:
        try:
            while True:
                snaps.append(json.loads(ws.recv(timeout=20)))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1000
    assert_lifecycle(snaps)


def test_websocket_takes_the_header_and_resumes_after_since(server: ServerProcess, tenant: Tenant):
    job_id = seed_job(tenant.name)
    record(job_id, S.STARTED, event="started")
    record(job_id, S.FAILED, event="failed", patch={"error": {"type": "E", "detail": "d"}})
    url = ws_url(server, f"/api/v1/jobs/{job_id}/ws")
    with connect(url, additional_headers=tenant.headers) as ws:
        assert json.loads(ws.recv(timeout=5))["status"] == "failed"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    with connect(url + "?since=3", additional_headers=tenant.headers) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


@pytest.mark.parametrize(
    ("path", "key", "code"),
    [
        ("/api/v1/jobs/{job}/ws", "", 4401),
        ("/api/v1/jobs/{job}/ws?access_token=wrong", "", 4401),
        ("/api/v1/jobs/{other}/ws", "key", 4404),
        ("/api/v1/jobs/not-a-uuid/ws", "key", 4404),
    ],
)
def test_websocket_refusals_say_why(server: ServerProcess, tenant: Tenant, path: str, key: str, code: int):
    job = seed_job(tenant.name)
    other = seed_job("someone-else")
    headers = tenant.headers if key else {}
    url = ws_url(server, path.format(job=job, other=other))
    with connect(url, additional_headers=headers) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    assert closed.value.rcvd.reason


# --- losses and slow clients ---------------------------------------------------------------------


def test_a_lost_terminal_message_reaches_sse_and_long_poll_within_a_heartbeat(
    server: ServerProcess, tenant: Tenant
):
    job_id = seed_job(tenant.name)
    started = record(job_id, S.STARTED, event="started").snapshot
    assert started is not None
    got: dict[str, tuple[float, dict[str, Any]]] = {}

    def follow_stream() -> None:
        url = f"{server.url}/api/v1/jobs/{job_id}/stream"
        with httpx.stream("GET", url, headers=tenant.headers, timeout=30) as response:
            for event in read_events(response.iter_lines()):
                if event.data["status"] == "finished":
                    got["sse"] = (time.monotonic(), event.data)

    def long_poll() -> None:
        url = f"{server.url}/api/v1/jobs/{job_id}/poll"
        response = httpx.get(url, params={"since": started.seq, "timeout": 60}, headers=tenant.headers)
        got["poll"] = (time.monotonic(), response.json())

    threads = [threading.Thread(target=follow_stream), threading.Thread(target=long_poll)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # both are waiting now
    written_at = time.monotonic()
    finished = write_without_publishing(job_id, status="finished", result={"ok": True}, progress=100.0)
    for thread in threads:
        thread.join(timeout=10)
    for channel in ("sse", "poll"):
        assert channel in got, f"{channel} never saw the terminal snapshot"
        at, snap = got[channel]
        assert snap == finished
        assert at - written_at < HEARTBEAT * 2 + 0.5, f"{channel} took {at - written_at:.2f} s"


def test_a_client_that_stops_reading_delays_no_one_and_is_dropped(server: ServerProcess, tenant: Tenant):
    job_id = seed_job(tenant.name)
    record(job_id, S.STARTED, event="started")
    host, port = urlparse(server.url).hostname or "", urlparse(server.url).port or 0

    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((host, port))
    stalled.sendall(
        f"GET /api/v1/jobs/{job_id}/stream HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {tenant.key}\r\n\r\n".encode()
    )

    readers: list[list[tuple[float, dict[str, Any]]]] = [[] for _ in range(4)]

    def read(into: list[tuple[float, dict[str, Any]]]) -> None:
        url = f"{server.url}/api/v1/jobs/{job_id}/stream"
        with httpx.stream("GET", url, headers=tenant.headers, timeout=30) as response:
            for event in read_events(response.iter_lines()):
                into.append((time.monotonic(), event.data))

    threads = [threading.Thread(target=read, args=(into,)) for into in readers]
    for thread in threads:
        thread.start()
    time.sleep(0.5)

    # ~15 MB over 2.5 s: the stalled client's socket buffers (a few MB on loopback) fill within
    # a second, after which a send to it waits longer than the server's 1 s send timeout.
    big = "x" * 300_000
    for i in range(50):
        record(
            job_id,
            S.STARTED,
            event="progress",
            from_statuses=(S.STARTED,),
            patch={"progress": float(i), "message": big},
            journal=False,
        )
        time.sleep(0.05)
    finished_at = time.monotonic()
    record(job_id, S.FINISHED, event="finished", patch={"message": "done", "progress": 100.0})
    for thread in threads:
        thread.join(timeout=15)

    for into in readers:
        assert into and into[-1][1]["status"] == "finished"
        assert into[-1][0] - finished_at < 2.0, "a stalled client delayed the others"
        seqs = [snap["seq"] for _, snap in into]
        assert seqs == sorted(set(seqs))

    # The stalled client was dropped: once it reads, its stream ends without the terminal event.
    stalled.settimeout(10)
    received = b""
    try:
        while chunk := stalled.recv(1 << 20):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    stalled.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert b'"status":"finished"' not in received


# --- GET /api/v1/jobs/{id}: the fast path answers exactly as the route -----------------------------


def test_the_snapshot_fast_path_answers_exactly_like_the_route(server: ServerProcess, tenant: Tenant):
    job_id = seed_job(tenant.name)
    record(job_id, S.STARTED, event="started", patch={"progress": 12.5, "message": "é ✓"})
    url = f"{server.url}/api/v1/jobs/{job_id}"
    fresh = make_tenant(name=tenant.name)  # a key the server has not verified yet: the route answers
    keep = ("content-type", "content-length", "etag", "cache-control")

    def answer(key: str, **headers: str) -> tuple[int, bytes, dict[str, str | None]]:
        response = httpx.get(url, headers={"Authorization": f"Bearer {key}", **headers})
        return response.status_code, response.content, {h: response.headers.get(h) for h in keep}

    by_route = answer(fresh.key)
    by_fast_path = answer(fresh.key)  # now cached: the fast path answers
    assert by_route == by_fast_path
    assert by_route[0] == 200 and json.loads(by_route[1])["message"] == "é ✓"
    etag = by_route[2]["etag"] or ""
    assert answer(fresh.key, **{"If-None-Match": etag})[0] == 304
    assert answer(fresh.key, **{"If-None-Match": f'"0", {etag}'})[0] == 304
    assert answer(fresh.key, **{"If-None-Match": '"999"'})[0] == 200

    # What the fast path does not own still gets the route's answers.
    assert httpx.get(url, headers=make_tenant(role="member").headers).status_code == 404
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(url).status_code == 401


def test_access_logs_mask_query_string_keys():
    import logging

    from api.app import HideAccessTokens

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/api/v1/jobs/x/stream?since=3&access_token=cvk_secret&x=1", "1.1", 200),
        None,
    )  # fmt: skip
    assert HideAccessTokens().filter(record)
    message = record.getMessage()
    assert "cvk_secret" not in message
    assert "access_token=[REDACTED]&x=1" in message and "since=3" in message
