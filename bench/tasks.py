"""Tasks the benchmarks run: a no-op for Conveyor and the same as a bare RQ function; a long hold."""

from __future__ import annotations

import time

from pydantic import BaseModel

from jobs.tasks import task
from worker.progress import Progress


class NoPayload(BaseModel):
    pass


@task(queue="bench")
def noop(payload: NoPayload) -> None:
    """Do nothing: the benchmark measures everything around the task."""
    return None


def bare_noop() -> None:
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


def bare_sleep(seconds: float) -> None:
    time.sleep(seconds)
