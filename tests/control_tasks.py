"""Tasks the control and fault-tolerance tests drive (loaded by every test process and worker)."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, Field

from jobs.progress_protocol import ProgressReporter
from jobs.state.redis_conn import get_redis
from jobs.tasks import task

DONE_PREFIX = "cv:test:done:"  # a counter per job: how many attempts ran to completion


class SpinPayload(BaseModel):
    seconds: float = Field(default=60, ge=0, le=600)


@task(queue="control", timeout=600)
def spin(payload: SpinPayload) -> dict[str, float]:
    """A loop that never calls a checkpoint: only a forced stop ends it early."""
    deadline = time.monotonic() + payload.seconds
    n = 0.0
    while time.monotonic() < deadline:
        n += 1
    return {"spins": n}


class StepsPayload(BaseModel):
    steps: int = Field(default=100, ge=0, le=100_000)
    step: float = Field(default=0.05, ge=0, le=10)
    report: bool = False  # progress.update each step (else only checkpoints)


@task(queue="control", timeout=600)
def steps(payload: StepsPayload, progress: ProgressReporter) -> dict[str, int]:
    """A cooperative loop: checkpoints (or progress updates) between short steps."""
    for i in range(payload.steps):
        time.sleep(payload.step)
        if payload.report:
            progress.update(i + 1, total=payload.steps, message=f"step {i + 1}")
        else:
            progress.checkpoint()
    return {"steps": payload.steps}


class FailPayload(BaseModel):
    message: str = "always"


@task(queue="control", timeout=60, retries=2, retry_backoff=1, retry_jitter=0)
def fails_with_backoff(payload: FailPayload) -> None:
    """Always fails; retried twice with exponential backoff (1 s, then 2 s)."""
    raise RuntimeError(payload.message)


class SleepPayload(BaseModel):
    seconds: float = Field(default=1, ge=0, le=600)


@task(queue="control", timeout=1)
def overruns(payload: SleepPayload) -> None:
    """Sleeps past its 1-second task timeout (unless the submission gives it more)."""
    time.sleep(payload.seconds)


@task(queue="control", timeout=600)
def sleeper(payload: SleepPayload, progress: ProgressReporter) -> dict[str, float]:
    """Sleeps in short steps with checkpoints; counts its completions."""
    return _sleep(payload, progress)


@task(queue="control", timeout=600, retries=1, retry_intervals=[0])
def retrying_sleeper(payload: SleepPayload, progress: ProgressReporter) -> dict[str, float]:
    """`sleeper`, retried once at once if its attempt is lost."""
    return _sleep(payload, progress)


class ChaosPayload(BaseModel):
    seconds: float = Field(default=0.05, ge=0, le=10)


@task(queue="control", timeout=60, retries=3, retry_intervals=[0])
def chaos_step(payload: ChaosPayload, progress: ProgressReporter) -> dict[str, float]:
    """A short job for the chaos test: sleeps, reports, and counts its completions."""
    progress.update(50, message="half way")
    time.sleep(payload.seconds)
    return _done(payload.seconds)


def _sleep(payload: SleepPayload, progress: ProgressReporter) -> dict[str, float]:
    end = time.monotonic() + payload.seconds
    while time.monotonic() < end:
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        progress.checkpoint()
    return _done(payload.seconds)


def _done(seconds: float) -> dict[str, float]:
    from rq import get_current_job

    job = get_current_job()
    if job is not None:
        get_redis().incr(DONE_PREFIX + job.id)
    return {"slept": seconds}


class StubbornPayload(BaseModel):
    seconds: float = Field(default=60, ge=0, le=600)


@task(queue="control", timeout=1)
def stubborn(payload: StubbornPayload) -> dict[str, float]:
    """Blocks the timeout's alarm signal, as a task stuck in C code would never see it: only the
    pool's hard stop (its timeout plus `hard_stop_after`) ends it."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(payload.seconds)
    return {"slept": payload.seconds}


@task(queue="control", timeout=60)
def quick(payload: SpinPayload) -> dict[str, str]:
    """Returns at once with the RQ id it ran under (what `rq.get_current_job()` says)."""
    from rq import get_current_job

    job = get_current_job()
    return {"rq_job": job.id if job is not None else "", "queue": job.origin if job is not None else ""}


@task(queue="control", timeout=600, retries=1, retry_intervals=[0])
async def async_sleeper(payload: SleepPayload, progress: ProgressReporter) -> dict[str, float]:
    """`sleeper` as an async task: awaits in short steps with checkpoints, retried once if lost."""
    end = time.monotonic() + payload.seconds
    while time.monotonic() < end:
        await asyncio.sleep(min(0.05, max(0.0, end - time.monotonic())))
        await progress.acheckpoint()
    get_redis().incr(DONE_PREFIX + progress.job_id)
    return {"slept": payload.seconds}


@task(queue="control", timeout=600)
async def async_steps(payload: StepsPayload, progress: ProgressReporter) -> dict[str, int]:
    """`steps` as an async task: awaited progress updates (or checkpoints) between short steps."""
    for i in range(payload.steps):
        await asyncio.sleep(payload.step)
        if payload.report:
            await progress.aupdate(i + 1, total=payload.steps, message=f"step {i + 1}")
        else:
            await progress.acheckpoint()
    return {"steps": payload.steps}


@task(queue="control", timeout=1)
async def async_overruns(payload: SleepPayload) -> None:
    """Awaits past its 1-second timeout: the asyncio timeout ends it."""
    await asyncio.sleep(payload.seconds)


@task(queue="control", timeout=600)
async def async_deaf(payload: SleepPayload) -> None:
    """Ignores cancellation (catches it and goes on sleeping): only killing its process ends it."""
    end = time.monotonic() + payload.seconds
    while time.monotonic() < end:
        try:
            await asyncio.sleep(end - time.monotonic())
        except asyncio.CancelledError:
            continue
