"""One child of a worker pool: a long-lived RQ worker that runs jobs one at a time, in its own process.

The pool (worker/pool.py) forks ``--concurrency`` of these and watches them:
it keeps their heartbeats, listens for RQ's commands to them, and stops a job
by force by killing its child and starting a fresh one. A child therefore
never forks per job, and holds no SQL connection.

Each job goes one of two ways:
- the fast path (`jobs.rq_engine`): one script takes the job and records its
  start in RQ's record and Conveyor's, the task runs here (`worker.runner.perform`),
  and one script records a success in both. A failure is handed to RQ's own
  `handle_job_failure` (retries, the failed registry), as RQ's workers do.
- RQ's own path (`SimpleWorker.execute_job`, which calls `worker.runner.run_job`)
  for everything the fast path does not take: a job with a success callback or
  a repeat, a job whose live state Redis lost (the runner re-seeds it from SQL),
  or one the gate would not start.

A child is visible to RQ as a worker of its own (``rq info`` lists each).
"""

from __future__ import annotations

import logging
import os
import signal
import traceback
from dataclasses import dataclass
from types import FrameType
from typing import Any

import redis.exceptions
from rq import SimpleWorker
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.queue import Queue
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty
from rq.utils import as_text
from rq.worker import WorkerStatus

from jobs.attempts import lost_our_start, reannounce_start
from jobs.clock import utcnow
from jobs.queueing import HEARTBEAT_MARKER, RUNNER, SERIALIZER, fetch, get_queue
from jobs.redaction import redact_text
from jobs.results import discard_blob
from jobs.rq_engine import Claimed, Engine, Finished, Passed
from jobs.rq_private import current_job
from jobs.settings import get_settings
from jobs.tracing import current_trace_id
from worker.ends import EndNotes, Entry
from worker.progress import JobInterrupted
from worker.runner import attempt_of, perform, through_a_blip
from worker.slots import Slots

log = logging.getLogger(__name__)


class RedactedFailures:
    """RQ keeps the failing exception's text in its own records (the job hash's `exc_info`, its
    results stream, the failed registry): it is redacted on its way there, as every copy
    Conveyor keeps is."""

    def handle_job_failure(
        self, job: RQJob, queue: Queue, started_job_registry: Any = None, exc_string: str = ""
    ) -> None:
        super().handle_job_failure(  # type: ignore[misc]
            job, queue, started_job_registry=started_job_registry, exc_string=redact_text(exc_string)
        )


class _Stop(Exception):
    """Raised by the stop signal's handler to leave a blocking wait for the next job."""


@dataclass(frozen=True)
class ChildLimits:
    """When a child makes way for a fresh one: after ``max_jobs`` jobs, or past ``max_memory_mb``."""

    max_jobs: int = 0  # 0: no limit
    max_memory_mb: int = 0  # 0: no limit


