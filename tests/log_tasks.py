"""Tasks the job-log tests drive (queue `logs`): they log through `logging` and print."""

from __future__ import annotations

import asyncio
import logging
import time

from pydantic import BaseModel, Field

from jobs.progress_protocol import ProgressReporter
from jobs.tasks import task

log = logging.getLogger("tests.chatty")
log.setLevel(logging.INFO)  # the test workers' root logger says WARNING; a task's own level decides
SECRET = "hunter2-not-for-logs"


class ChattyPayload(BaseModel):
    lines: int = Field(default=10, ge=0, le=100_000)
    tag: str = Field(default="", max_length=64)
    step: float = Field(default=0.0, ge=0, le=5)
    prints: int = Field(default=0, ge=0, le=1000)
    long_line: int = Field(default=0, ge=0, le=1_000_000)
    fail: bool = False


@task(queue="logs", timeout=300)
def log_lines(payload: ChattyPayload, progress: ProgressReporter) -> dict[str, int]:
    """Logs ``lines`` lines tagged with ``tag`` (one in a hundred with a secret), ``step`` apart,
    reporting progress on each; prints ``prints`` lines; optionally one very long line."""
    if payload.long_line:
        log.warning("long %s", "x" * payload.long_line)
    for i in range(payload.prints):
        print(f"printed {payload.tag} {i}")
    for i in range(payload.lines):
        if i % 100 == 0:
            log.info("%s line %d password=%s", payload.tag, i, SECRET)
        else:
            log.info("%s line %d", payload.tag, i)
        if payload.step:
            progress.update(i + 1, total=payload.lines, message=f"line {i}")
            time.sleep(payload.step)
    if payload.fail:
        raise RuntimeError("chatty failed on purpose")
    return {"lines": payload.lines}


@task(queue="logs", timeout=300)
async def async_log_lines(payload: ChattyPayload) -> dict[str, int]:
    """``log_lines`` for an ``async def`` task: its lines are logged between awaits, so two such
    jobs in one worker process interleave line by line."""
    for i in range(payload.lines):
        log.info("%s line %d", payload.tag, i)
        await asyncio.sleep(payload.step)
    return {"lines": payload.lines}
