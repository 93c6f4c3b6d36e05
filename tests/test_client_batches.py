"""The Python client's batches: submit_batch, batch_updates and wait_batch over every channel, sync
and async, against a real uvicorn and a real worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conveyor_client import AsyncClient, BatchSnapshot, Client, ConveyorAPIError
from tests.conftest import Backend, ServerProcess, Tenant
from tests.live_support import LIVE_ENV, run_async

JOBS = [{"task": "long_task", "payload": {"n": 3, "delay": 0.03}}] * 8


@pytest.fixture(scope="module")
def server(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(backend, tmp_path_factory.mktemp("client-batches") / "server.log", LIVE_ENV).start()
    yield proc
    proc.stop()


def check_followed(snaps: list[BatchSnapshot], size: int) -> None:
    assert [s.seq for s in snaps] == sorted({s.seq for s in snaps})
    assert [s.progress for s in snaps] == sorted(s.progress for s in snaps)
    assert sum(1 for s in snaps if s.is_terminal) == 1
    final = snaps[-1]
    assert final.status == "finished" and final.counts["finished"] == size and final.progress == 100.0


@pytest.mark.parametrize("channel", ["sse", "long_poll", "poll"])
def test_sync_client_submits_and_follows_a_batch_over_each_channel(
    server: ServerProcess, worker: Any, tenant: Tenant, channel: str
):
    with Client(server.url, tenant.key) as client:
        created = client.submit_batch(JOBS, name=f"via {channel}", tags=["client"])
        assert len(created.job_ids) == len(JOBS)
        snaps = list(client.batch_updates(created.batch_id, timeout=60, channels=[channel]))
        assert client.get(created.job_ids[0]).status == "finished"
        assert client.wait_batch(created.batch_id, timeout=5) == snaps[-1]
        assert client.restart_batch(created.batch_id)["applied"] == 0
    check_followed(snaps, len(JOBS))
    assert snaps[-1].name == f"via {channel}"


def test_async_client_submits_and_waits_for_a_batch(server: ServerProcess, worker: Any, tenant: Tenant):
    async def scenario() -> tuple[list[BatchSnapshot], BatchSnapshot]:
        async with AsyncClient(server.url, tenant.key) as client:
            created = await client.submit_batch(JOBS, idempotency_key="async-batch")
            again = await client.submit_batch(JOBS, idempotency_key="async-batch")
            assert again == created
            snaps = [s async for s in client.batch_updates(created.batch_id, timeout=60)]
            final = await client.wait_batch(created.batch_id, timeout=5, channels=["long_poll"])
            return snaps, final

    snaps, final = run_async(scenario())
    check_followed(snaps, len(JOBS))
    assert final == snaps[-1]


def test_a_refused_batch_raises_with_the_servers_message(server: ServerProcess, tenant: Tenant):
    with Client(server.url, tenant.key) as client, pytest.raises(ConveyorAPIError) as refused:
        client.submit_batch([{"task": "long_task", "payload": {"n": "x"}}])
    assert refused.value.status_code == 422 and "jobs[0].payload.n" in str(refused.value.detail)
    with Client(server.url, tenant.key) as client, pytest.raises(ConveyorAPIError) as missing:
        client.get_batch("00000000-0000-4000-8000-000000000000")
    assert missing.value.status_code == 404
