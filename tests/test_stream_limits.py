"""Limits that keep one client from starving the rest (issue 11): stream caps per key and per
process, slots given back however a stream ends, a deadline for request headers, the open-file
limit raised at start, and streams of a revoked key closed.

The server is `conveyor api` itself (its protocol, its start-up), in a subprocess on a free port.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from jobs.state.lifecycle import record
from jobs.status import JobStatus
from tests.conftest import Backend, ServerProcess, Tenant, make_tenant, seed_job
from tests.services import wait_until

PER_KEY = 3
HEADER_TIMEOUT = 1.5
LOW_FD_SOFT_LIMIT = 512

ENV = {
    "CONVEYOR_MAX_STREAMS_PER_KEY": str(PER_KEY),
    "CONVEYOR_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "CONVEYOR_LIVE_HEARTBEAT": "0.5",
    # CONVEYOR_STREAM_KEY_RECHECK keeps its default (10 s): the revocation test holds it to 30 s.
}


def lower_fd_limit() -> None:
    """Start the server with a low soft limit (the hard one kept), as many hosts do: 1,024 or less."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_FD_SOFT_LIMIT, hard))


@pytest.fixture(scope="module")
def server(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("limits-server") / "server.log"
    proc = ServerProcess(backend, log, extra_env=ENV, via_cli=True, preexec_fn=lower_fd_limit).start()
    yield proc
    proc.stop()


def ws_url(server: ServerProcess, path: str) -> str:
    return "ws://" + urlparse(server.url).netloc + path


def open_streams(server: ServerProcess, admin: Tenant) -> int:
    """The server's own count of open streams, from /metrics."""
    text = httpx.get(f"{server.url}/metrics", headers=admin.headers, timeout=10).text
    for line in text.splitlines():
        if line.startswith("conveyor_api_open_streams "):
            return int(float(line.split()[1]))
    raise AssertionError("no conveyor_api_open_streams in /metrics")


@contextlib.contextmanager
def sse_streams(server: ServerProcess, tenant: Tenant, job_id: str, n: int) -> Iterator[list[httpx.Response]]:
    """``n`` SSE streams of one job held open (each past its headers, so holding its slot)."""
    with contextlib.ExitStack() as stack:
        responses = []
        for _ in range(n):
            client = stack.enter_context(httpx.Client(timeout=10))
            request = client.build_request(
                "GET", f"{server.url}/api/v1/jobs/{job_id}/stream", headers=tenant.headers
            )
            response = client.send(request, stream=True)
            stack.callback(response.close)
            responses.append(response)
        yield responses


def reset_mid_stream(server: ServerProcess, tenant: Tenant, job_id: str) -> None:
    """Open an SSE stream on a raw socket, read its first event, then reset the connection (RST)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        request = f"GET /api/v1/jobs/{job_id}/stream HTTP/1.1\r\nHost: x\r\n"
        sock.sendall(f"{request}Authorization: Bearer {tenant.key}\r\n\r\n".encode())
        data = b""
        while b"data:" not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def refused_websocket(server: ServerProcess, tenant: Tenant, job_id: str) -> tuple[int, str]:
    url = ws_url(server, f"/api/v1/jobs/{job_id}/ws")
    with connect(url, additional_headers=tenant.headers) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


def test_a_capped_key_is_refused_on_every_channel_while_another_key_is_served(server: ServerProcess):
    greedy, other = make_tenant(), make_tenant()
    job = seed_job(greedy.name)
    other_job = seed_job(other.name)
    with sse_streams(server, greedy, job, PER_KEY) as held:
        assert [r.status_code for r in held] == [200] * PER_KEY

        refused = httpx.get(f"{server.url}/api/v1/jobs/{job}/stream", headers=greedy.headers, timeout=10)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0
        assert "CONVEYOR_MAX_STREAMS_PER_KEY=3" in refused.json()["detail"]
        assert refused.json()["cap"] == "key"

        poll = httpx.get(
            f"{server.url}/api/v1/jobs/{job}/poll", params={"timeout": 1}, headers=greedy.headers, timeout=10
        )
        assert poll.status_code == 429 and "Retry-After" in poll.headers
        seed002 = httpx.get(
            f"{server.url}/api/v1/jobs/status/{job}/stream", headers=greedy.headers, timeout=10
        )
        assert seed002.status_code == 429

        code, reason = refused_websocket(server, greedy, job)
        assert code == 4429 and "key cap" in reason

        # Everything else that key does is still served, and so is every other key's stream.
        assert httpx.get(f"{server.url}/api/v1/jobs/{job}", headers=greedy.headers).status_code == 200
        with sse_streams(server, other, other_job, 1) as (theirs,):
            assert theirs.status_code == 200
            first = next(line for line in theirs.iter_lines() if line.startswith("data:"))
            assert json.loads(first[5:])["job_id"] == other_job
        poll = httpx.get(
            f"{server.url}/api/v1/jobs/{other_job}/poll",
            params={"timeout": 1},
            headers=other.headers,
            timeout=10,
        )
        assert poll.status_code == 200


def test_every_way_a_stream_ends_gives_its_slot_back(server: ServerProcess):
    """Open and end streams many more times than the cap, in every way one can end; the key
    can then still hold its full cap, and the server counts no open stream."""
    tenant = make_tenant()
    job = seed_job(tenant.name)
    base = f"{server.url}/api/v1/jobs"
    for _ in range(PER_KEY + 2):  # past the cap: one leaked slot per round would show as a 429
        # The client leaves an SSE stream mid-way.
        with sse_streams(server, tenant, job, 1) as (response,):
            assert response.status_code == 200
        # A long poll times out; another is answered at once.
        assert (
            httpx.get(f"{base}/{job}/poll", params={"timeout": 1}, headers=tenant.headers).status_code == 200
        )
        assert httpx.get(f"{base}/{job}/poll", params={"since": 0}, headers=tenant.headers).status_code == 200
        # A stream or poll of a job this key cannot see (404 after the slot was taken).
        assert (
            httpx.get(f"{base}/{seed_job('someone-else')}/stream", headers=tenant.headers).status_code == 404
        )
        assert httpx.get(f"{base}/no-such-job/poll", headers=tenant.headers).status_code == 404
        # The client's connection is reset (no orderly close), mid-stream.
        reset_mid_stream(server, tenant, job)
        # The client closes a WebSocket.
        with connect(ws_url(server, f"/api/v1/jobs/{job}/ws"), additional_headers=tenant.headers) as ws:
            assert json.loads(ws.recv(timeout=5))["job_id"] == job
    # Streams that end by themselves: the job ends (SSE and WebSocket), and a resume after the end.
    ending = seed_job(tenant.name)
    done: dict[str, Any] = {}

    def follow_sse() -> None:
        with httpx.stream("GET", f"{base}/{ending}/stream", headers=tenant.headers, timeout=20) as response:
            done["sse"] = [line for line in response.iter_lines() if line.startswith("data:")]

    def follow_ws() -> None:
        with connect(ws_url(server, f"/api/v1/jobs/{ending}/ws"), additional_headers=tenant.headers) as ws:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    ws.recv(timeout=20)
            done["ws"] = ws.close_code

    threads = [threading.Thread(target=follow_sse), threading.Thread(target=follow_ws)]
    for thread in threads:
        thread.start()
    admin = make_tenant()
    wait_until(lambda: open_streams(server, admin) == 2, timeout=10, message="both followers to connect")
    record(ending, JobStatus.STARTED, event="started")
    record(ending, JobStatus.FINISHED, event="finished", patch={"result": {"ok": True}})
    for thread in threads:
        thread.join(timeout=20)
    assert len(done["sse"]) >= 1 and done["ws"] == 1000
    resumed = httpx.get(f"{base}/{ending}/stream", headers={**tenant.headers, "Last-Event-ID": "99"})
    assert resumed.status_code == 204

    wait_until(lambda: open_streams(server, admin) == 0, timeout=10, message="every slot to be given back")
    with sse_streams(server, tenant, job, PER_KEY) as held:
        assert [r.status_code for r in held] == [200] * PER_KEY


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (headers and a Content-Length body) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"the connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "the connection closed mid-body"
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.fixture(scope="module")
def h11_server(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Bare uvicorn with the h11 variant (uvicorn's fallback when httptools is not installed)."""
    log = tmp_path_factory.mktemp("h11-server") / "server.log"
    args = ("--http", "api.server:H11HeaderDeadline")
    proc = ServerProcess(backend, log, extra_env=ENV, args=args).start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("which", ["server", "h11_server"])
def test_connections_that_never_finish_their_headers_are_closed(
    which: str, backend: Backend, request: pytest.FixtureRequest
):
    server: ServerProcess = request.getfixturevalue(which)
    host, port = "127.0.0.1", server.port
    sockets = []
    for opening in (b"", b"GET /healthz HT", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"):
        for _ in range(40):
            sock = socket.create_connection((host, port), timeout=10)
            if opening:
                sock.sendall(opening)
            sockets.append(sock)
    started = time.monotonic()
    try:
        for sock in sockets:
            assert sock.recv(1024) == b"", "the server answered a request it never fully received"
        took = time.monotonic() - started
        assert took < HEADER_TIMEOUT + 2, f"incomplete connections were held {took:.1f} s"
    finally:
        for sock in sockets:
            sock.close()

    # A request that completes its headers in time is served, and the deadline starts again for
    # the next request on the same (keep-alive) connection.
    with socket.create_connection((host, port), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            time.sleep(HEADER_TIMEOUT / 3)
            sock.sendall(b"Host: x\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # ... and then never finishes
        started = time.monotonic()
        assert sock.recv(1024) == b""
        assert time.monotonic() - started < HEADER_TIMEOUT + 2


@pytest.mark.parametrize("which", ["server", "h11_server"])
def test_a_stream_outlives_the_header_deadline(which: str, backend: Backend, request: pytest.FixtureRequest):
    server: ServerProcess = request.getfixturevalue(which)
    tenant = make_tenant()
    job = seed_job(tenant.name)
    with sse_streams(server, tenant, job, 1) as (response,):
        lines = response.iter_lines()
        started = time.monotonic()
        heartbeats = 0
        while time.monotonic() - started < HEADER_TIMEOUT * 2:
            heartbeats += next(lines) == ": heartbeat"
        assert heartbeats >= 2
    with connect(ws_url(server, f"/api/v1/jobs/{job}/ws"), additional_headers=tenant.headers) as ws:
        ws.recv(timeout=5)
        time.sleep(HEADER_TIMEOUT * 1.5)
        ws.ping().wait(timeout=5)  # still open


def test_the_api_raises_its_open_file_limit_at_start(server: ServerProcess):
    assert server.process is not None
    limits = Path(f"/proc/{server.process.pid}/limits").read_text()
    line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert int(soft) == int(hard) > LOW_FD_SOFT_LIMIT, line


def test_the_process_cap_is_bounded_by_the_open_file_limit_and_refuses_any_key(
    monkeypatch: pytest.MonkeyPatch,
):
    from api.stream_limits import StreamLimitReached, StreamSlots, process_cap
    from jobs.process_limits import open_file_limit
    from jobs.settings import get_settings

    monkeypatch.setenv("CONVEYOR_MAX_STREAMS_PER_PROCESS", "1000000")
    get_settings.cache_clear()
    try:
        assert process_cap() == open_file_limit() // 2
        monkeypatch.setenv("CONVEYOR_MAX_STREAMS_PER_PROCESS", "2")
        get_settings.cache_clear()
        slots = StreamSlots()
        held = [slots.acquire("a"), slots.acquire("b")]
        with pytest.raises(StreamLimitReached) as refused:
            slots.acquire("c")
        assert refused.value.cap == "process" and "CONVEYOR_MAX_STREAMS_PER_PROCESS" in refused.value.message
        held[0].release()
        held[0].release()  # twice: still one slot given back, not two
        held.append(slots.acquire("c"))
        with pytest.raises(StreamLimitReached):
            slots.acquire("d")
        for slot in held:
            slot.release()
        assert slots.total == 0 and slots.held_by("a") == slots.held_by("c") == 0
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_streams_of_a_revoked_key_close_within_30_seconds(server: ServerProcess):
    from jobs.access.auth import revoke_key
    from jobs.history.db import session_scope

    tenant = make_tenant()
    # Waiting in a real RQ queue that no worker here consumes: a job seeded in no queue is, to
    # the reconciler's sweep, a job Redis lost, and its requeue (then a run) would answer the poll.
    submitted = httpx.post(
        f"{server.url}/api/v1/jobs",
        json={"task": "long_task", "payload": {}, "queue": "isolated"},
        headers=tenant.headers,
    )
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()["job_id"]
    ended: dict[str, Any] = {}

    def follow_sse() -> None:
        with httpx.stream(
            "GET", f"{server.url}/api/v1/jobs/{job}/stream", headers=tenant.headers, timeout=60
        ) as r:
            ended["sse_lines"] = list(r.iter_lines())
        ended["sse"] = time.monotonic()

    def long_poll() -> None:
        r = httpx.get(
            f"{server.url}/api/v1/jobs/{job}/poll",
            params={"timeout": 120},
            headers=tenant.headers,
            timeout=150,
        )
        ended["poll"], ended["poll_status"] = time.monotonic(), r.status_code

    def follow_ws() -> None:
        ws: ClientConnection
        url = ws_url(server, f"/api/v1/jobs/{job}/ws")
        with connect(url, additional_headers=tenant.headers) as ws, contextlib.suppress(ConnectionClosed):
            while True:
                ws.recv(timeout=60)
        ended["ws"], ended["ws_code"] = time.monotonic(), ws.close_code

    threads = [threading.Thread(target=f, daemon=True) for f in (follow_sse, long_poll, follow_ws)]
    for thread in threads:
        thread.start()
    admin = make_tenant()
    wait_until(lambda: open_streams(server, admin) >= 3, timeout=10, message="the three streams to open")
    with session_scope() as session:
        assert revoke_key(session, key_id=tenant.key_id)
    revoked_at = time.monotonic()
    for thread in threads:
        thread.join(timeout=35)
    for channel in ("sse", "poll", "ws"):
        assert channel in ended, f"the {channel} stream was still open 35 s after the revocation"
        assert ended[channel] - revoked_at < 30, f"{channel} closed {ended[channel] - revoked_at:.1f} s after"
    assert ended["poll_status"] == 401
    assert ended["ws_code"] == 4401
    assert ended["sse_lines"][-2:] == [": API key revoked", ""]
    # The server dropped the key from its cache when it found it revoked: refused at once, not in 30 s.
    again = httpx.get(f"{server.url}/api/v1/jobs/{job}/stream", headers=tenant.headers, timeout=10)
    assert again.status_code == 401
    wait_until(lambda: open_streams(server, admin) == 0, timeout=10, message="the revoked key's slots")


def test_the_python_client_over_its_cap_falls_back_to_polling(server: ServerProcess):
    """A key at its cap still follows jobs with conveyor_client: 429 on SSE and long poll sends
    it to plain polling (which no cap limits) instead of failing."""
    from conveyor_client import AsyncClient, Client
    from tests.live_support import run_async

    tenant = make_tenant()
    busy, job = seed_job(tenant.name), seed_job(tenant.name)
    got: dict[str, Any] = {}

    def follow() -> None:
        with Client(server.url, api_key=tenant.key) as conveyor:
            got["sync"] = conveyor.wait(job, timeout=30).status

    async def follow_async() -> str:
        async with AsyncClient(server.url, api_key=tenant.key) as conveyor:
            return (await conveyor.wait(job, timeout=30)).status

    with sse_streams(server, tenant, busy, PER_KEY):
        thread = threading.Thread(target=follow)
        thread.start()
        time.sleep(1)
        record(job, JobStatus.STARTED, event="started")
        record(job, JobStatus.FINISHED, event="finished", patch={"result": {"ok": True}})
        thread.join(timeout=30)
        assert got.get("sync") == "finished"
        assert run_async(follow_async()) == "finished"
