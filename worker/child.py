"""One child of a worker pool: a long-lived RQ worker that runs jobs one at a time, in its own process.

The pool (worker/pool.py) forks ``--concurrency`` of these and watches them:
it keeps their heartbeats, listens for RQ's commands to them, and stops a job
by force by killing its child and starting a fresh one. A child therefore
never forks per job, and holds no SQL connection.

Each job goes one of two ways:
- the fast path (`jobs.queues.rq_engine`): one script takes the job and records its
  start in RQ's record and Conveyor's, the task runs here (`worker.runner.perform`),
  and one script records a success in both. A failure is handed to RQ's own
  `handle_job_failure` (retries, the failed registry), as RQ's workers do.
- RQ's own path (`SimpleWorker.execute_job`, which calls `worker.runner.run_job`)
  for everything the fast path does not take: a job with a success callback or
  a repeat, a job whose live state Redis lost (the runner re-seeds it from SQL),
  or one the gate would not start.

An ``async def`` task's job runs on the child's event loop (worker/async_jobs.py)
while the main thread takes the next one, up to ``async_concurrency`` at once; a
sync job waits until no async job runs, then runs alone, so that its forced stop
(which kills the child) never takes async jobs with it.

A child is visible to RQ as a worker of its own (``rq info`` lists each); RQ's
model has one current job per worker, so with async jobs its hash names the last
one taken (each job has its own execution record, as with RQ's own workers).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from types import FrameType
from typing import Any

import redis.exceptions
from redis import Redis
from rq import SimpleWorker
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.queue import Queue
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty
from rq.utils import as_text
from rq.worker import WorkerStatus

from jobs.access.redaction import redact_text
from jobs.clock import utcnow
from jobs.errors import UnknownTask
from jobs.queues.queue_control import PAUSED
from jobs.queues.queueing import HEARTBEAT_MARKER, RUNNER, SERIALIZER, fetch, get_queue, release_abandoned
from jobs.queues.rq_engine import Claimed, Engine, Finished, Passed
from jobs.queues.rq_private import current_job
from jobs.settings import get_settings
from jobs.state.attempts import lost_our_start, reannounce_start
from jobs.state.results import discard_blob
from jobs.tasks import get_task
from jobs.tracing import current_trace_id
from worker.async_jobs import AsyncJobs
from worker.ends import EndNotes, Entry
from worker.progress import JobCanceled, JobInterrupted
from worker.runner import Success, attempt_of, perform, perform_async, through_a_blip
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


class _Attempt:
    """One claimed attempt as the runner needs it: RQ's record loaded only when wanted, and
    whether RQ may retry it."""

    def __init__(self, claimed: Claimed, number: int, connection: Redis) -> None:
        self.claimed = claimed
        self.number = number
        self.no_retry = False
        self._connection = connection
        self._loaded: list[RQJob | None] = []

    def dont_retry(self) -> None:
        self.no_retry = True

    def rq_job(self) -> RQJob | None:
        if not self._loaded:
            self._loaded.append(fetch(self.claimed.job_id, self._connection))
        return self._loaded[0]

    def perform_args(self) -> dict[str, Any]:
        claimed = self.claimed
        return {
            "task": claimed.kwargs["task"],
            "payload": claimed.kwargs["payload"],
            "job_id": claimed.job_id,
            "attempt": self.number,
            "started_at": claimed.started_at,
            "client": self._connection,
            "rq_job": self.rq_job,
            "no_retry": self.dont_retry,
        }


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
        self.slot = slots.of(index)[0]  # where its sync jobs run; async ones take the others
        self.async_jobs: AsyncJobs | None = None
        self._rq_lock = threading.Lock()  # RQ's failure handling keeps state on the worker
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
                if self.async_jobs is not None:
                    self.async_jobs.wait_for_room()
                job = self._next(burst=burst)
                if job is None:
                    break
                self._run(job)
                self.jobs_done += 1
                if self._spent():
                    break
        finally:
            if self.async_jobs is not None:
                self.async_jobs.drain()
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
            paused = {as_text(name) for name in self.connection.smembers(PAUSED)}
            waiting_on = [q for q in self.queues if q.name not in paused]
            if not waiting_on:  # every queue paused: look again in a second
                time.sleep(min(1.0, self.wait_timeout or 1.0))
                return None
            if len(names) == 1:
                queue = self.queues[0]
                job_id = self.connection.blmove(queue.key, queue.intermediate_queue_key, self.wait_timeout)
                return (as_text(job_id), names[0]) if isinstance(job_id, bytes | str) else None
            reply = self.connection.blpop([q.key for q in waiting_on], self.wait_timeout)
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
        if isinstance(job, Claimed) and self._is_async(job):
            self._start_async(job)
            return
        if self.async_jobs is not None:
            self.async_jobs.drain()  # a sync job runs alone: its forced stop kills no async job
        if isinstance(job, Passed):
            self._run_rq_way(job)
            if job.job_id is not None and self.notes is not None:
                self.notes.ended(job.job_id)
            return
        timeout = job.timeout or get_settings().job_timeout
        self.slots.begin(self.slot, job.job_id, timeout=timeout + get_settings().hard_stop_after)
        # Raises only when this child must end (a fault in its own code, SystemExit from a task):
        # the slot then still names the job, and the pool records the attempt's end as it reaps.
        entries = self._run_claimed(job, timeout)
        self.slots.end(self.slot)
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
        self.slots.begin(self.slot, rq_job.id, timeout=(rq_job.timeout or get_settings().job_timeout) + 60)
        try:
            self.execute_job(rq_job, queue)
        finally:
            self.slots.end(self.slot)

    def _run_claimed(self, claimed: Claimed, timeout: int) -> list[Entry] | None:
        """Run a claimed job; returns the journal entries of its start, its last progress and its
        end when it finished here (None: its end was recorded another way, see worker/ends.py)."""
        if claimed.func_name != RUNNER:  # a job another app put on this queue, under Conveyor's id
            self._fail_rq_way(claimed, None, f"not a Conveyor job: {claimed.func_name}", no_retry=True)
            return None
        attempt = self._attempt(claimed, self.slot)
        # What a task sees of RQ's record through `rq.get_current_job()`, built without a fetch.
        context = RQJob(id=claimed.job_id, connection=self.connection, serializer=SERIALIZER)
        context.origin, context.meta, context.timeout = claimed.queue, claimed.meta, timeout
        try:
            with (
                current_job(context),
                UnixSignalDeathPenalty(timeout, JobTimeoutException, job_id=claimed.job_id),
            ):
                success = perform(**attempt.perform_args())
        except BaseException as exc:
            self._failed(attempt, exc)
            return None
        return self._succeeded(attempt, success)

    # --- async jobs --------------------------------------------------------------------------------

    def _is_async(self, claimed: Claimed) -> bool:
        if claimed.func_name != RUNNER:
            return False
        try:
            return get_task(claimed.kwargs["task"]).is_async
        except (UnknownTask, KeyError):
            return False  # the sync path records the failure

    def _start_async(self, claimed: Claimed) -> None:
        """Hand an async job to this child's event loop (started with its first async job)."""
        if self.async_jobs is None:
            room = self.slots.of(self.index)
            self.async_jobs = AsyncJobs(self.slots, room[1:], get_settings().async_concurrency)
        jobs = self.async_jobs
        timeout = claimed.timeout or get_settings().job_timeout
        hard = timeout + get_settings().hard_stop_after

        def begin(slot: int) -> None:
            self.slots.begin(slot, claimed.job_id, timeout=hard, concurrent=True)

        async def run(slot: int) -> None:
            entries = None
            try:
                entries = await self._run_async(jobs, claimed, timeout, slot)
            except Exception:  # its end is unknown: its heartbeat stops and the reconciler settles it
                log.exception(
                    "worker %s: could not record the end of async job %s", self.name, claimed.job_id
                )
            finally:
                self.slots.end(slot)
                if self.notes is not None:
                    self.notes.ended(claimed.job_id, entries)

        jobs.start(run, begin)

    async def _run_async(
        self, jobs: AsyncJobs, claimed: Claimed, timeout: int, slot: int
    ) -> list[Entry] | None:
        """`_run_claimed` for an async job, on the event loop (its end recorded off the loop).

        RQ's `get_current_job()` is not set: RQ keeps it per thread, and the loop's thread runs
        many jobs at once (a task has ``progress.job_id``)."""
        attempt = self._attempt(claimed, slot)
        work = perform_async(
            **attempt.perform_args(), timeout=timeout, stop_asked=lambda: self.slots.stop_asked(slot)
        )
        try:
            success = await jobs.cancellable(slot, work)
        except BaseException as exc:
            failure = exc
            await jobs.off_loop(lambda: self._failed(attempt, failure))
            return None
        return await jobs.off_loop(lambda: self._succeeded(attempt, success))

    # --- how an attempt ends -----------------------------------------------------------------------

    def _attempt(self, claimed: Claimed, slot: int) -> _Attempt:
        attempt = _Attempt(claimed, attempt_of(claimed.started), self.connection)
        self.slots.started(slot, attempt.number)
        current_trace_id.set(claimed.meta.get("trace_id"))
        return attempt

    def _failed(self, attempt: _Attempt, exc: BaseException) -> None:
        """RQ's record of an attempt that did not succeed (the runner recorded Conveyor's)."""
        claimed = attempt.claimed
        if isinstance(exc, JobCanceled) and exc.forced:  # an async job stopped by asyncio cancellation
            self.log.info("Worker %s: job %s stopped by force: %s", self.name, claimed.job_id, exc)
            rq_job = attempt.rq_job()
            if rq_job is not None:
                release_abandoned(rq_job, self.connection, outcome="canceled")
            return
        if isinstance(exc, JobInterrupted):
            self.log.info("Worker %s: job %s stopped: %s", self.name, claimed.job_id, exc)
            self._fail_rq_way(claimed, attempt.rq_job(), f"{type(exc).__name__}: {exc}", no_retry=True)
            return
        # RQ's record follows RQ's own rules
        self.log.error("Worker %s: job %s failed", self.name, claimed.job_id, exc_info=exc)
        text = "".join(traceback.format_exception(exc))
        self._fail_rq_way(claimed, attempt.rq_job(), text, no_retry=attempt.no_retry)
        if not isinstance(exc, Exception):
            raise exc  # SystemExit and the like end this child; the pool starts a fresh one

    def _succeeded(self, attempt: _Attempt, success: Success) -> list[Entry] | None:
        claimed = attempt.claimed
        finished = self._finish(claimed, attempt.number, success.patch, success.rq_value)
        if success.result_ref is not None and not finished.result.applied:
            discard_blob(claimed.job_id, attempt.number, self.connection)
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
        with self._rq_lock:
            self._handle_failure(claimed, rq_job, exc_string)

    def _handle_failure(self, claimed: Claimed, rq_job: RQJob, exc_string: str) -> None:
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
