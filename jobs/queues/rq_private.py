"""Every use of RQ's private API, in one place, checked against rq 2.12.0.

Conveyor steers RQ in a few places where RQ has no public way to do what is
needed. Each such use is a small function here, so an RQ upgrade is reviewed in
one file, and `tests/test_rq_private.py` fails loudly (naming the function) if
RQ renames or reshapes what these rely on. When upgrading RQ: run that test,
read RQ's changelog for these names, then update ``CHECKED_AGAINST``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from rq.executions import Execution

if TYPE_CHECKING:  # types only: callers load the RQ modules they use (rq.cron only for cron)
    from redis import Redis
    from redis.client import Pipeline
    from rq.cron import CronJob, CronScheduler
    from rq.job import Job as RQJob
    from rq.queue import Queue
    from rq.worker import BaseWorker

CHECKED_AGAINST = "2.12.0"


def enqueue_without_dependency_check(queue: Queue, rq_job: RQJob, *, pipeline: Pipeline) -> None:
    """Put a job back at the front of its queue inside the caller's MULTI.

    `Queue._enqueue_job`: RQ's own path back into a queue (its retry and its
    scheduler use it). The public `enqueue_job` checks dependencies, which
    WATCHes inside a transaction; a job that already ran had them met.
    """
    queue._enqueue_job(rq_job, pipeline=pipeline, at_front=True)


def add_cron_jobs(scheduler: CronScheduler, jobs: Iterable[CronJob]) -> None:
    """Give RQ's cron scheduler ready-made jobs (`CronScheduler._cron_jobs`).

    Its public `register` builds a plain `CronJob` from a function; Conveyor's
    firings are a subclass that submits through Conveyor instead.
    """
    scheduler._cron_jobs.extend(jobs)


def execution_key(job_id: str, execution_id: str, connection: Redis) -> str:
    """The key of RQ's record of one execution (which worker runs it), without fetching it."""
    return Execution(execution_id, job_id, connection).key


def shutdown_requested_at(worker: BaseWorker) -> datetime | None:
    """When this worker was asked to stop (warm shutdown), or None; read from memory, not Redis.

    `_stop_requested` and `_shutdown_requested_date` are set by RQ's signal handler.
    """
    return worker._shutdown_requested_date if worker._stop_requested else None


def first_shutdown_signal_at(worker: BaseWorker) -> datetime | None:
    """When the first stop signal arrived (`_shutdown_requested_date`), before RQ's own handling."""
    return worker._shutdown_requested_date


def forget_work_horse(worker: BaseWorker) -> None:
    """Tell RQ the work-horse is gone (`_horse_pid`), after Conveyor waited for it itself."""
    worker._horse_pid = 0


@contextmanager
def current_job(rq_job: RQJob) -> Iterator[None]:
    """Make ``rq_job`` what `rq.get_current_job()` returns while a task runs outside `Job.perform`
    (the worker's fast path): RQ keeps it on `rq.job._job_stack`, which `perform` pushes."""
    from rq.job import _job_stack

    _job_stack.push(rq_job)
    try:
        yield
    finally:
        _job_stack.pop()
