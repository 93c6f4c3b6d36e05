"""The Python client against a live server: sync and async, every channel, fallbacks, retries."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conveyor_client import AsyncClient, Client, ConveyorAPIError, Snapshot
from jobs.state.lifecycle import record
from jobs.status import JobStatus
from tests.conftest import ROOT, Backend, ServerProcess, Tenant, seed_job
from tests.live_support import LIVE_ENV, run_async


@pytest.fixture(scope="module")
def server(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(backend, tmp_path_factory.mktemp("client-server") / "server.log", LIVE_ENV).start()
    yield proc
    proc.stop()


def check_followed(snaps: list[Snapshot], *, min_progress: int) -> None:
    assert snaps[-1].status == "finished" and snaps[-1].result == {"sum": 190, "n": 20}
    assert [s.seq for s in snaps] == sorted({s.seq for s in snaps})
    assert sum(1 for s in snaps if s.is_terminal) == 1
    progress = [s.progress for s in snaps if s.status == "started" and s.progress]
    assert progress == sorted(progress) and len(set(progress)) >= min_progress


def test_the_client_imports_no_server_code():
    probe = (
        "import sys, conveyor_client\n"
        "server = ('api', 'jobs', 'worker', 'cli', 'fastapi', 'starlette', 'redis', 'rq', 'sqlmodel',"
        " 'sqlalchemy', 'pydantic')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in server))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("channel", "min_progress"), [("sse", 6), ("long_poll", 6), ("poll", 1)])
def test_sync_client_follows_a_job_over_each_channel(
    server: ServerProcess, worker: Any, tenant: Tenant, channel: str, min_progress: int
):
    with Client(server.url, tenant.key) as client:
        job = client.submit("long_task", {"n": 20, "delay": 0.05})
        snaps = list(client.updates(job.job_id, timeout=30, channels=[channel]))
    assert snaps[0].seq >= job.seq
    check_followed(snaps, min_progress=min_progress)


def test_async_client_submits_follows_and_waits(server: ServerProcess, worker: Any, tenant: Tenant):
    async def scenario() -> tuple[list[Snapshot], Snapshot, Any]:
        async with AsyncClient(server.url, tenant.key) as client:
            job = await client.submit("long_task", {"n": 20, "delay": 0.05})
            snaps = [s async for s in client.updates(job.job_id, timeout=30)]
            final = await client.wait(job.job_id, timeout=5, channels=["long_poll"])
            page = await client.list_jobs(status="finished", task="long_task", limit=5)
            return snaps, final, page

    snaps, final, page = run_async(scenario())
    check_followed(snaps, min_progress=6)
    assert final == snaps[-1]
    assert final.job_id in {s.job_id for s in page.items}


def test_wait_returns_the_terminal_snapshot_and_times_out_on_a_stuck_job(
    server: ServerProcess, worker: Any, tenant: Tenant
):
    with Client(server.url, tenant.key) as client:
        failed = client.wait(client.submit("always_fails", {"message": "nope"}).job_id, timeout=20)
        assert failed.status == "failed" and failed.error == {"type": "ValueError", "detail": "nope"}
        assert client.events(failed.job_id)[0]["event"] == "queued"  # SQL history (may trail)

        stuck = seed_job(tenant.name)  # on a queue no worker serves
        for channel in ("sse", "long_poll", "poll"):
            with pytest.raises(TimeoutError, match="still queued"):
                client.wait(stuck, timeout=1.5, channels=[channel])
        with pytest.raises(ConveyorAPIError) as missing:
            client.wait("6f1c0000-0000-4000-8000-000000000000", timeout=1)
        assert missing.value.status_code == 404


class RecordingTransport(httpx.HTTPTransport):
    """The real transport, plus what a hostile network or proxy does to some requests."""

    def __init__(self, *, unserved: tuple[str, ...] = (), connect_failures: int = 0, lose_first_post=False):
        super().__init__()
        self.unserved = unserved
        self.connect_failures = connect_failures
        self.lose_first_post = lose_first_post
        self.paths: list[str] = []
        self.posts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        self.posts += request.method == "POST"
        if self.connect_failures:
            self.connect_failures -= 1
            raise httpx.ConnectError("connection refused (injected)")
        if any(request.url.path.endswith(suffix) for suffix in self.unserved):
            return httpx.Response(404, json={"detail": "Not Found"})  # a proxy without that route
        response = super().handle_request(request)
        if self.lose_first_post and request.method == "POST":
            self.lose_first_post = False
            response.read()
            raise httpx.ReadError("connection reset after the request was sent (injected)")
        return response


def test_updates_fall_back_to_long_poll_then_to_polling(server: ServerProcess, worker: Any, tenant: Tenant):
    no_sse = RecordingTransport(unserved=("/stream",))
    with Client(server.url, tenant.key, transport=no_sse) as client:
        snaps = list(client.updates(client.submit("long_task", {"n": 20, "delay": 0.05}).job_id, timeout=30))
    check_followed(snaps, min_progress=6)
    assert any(p.endswith("/poll") for p in no_sse.paths)

    neither = RecordingTransport(unserved=("/stream", "/poll"))
    with Client(server.url, tenant.key, transport=neither) as client:
        snaps = list(client.updates(client.submit("long_task", {"n": 20, "delay": 0.05}).job_id, timeout=30))
    check_followed(snaps, min_progress=1)
    assert sum(1 for p in neither.paths if p.endswith("/poll")) == 1  # tried once, then polled


def test_connection_errors_are_retried_and_a_lost_submit_response_makes_no_duplicate(
    server: ServerProcess, tenant: Tenant
):
    flaky = RecordingTransport(connect_failures=2)
    with Client(server.url, tenant.key, transport=flaky) as client:
        assert client.list_jobs(limit=1).items is not None
    assert len(flaky.paths) == 3

    lossy = RecordingTransport(lose_first_post=True)
    with Client(server.url, tenant.key, transport=lossy) as client:
        job = client.submit("long_task", {"n": 1, "delay": 0}, queue="other")
        same_task = client.list_jobs(queue="other", limit=200).items
    assert lossy.posts == 2  # sent, answer lost, sent again
    assert [s.job_id for s in same_task].count(job.job_id) == 1
    assert len(same_task) == 1, "the retried submission created a second job"

    down = RecordingTransport(connect_failures=99)
    with (
        Client(server.url, tenant.key, transport=down, retries=2) as client,
        pytest.raises(httpx.ConnectError),
    ):
        client.get(job.job_id)
    assert len(down.paths) == 3


def test_cancel_calls_the_job_control_endpoint(server: ServerProcess, tenant: Tenant):
    job_id = seed_job(tenant.name)
    with Client(server.url, tenant.key) as client:
        snap = client.cancel(job_id)
        assert snap.job_id == job_id and snap.status == "canceled"
        with pytest.raises(ConveyorAPIError) as refused:
            client.cancel(job_id)
        assert refused.value.status_code == 409


def test_the_async_client_steers_jobs_too(server: ServerProcess, tenant: Tenant):
    job_id = seed_job(tenant.name)

    async def scenario() -> tuple[Snapshot, Snapshot]:
        async with AsyncClient(server.url, tenant.key) as client:
            canceled = await client.cancel(job_id, reason="not needed")
            return canceled, await client.restart(job_id)

    canceled, restarted = run_async(scenario())
    assert canceled.status == "canceled"
    assert restarted.status == "queued" and restarted.attempt == 2


def test_a_canceled_job_ends_a_wait(server: ServerProcess, tenant: Tenant):
    job_id = seed_job(tenant.name)
    record(job_id, JobStatus.CANCELED, event="canceled")
    with Client(server.url, tenant.key) as client:
        assert client.wait(job_id, timeout=5).status == "canceled"
