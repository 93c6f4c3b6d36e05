"""The snapshot hub: one subscription per process, fan-out that never blocks, recovery from
a broken subscription, and the document peek it routes by."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from redis import Redis

from api.live_feed import JobFeed
from api.live_hub import Delivery, Listener, SnapshotHub, get_hub
from jobs.settings import get_settings
from jobs.snapshot import peek
from jobs.state.lifecycle import record
from jobs.state.live import CHANNEL
from jobs.status import JobStatus
from tests.conftest import Backend, seed_job
from tests.live_support import run_async, write_without_publishing

S = JobStatus


@pytest.fixture
def long_heartbeat(env: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A heartbeat far longer than any wait below: whatever arrives came through pub/sub."""
    monkeypatch.setenv("CONVEYOR_LIVE_HEARTBEAT", "60")
    get_settings.cache_clear()


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))


def test_peek_reads_routing_fields_of_real_documents(env: Backend):
    job_id = seed_job()
    record(job_id, S.STARTED, event="started")
    tricky = {"seq": 999, "note": ',"status":"failed","seq":1}', "list": []}
    done = record(job_id, S.FINISHED, event="finished", patch={"result": tricky, "message": '"seq":7'})
    assert done.doc is not None
    head = peek(done.doc)
    assert head is not None
    assert (head.job_id, head.status, head.seq) == (job_id, "finished", 3)
    assert head.is_terminal
    assert json.loads(done.doc)["result"] == tricky
    assert peek(b"not a snapshot") is None and peek(b'{"job_id":"x"}') is None


def test_published_changes_reach_every_listener_of_the_job_only(long_heartbeat: None):
    job_id, other_id = seed_job(), seed_job()

    async def scenario() -> None:
        hub = get_hub()
        mine = [await hub.add(job_id) for _ in range(3)]
        theirs = await hub.add(other_id)
        sent_at = time.monotonic()
        await in_thread(record, job_id, S.STARTED, event="started")
        for listener in mine:
            assert await listener.wait(2.0)
            [delivery] = listener.take()
            assert delivery.seq == 2 and delivery.status == "started" and delivery.job_id == job_id
        assert time.monotonic() - sent_at < 1.0
        assert not await theirs.wait(0.2) and theirs.take() == []
        # The same delivery object went to every listener: formatted once, fanned out.
        await in_thread(record, job_id, S.STARTED, event="progress", patch={"progress": 5.0})
        got = []
        for listener in mine:
            await listener.wait(2.0)
            got.extend(listener.take())
        assert len({id(d) for d in got}) == 1
        await hub.close()

    run_async(scenario())


def test_one_subscription_serves_many_listeners(long_heartbeat: None, redis_client: Redis):
    def subscribers() -> int:
        return int(dict(redis_client.pubsub_numsub(CHANNEL))[CHANNEL.encode()])

    async def scenario() -> None:
        before = await in_thread(subscribers)
        hub = SnapshotHub()
        listeners = [await hub.add(seed_job()) for _ in range(50)]
        assert hub.listener_count == 50
        assert await in_thread(subscribers) == before + 1
        for listener in listeners:
            hub.remove(listener)
        assert hub.listener_count == 0
        await hub.close()
        for _ in range(50):
            if await in_thread(subscribers) == before:
                break
            await asyncio.sleep(0.05)
        assert await in_thread(subscribers) == before

    run_async(scenario())


def test_a_full_listener_keeps_the_newest_snapshots_and_never_blocks(env: Backend):
    async def scenario() -> list[int]:
        listener = Listener("job", size=4)
        job_id = "00000000-0000-4000-8000-000000000000"
        for seq in range(1, 1001):
            doc = f'{{"job_id":"{job_id}","task":"t","queue":"q","status":"started","seq":{seq}}}'.encode()
            delivery = Delivery.of(doc)
            assert delivery is not None
            listener.deliver(delivery)
        return [d.seq for d in listener.take()]

    assert run_async(scenario()) == [997, 998, 999, 1000]


def test_a_broken_subscription_reconnects_and_listeners_catch_up(long_heartbeat: None, redis_client: Redis):
    job_id = seed_job("t-seeded")
    record(job_id, S.STARTED, event="started")

    async def scenario() -> None:
        feed = await JobFeed.open(job_id, "t-seeded")
        hub = get_hub()
        assert feed.current.seq == 2 and hub.subscribed
        # Redis drops the subscription; meanwhile a change is made that nobody hears of.
        killed = await in_thread(redis_client.client_kill_filter, _type="pubsub")
        assert killed >= 1
        await in_thread(write_without_publishing, job_id, progress=40.0)
        items = await feed.next(feed.current.seq, timeout=5)
        assert [(d.seq, json.loads(d.doc)["progress"]) for d in items] == [(3, 40.0)]
        assert hub.reconnects >= 1
        for _ in range(100):
            if hub.subscribed:
                break
            await asyncio.sleep(0.05)
        # And the new subscription delivers again.
        await in_thread(record, job_id, S.STARTED, event="progress", patch={"progress": 60.0})
        items = await feed.next(3, timeout=5)
        assert [d.seq for d in items] == [4]
        feed.close()
        await hub.close()

    run_async(scenario())


def test_a_quiet_feed_rereads_the_snapshot_on_its_heartbeat(env: Backend, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONVEYOR_LIVE_HEARTBEAT", "0.3")
    get_settings.cache_clear()
    job_id = seed_job("t-seeded")

    async def scenario() -> None:
        feed = await JobFeed.open(job_id, "t-seeded")
        await in_thread(write_without_publishing, job_id, status="canceled")
        started = time.monotonic()
        items = await feed.next(feed.current.seq)
        assert [d.status for d in items] == ["canceled"]
        assert time.monotonic() - started < 1.0
        feed.close()
        await get_hub().close()

    run_async(scenario())