def resident_mb() -> float:
    """This process's resident memory in MiB (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class ConveyorChild(RedactedFailures, SimpleWorker):
    """A pool's child: RQ's in-process worker with Conveyor's fast path for its jobs."""

    def __init__(
        self,
        queues: list[Queue],
        *,
        index: int,
        slots: Slots,
        limits: ChildLimits,
        notes: EndNotes | None = None,
        wait_timeout: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(queues, **kwargs)
        self.notes = notes
        self.index = index
        self.slots = slots
        self.limits = limits
        self.wait_timeout = wait_timeout
        self.engine = Engine(self.connection, self.name)
        self.jobs_done = 0
        self._waiting = False

    # The pool listens to this worker's command channel (stop-job, kill-horse, shutdown) and acts.
    def subscribe(self) -> None:
        pass

    def unsubscribe(self) -> None:
        pass

    def serialize(self) -> dict[str, Any]:
        data: dict[str, Any] = super().serialize()
        data[HEARTBEAT_MARKER] = get_settings().heartbeat_interval  # the pool keeps last_heartbeat fresh
        return data

    def _install_signal_handlers(self) -> None:
        """SIGTERM: finish the running job, then stop. SIGINT goes to the pool, which decides."""
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop_requested = True
        if self._waiting:
            raise _Stop

    def run(self, *, burst: bool = False) -> None:
        """Take and run jobs until stopped (or, with ``burst``, until the queues are empty)."""
        os.environ["RQ_WORKER_ID"] = self.name  # the runner names the worker in each start
        self._install_signal_handlers()
        self.register_birth()
        self.set_state(WorkerStatus.STARTED)
        try:
            while not self._stop_requested:
                job = self._next(burst=burst)
                if job is None:
                    break
                self._run(job)
                self.jobs_done += 1
                if self._spent():
                    break
        finally:
            self.register_death()

    def _spent(self) -> bool:
        limits = self.limits
        if limits.max_jobs and self.jobs_done >= limits.max_jobs:
            log.info("worker %s: made way for a fresh child after %d jobs", self.name, self.jobs_done)
            return True
        if limits.max_memory_mb and resident_mb() > limits.max_memory_mb:
            log.info("worker %s: made way for a fresh child past %d MB", self.name, limits.max_memory_mb)
            return True
        return False

    # --- taking a job ----------------------------------------------------------------------------

    def _next(self, *, burst: bool) -> Claimed | Passed | None:
        names = self.queue_names()
        while not self._stop_requested:
            got = self.engine.claim(names)
            if got is not None:
                return got
            if burst:
                return None
            popped = self._wait(names)
            if popped is not None:
                got = self.engine.claim(names, popped=popped, intermediate=len(names) == 1)
                if got is not None:
                    return got
        return None

    def _wait(self, names: list[str]) -> tuple[str, str] | None:
        """Block until a job arrives: (job id, queue), or None after the wait timeout or a stop.

        One queue: RQ's BLMOVE into its intermediate list, so a job is never only in memory.
        Several: BLPOP over all of them, as RQ's own dequeue does.
        """
        self.set_state(WorkerStatus.IDLE)
        self._waiting = True
        try:
            if self._stop_requested:
                return None
            if len(names) == 1:
                queue = self.queues[0]
                job_id = self.connection.blmove(queue.key, queue.intermediate_queue_key, self.wait_timeout)
                return (as_text(job_id), names[0]) if isinstance(job_id, bytes | str) else None
            reply = self.connection.blpop([q.key for q in self.queues], self.wait_timeout)
            if reply is None:
                return None
            key, job_id = reply
            return job_id.decode(), key.decode().removeprefix(Queue.redis_queue_namespace_prefix)
        except _Stop:
            return None
        finally:
            self._waiting = False

    # --- running it ------------------------------------------------------------------------------

    def _run(self, job: Claimed | Passed) -> None:
        if isinstance(job, Passed):
            self._run_rq_way(job)
            if job.job_id is not None and self.notes is not None:
                self.notes.ended(job.job_id)
            return
        timeout = job.timeout or get_settings().job_timeout
        self.slots.begin(self.index, job.job_id, timeout=timeout + get_settings().hard_stop_after)
        # Raises only when this child must end (a fault in its own code, SystemExit from a task):
        # the slot then still names the job, and the pool records the attempt's end as it reaps.
        entries = self._run_claimed(job, timeout)
        self.slots.end(self.index)
        current_trace_id.set(None)
        if self.notes is not None:
            self.notes.ended(job.job_id, entries)

    def _run_rq_way(self, passed: Passed) -> None:
        """RQ's own path, for a job the fast path does not take (see the module docstring)."""
        if passed.job_id is None:
            return  # its hash is gone: RQ's dequeue skips such ids too
        rq_job = fetch(passed.job_id, self.connection)
        if rq_job is None:
            return
        queue = get_queue(passed.queue, self.connection)
        self.slots.begin(self.index, rq_job.id, timeout=(rq_job.timeout or get_settings().job_timeout) + 60)
        try:
            self.execute_job(rq_job, queue)
        finally:
            self.slots.end(self.index)

    def _run_claimed(self, claimed: Claimed, timeout: int) -> list[Entry] | None:
        """Run a claimed job; returns the journal entries of its start, its last progress and its
        end when it finished here (None: its end was recorded another way, see worker/ends.py)."""
        if claimed.func_name != RUNNER:  # a job another app put on this queue, under Conveyor's id
            self._fail_rq_way(claimed, None, f"not a Conveyor job: {claimed.func_name}", no_retry=True)
            return None
        attempt = attempt_of(claimed.started)
        self.slots.started(self.index, attempt)
        current_trace_id.set(claimed.meta.get("trace_id"))
        no_retry = False

        def dont_retry() -> None:
            nonlocal no_retry
            no_retry = True

        loaded: list[RQJob | None] = []

        def rq_job() -> RQJob | None:
            if not loaded:
                loaded.append(fetch(claimed.job_id, self.connection))
            return loaded[0]

        task, payload = claimed.kwargs["task"], claimed.kwargs["payload"]
        # What a task sees of RQ's record through `rq.get_current_job()`, built without a fetch.
        context = RQJob(id=claimed.job_id, connection=self.connection, serializer=SERIALIZER)
        context.origin, context.meta, context.timeout = claimed.queue, claimed.meta, timeout
        try:
            with (
                current_job(context),
                UnixSignalDeathPenalty(timeout, JobTimeoutException, job_id=claimed.job_id),
            ):
                success = perform(
                    task,
                    payload,
                    job_id=claimed.job_id,
                    attempt=attempt,
                    started_at=claimed.started_at,
                    client=self.connection,
                    rq_job=rq_job,
                    no_retry=dont_retry,
                )
        except JobInterrupted as exc:
            self.log.info("Worker %s: job %s stopped: %s", self.name, claimed.job_id, exc)
            self._fail_rq_way(claimed, rq_job(), f"{type(exc).__name__}: {exc}", no_retry=True)
            return None
        except BaseException as exc:  # the runner recorded it; RQ's record follows RQ's own rules
            self.log.error("Worker %s: job %s failed", self.name, claimed.job_id, exc_info=exc)
            text = "".join(traceback.format_exception(exc))
            self._fail_rq_way(claimed, rq_job(), text, no_retry=no_retry)
            if not isinstance(exc, Exception):
                raise  # SystemExit and the like end this child; the pool starts a fresh one
            return None
        finished = self._finish(claimed, attempt, success.patch, success.rq_value)
        if success.result_ref is not None and not finished.result.applied:
            discard_blob(claimed.job_id, attempt, self.connection)
        if finished.has_dependents:
            self._release_dependents(claimed)
        start, end = claimed.started, finished.result
        if not (end.applied and start.doc and end.doc):
            return None
        return [
            ("started", start.doc, self.engine.start_data, start.entry_id or b""),
            *(("progress", doc, "", entry_id) for doc, entry_id in success.progress),
            ("finished", end.doc, "", end.entry_id or b""),
        ]

    def _finish(self, claimed: Claimed, attempt: int, patch: dict[str, Any], rq_value: Any) -> Finished:
        def finish() -> Finished:
            return self.engine.finish(claimed, patch, attempt=attempt, rq_result=rq_value)

        finished = through_a_blip(finish)
        if finished.result.outcome == "missing" or (
            lost_our_start(finished.result)
            and reannounce_start(
                claimed.job_id, attempt, claimed.started_at, worker=self.name, client=self.connection
            )
        ):
            finished = through_a_blip(finish)
        return finished

    def _release_dependents(self, claimed: Claimed) -> None:
        rq_job = fetch(claimed.job_id, self.connection)
        if rq_job is not None:
            get_queue(claimed.queue, self.connection).enqueue_dependents(rq_job)

    def _fail_rq_way(
        self, claimed: Claimed, rq_job: RQJob | None, exc_string: str, *, no_retry: bool
    ) -> None:
        """RQ's own handling of a failed execution: its retry, its failed registry, its counters."""
        if rq_job is None:
            rq_job = fetch(claimed.job_id, self.connection)
            if rq_job is None:
                return
        if no_retry:
            rq_job.retries_left = 0
        execution = Execution(claimed.execution_id, claimed.job_id, self.connection, worker_name=self.name)
        execution.created_at = claimed.started_at
        self.execution = execution
        rq_job.started_at = claimed.started_at
        rq_job.ended_at = utcnow()
        try:
            self.handle_job_failure(
                rq_job,
                get_queue(claimed.queue, self.connection),
                started_job_registry=get_queue(claimed.queue, self.connection).started_job_registry,
                exc_string=exc_string,
            )
        except redis.exceptions.RedisError:
            log.exception("worker %s: could not record RQ's failure of job %s", self.name, claimed.job_id)
        finally:
            self.execution = None

    def handle_exception(self, job: RQJob, *exc_info: Any) -> None:
        """A canceled or superseded attempt is not an error: one line, no traceback."""
        if len(exc_info) > 1 and isinstance(exc_info[1], JobInterrupted):
            self.log.info("Worker %s: job %s stopped: %s", self.name, job.id, exc_info[1])
            return
        super().handle_exception(job, *exc_info)
