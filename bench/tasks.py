"""Conveyor tasks the benchmarks run: a no-op, a long hold (the detection benchmark's victim), and a
task that reports timestamped progress (fan-out). Bare RQ's functions are in bench/bare_tasks.py."""

from __future__ import annotations

import time

from pydantic import BaseModel

from bench import peer_mark
from jobs.state.redis_conn import get_redis
from jobs.tasks import task
from worker.progress import Progress


class NoPayload(BaseModel):
    pass


@task(queue="bench")
def noop(payload: NoPayload) -> None:
    """Do nothing: the benchmark measures everything around the task."""
    return None


class HoldPayload(BaseModel):
    seconds: float = 60


@task(queue="bench")
def hold(payload: HoldPayload, progress: Progress) -> None:
    """Stay busy (with checkpoints) until killed: the detection benchmark's victim."""
    end = time.monotonic() + payload.seconds
    while time.monotonic() < end:
        time.sleep(0.1)
        progress.checkpoint()


class TimedProgressPayload(BaseModel):
    updates: int = 40
    interval: float = 0.2
    go_key: str = ""
    times_key: str = ""  # if set, each update's time is also appended there (bench/page_latency.py)


@task(queue="bench")
def timed_progress(payload: TimedProgressPayload, progress: Progress) -> int:
    """Wait for the benchmark's go signal, then report progress `updates` times, each update's
    message being the wall-clock time just before `progress.update` (clients measure against it)."""
    if payload.go_key:
        client = get_redis()
        deadline = time.monotonic() + 300
        while not client.exists(payload.go_key) and time.monotonic() < deadline:
            time.sleep(0.01)
    for i in range(payload.updates):
        time.sleep(payload.interval)
        now = time.time()
        if payload.times_key:
            get_redis().rpush(payload.times_key, f"{now:.6f}")
        progress.update(i + 1, total=payload.updates, message=f"{now:.6f}")
    return payload.updates


class SoakPayload(BaseModel):
    seconds: float = 0.02


@task(queue="soak", retries=5, retry_intervals=[1])  # a worker killed mid-job means a retry, not a loss
def soak_step(payload: SoakPayload, progress: Progress) -> float:
    """bench/soak.py's job: a short sleep with progress, then one line `job_id attempt` appended to
    $SOAK_RUN_LOG (outside Redis, so a flushed Redis cannot hide a second completion)."""
    import os

    steps = 4
    for i in range(steps):
        time.sleep(payload.seconds / steps)
        progress.update(i + 1, total=steps)
    path = os.environ.get("SOAK_RUN_LOG")
    if path:
        line = f"{progress.job_id} {progress.attempt}\n".encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)  # one short O_APPEND write: lines from several processes never interleave
        finally:
            os.close(fd)
    return payload.seconds


@task(queue="bench")
def peer_noop(payload: NoPayload) -> None:
    """bench/peers.py's no-op: the shared mark (bench/peer_mark.py) is its only line."""
    peer_mark.noop()


@task(queue="bench")
def peer_sleep(payload: NoPayload) -> None:
    """bench/peers.py's 10 ms job as a sync task (`--conveyor-sleep-task` picks another)."""
    peer_mark.sleep()


@task(queue="bench")
async def peer_async_sleep(payload: NoPayload) -> None:
    """bench/peers.py's 10 ms job as an async task: `--conveyor-sleep-task peer_async_sleep`."""
    await peer_mark.async_sleep()
