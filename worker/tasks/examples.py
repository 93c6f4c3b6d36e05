"""The example tasks from the seeds: a long task with progress, an echo, and a failure."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from jobs.progress_protocol import ProgressReporter
from jobs.tasks import task


class LongTaskPayload(BaseModel):
    n: int = Field(default=50, ge=0, le=10_000_000, description="How many steps to run.")
    delay: float = Field(default=0.02, ge=0, le=60, description="Seconds to sleep per step.")


class LongTaskResult(BaseModel):
    sum: int
    n: int


@task(queue="default", timeout=3600)
def long_task(payload: LongTaskPayload, progress: ProgressReporter) -> LongTaskResult:
    """Add up 0..n-1 one step at a time, reporting progress after each step."""
    acc = 0
    for i in range(payload.n):
        if payload.delay:
            time.sleep(payload.delay)
        acc += i
        progress.update(i + 1, total=payload.n, message=f"step {i + 1}/{payload.n}")
    return LongTaskResult(sum=acc, n=payload.n)


class HeavyComputePayload(BaseModel):
    """Any JSON object: heavy_compute echoes it back."""

    model_config = {"extra": "allow"}


@task(queue="default", timeout=900)
def heavy_compute(payload: HeavyComputePayload) -> dict[str, Any]:
    """Echo the payload with a summary of its keys (seed 004's example)."""
    data = payload.model_dump()
    return {"echo": data, "summary": f"Processed keys: {list(data.keys())}"}


class AlwaysFailsPayload(BaseModel):
    message: str = Field(default="this task always fails", max_length=1000)


@task(queue="default", timeout=60)
def always_fails(payload: AlwaysFailsPayload) -> None:
    """Raise ValueError with the given message: the failure path, on purpose."""
    raise ValueError(payload.message)
