"""`progress.update` is cheap and coalesced, and its last value always lands."""

from __future__ import annotations

import time
from typing import Any

from jobs.clock import utcnow
from jobs.settings import get_settings
from jobs.state.lifecycle import record
from jobs.state.live import heartbeat_key, live_store
from jobs.status import JobStatus
from tests.conftest import Backend, seed_job
from worker.progress import Progress


def _started_job() -> str:
    job_id = seed_job()
    assert record(job_id, JobStatus.STARTED, event="started").applied
    return job_id


def _snapshot(redis_client: Any, job_id: str) -> Any:
    from jobs.snapshot import JobSnapshot

    _, doc = live_store(redis_client).read(job_id) or ("", b"")
    return JobSnapshot.model_validate_json(doc)


def test_a_tight_loop_costs_a_bounded_number_of_writes(env: Backend, redis_client: Any):
    job_id = _started_job()
    progress = Progress(job_id=job_id, attempt=1, started_at=utcnow(), client=redis_client)
    started = time.monotonic()
    for i in range(100_000):
        progress.update(i + 1, total=100_000, message=f"item {i + 1}")
    elapsed = time.monotonic() - started
    progress.close()

    interval = get_settings().progress_interval
    bound = elapsed / interval + 3
    assert progress.writes <= bound, f"{progress.writes} writes for 100,000 updates in {elapsed:.2f}s"
    snap = _snapshot(redis_client, job_id)
    assert snap.progress == 100.0
    assert snap.message == "item 100000"


def test_the_last_value_lands_even_when_the_task_goes_quiet(env: Backend, redis_client: Any):
    job_id = _started_job()
    progress = Progress(job_id=job_id, attempt=1, started_at=utcnow(), client=redis_client)
    progress.update(10, message="first")
    progress.update(20, message="second")  # inside the coalescing window: held back
    time.sleep(get_settings().progress_interval * 4)
    snap = _snapshot(redis_client, job_id)
    assert (snap.progress, snap.message) == (20.0, "second")
    progress.close()


def test_percent_is_clamped_and_total_optional(env: Backend, redis_client: Any):
    job_id = _started_job()
    progress = Progress(job_id=job_id, attempt=1, started_at=utcnow(), client=redis_client)
    progress.update(150)
    progress.flush()
    assert _snapshot(redis_client, job_id).progress == 100.0
    progress.update(3, total=0)
    progress.close()
    assert _snapshot(redis_client, job_id).progress == 0.0


def test_eta_is_estimated_from_the_rate(env: Backend, redis_client: Any):
    from datetime import timedelta

    job_id = _started_job()
    progress = Progress(
        job_id=job_id, attempt=1, started_at=utcnow() - timedelta(seconds=10), client=redis_client
    )
    progress.update(25)
    progress.close()
    assert _snapshot(redis_client, job_id).eta_seconds == 30.0


def test_heartbeat_is_set_by_writes_while_started_and_cleared_at_the_end(env: Backend, redis_client: Any):
    job_id = _started_job()
    assert redis_client.ttl(heartbeat_key(job_id)) > 0
    redis_client.delete(heartbeat_key(job_id))
    progress = Progress(job_id=job_id, attempt=1, started_at=utcnow(), client=redis_client)
    progress.update(5)
    progress.close()
    assert redis_client.ttl(heartbeat_key(job_id)) > 0
    record(job_id, JobStatus.FINISHED, event="finished")
    assert not redis_client.exists(heartbeat_key(job_id))


def test_progress_stops_applying_once_the_job_left_started(env: Backend, redis_client: Any):
    job_id = _started_job()
    progress = Progress(job_id=job_id, attempt=1, started_at=utcnow(), client=redis_client)
    record(job_id, JobStatus.CANCELED, event="canceled")
    progress.update(50)
    progress.close()
    assert progress.interrupted_by == JobStatus.CANCELED
    assert _snapshot(redis_client, job_id).status == JobStatus.CANCELED


def test_the_coalescing_writer_alone_writes_the_latest_value_and_the_last_one_lands():
    """No Redis: the writer decides what reaches ``write`` and when; Progress decides what it means."""
    from worker.progress import CoalescingWriter

    written: list[tuple[float | None, str | None, bool]] = []
    writer = CoalescingWriter(
        interval=1.0, journal_interval=10.0, write=lambda *value: written.append(value), name="t"
    )
    assert writer.offer(1.0, "first")  # the first value goes out at once, journaled
    for n in range(2, 1000):
        writer.offer(float(n), None)  # held back: only the newest waits
    assert written == [(1.0, "first", True)]
    deadline = time.monotonic() + 5
    while len(written) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    # The thread wrote the newest once the window passed; a missing message kept the last one.
    assert written[1] == (999.0, "first", False)
    writer.offer(50.0, "later")
    writer.close()  # writes what is pending before it stops
    assert written[-1][:2] == (50.0, "later") and writer.writes == len(written) == 3
    assert not writer.offer(60.0, "dropped") and len(written) == 3
