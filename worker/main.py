"""The worker process: RQ's forking Worker, with a recorder child process beside it.

RQ's forking `Worker` is the default because it can stop a running job and
keeps heartbeating while a job runs; `SimpleWorker` is an opt-in for
trusted, millisecond jobs (`--simple`), and sends no job heartbeat while a
job runs.

The recorder (journal -> SQL) runs as a child process rather than a thread:
the worker forks a work-horse per job, and forking a process whose other
threads may hold locks (SQLite's, a connection pool's) is how deadlocks are
born; it also keeps SQL work off the worker's GIL.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from types import FrameType
from typing import Any

import redis.exceptions
from redis import Redis
from rq import SimpleWorker, Worker
from rq.job import Job as RQJob
from rq.queue import Queue

from jobs.attempts import end_failed_attempt
from jobs.clock import utcnow
from jobs.lifecycle import record
from jobs.live import decode_head, heartbeat_key, live_store, read_head_in
from jobs.maintenance import Maintenance
from jobs.queueing import HEARTBEAT_MARKER, SERIALIZER, get_queue, retry_in
from jobs.recorder import Recorder, record_end_now
from jobs.redaction import install_log_redaction, redact_text
from jobs.redis_conn import redis_url, use_redis
from jobs.rq_private import (
    enqueue_without_dependency_check,
    first_shutdown_signal_at,
    forget_work_horse,
    shutdown_requested_at,
)
from jobs.settings import get_settings
from jobs.status import RUNNING, JobStatus
from jobs.tasks import load_tasks
from jobs.tracing import TraceIdFilter
from worker import runner  # noqa: F401  (RQ imports the runner by name: load it before forking)
from worker.progress import JobInterrupted

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class RedactedFailures:
    """RQ keeps the failing exception's text in its own records (the job hash's `exc_info`, its
    results stream, the failed registry): it is redacted on its way there, as every copy
    Conveyor keeps is. Mixed into both worker classes."""

    def handle_job_failure(
        self, job: RQJob, queue: Queue, started_job_registry: Any = None, exc_string: str = ""
    ) -> None:
        super().handle_job_failure(  # type: ignore[misc]
            job, queue, started_job_registry=started_job_registry, exc_string=redact_text(exc_string)
        )


class ConveyorSimpleWorker(RedactedFailures, SimpleWorker):
    """RQ's in-process worker (`--simple`), with RQ's record of a failure redacted."""


class ConveyorWorker(RedactedFailures, Worker):
    """RQ's forking worker, plus what Conveyor needs from the parent process.

    - It keeps the running job's heartbeat key alive every `heartbeat_interval`
      (RQ wakes this often to monitor its work-horse), so the reconciler can
      tell an abandoned job from a quiet one within seconds.
    - A paused job's time does not count against its timeout: the work-horse
      sets its alarm aside while paused, and this process leaves paused time
      out of the working time it checks against ``timeout + 60``.
    - On SIGTERM it lets the running job finish (RQ's warm shutdown) for up to
      `shutdown_grace` seconds, then requeues it as a new attempt and stops
      its work-horse, so a rolling restart loses nothing.
    - It freezes the garbage collector's view of the parent's objects around
      each fork, so collections in the work-horse do not dirty (copy) the
      pages of every object it inherited.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reset_job_state(None)

    def _reset_job_state(self, job_id: str | None) -> None:
        self._job_id = job_id
        self._attempt = 0
        self._paused_seconds = 0.0
        self._paused_since: float | None = None
        self._requeued_job_id: str | None = None

    def serialize(self) -> dict[str, Any]:
        data: dict[str, Any] = super().serialize()
        data[HEARTBEAT_MARKER] = get_settings().heartbeat_interval
        if self._job_id:  # so that a worker hash rebuilt after a Redis restart still names its job
            data["current_job"] = self._job_id
        return data

    def execute_job(self, job: RQJob, queue: Queue) -> None:
        self._reset_job_state(job.id)
        try:
            super().execute_job(job, queue)
            self._record_end_in_sql(job.id)
        finally:
            self._reset_job_state(None)

    def _record_end_in_sql(self, job_id: str) -> None:
        """Make the job's end durable in SQL before this worker takes its next job (see
        `jobs.recorder.record_end_now`); a database outage is logged and left to the recorder."""
        try:
            record_end_now(self.connection, job_id)
        except Exception:
            log.exception("worker %s: could not record the end of job %s in SQL yet", self.name, job_id)

    def set_current_job_working_time(self, current_job_working_time: float, pipeline: Any = None) -> None:
        paused = self._paused_seconds
        if self._paused_since is not None:
            paused += time.monotonic() - self._paused_since
        with _through_redis_blips(self.name):
            super().set_current_job_working_time(
                max(0.0, current_job_working_time - paused), pipeline=pipeline
            )

    def maintain_heartbeats(self, job: RQJob) -> None:
        with _through_redis_blips(self.name):
            self._maintain_heartbeats(job)

    def _maintain_heartbeats(self, job: RQJob) -> None:
        super().maintain_heartbeats(job)
        ttl = get_settings().heartbeat_ttl
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.set(heartbeat_key(job.id), 1, ex=ttl, xx=True)
            read_head_in(pipe, job.id, ("status", "attempt"))
            _, reply = pipe.execute()
        head = decode_head(("status", "attempt"), reply)
        if head.status is None:  # Redis lost its data while the job runs: say again that it is alive
            self.connection.set(heartbeat_key(job.id), 1, ex=ttl)
        else:
            self._attempt = head.attempt or 0
            self._track_pause(head.status == JobStatus.PAUSED)
        asked = shutdown_requested_at(self)
        if asked is not None:
            waited = (utcnow() - asked).total_seconds()
            if waited >= get_settings().shutdown_grace:
                self.requeue_current_job(job, reason=f"worker shutdown: still running after {waited:.0f}s")

    def _track_pause(self, paused: bool) -> None:
        now = time.monotonic()
        if paused and self._paused_since is None:
            self._paused_since = now
        elif not paused and self._paused_since is not None:
            self._paused_seconds += now - self._paused_since
            self._paused_since = None

    def requeue_current_job(self, job: RQJob, *, reason: str) -> bool:
        """Give the running job back to the queue as a new attempt, then stop its work-horse.

        The new attempt is recorded first, so the old work-horse's last writes
        are refused as stale; RQ's record is requeued when the horse is gone
        (see `handle_job_failure`). It does not use up a retry.
        """
        if self._requeued_job_id == job.id or not self.horse_pid:
            return False
        requeued = record(
            job.id,
            JobStatus.QUEUED,
            event="requeued",
            new_attempt=True,
            from_statuses=RUNNING,
            expect_attempt=self._attempt,
            patch={"enqueued_at": utcnow(), "eta_seconds": None, "message": "requeued: " + reason},
            data={"reason": reason, "worker": self.name},
        )
        if not requeued.applied:
            return False
        log.warning("worker %s: requeued job %s (%s)", self.name, job.id, reason)
        self._requeued_job_id = job.id
        self.kill_horse()
        return True

    def handle_work_horse_killed(self, job: RQJob, retpid: int, ret_val: int, rusage: Any) -> None:
        """The work-horse died without reporting (OOM killer, SIGKILL): record how the attempt ends."""
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        if job.id == self._requeued_job_id:
            return
        error = {
            "type": "WorkHorseKilled",
            "detail": f"The work-horse process died unexpectedly (status {ret_val}).",
        }
        ended = end_failed_attempt(job.id, error, attempt=self._attempt, retry_in=retry_in(job))
        if ended.outcome == "canceled":
            job.retries_left = 0

    def handle_job_failure(
        self, job: RQJob, queue: Queue, started_job_registry: Any = None, exc_string: str = ""
    ) -> None:
        if job.id != self._requeued_job_id:
            super().handle_job_failure(
                job, queue, started_job_registry=started_job_registry, exc_string=exc_string
            )
            return
        with self.connection.pipeline() as pipe:
            pipe.multi()
            self.cleanup_execution(job, pipeline=pipe)
            job.started_at = job.ended_at = None
            enqueue_without_dependency_check(queue, job, pipeline=pipe)  # as RQ's retry: no WATCH in MULTI
            pipe.execute()

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        """A second SIGTERM/SIGINT: requeue the running job at once instead of abandoning it."""
        since = first_shutdown_signal_at(self)
        if since is not None and (utcnow() - since).total_seconds() < 1:
            return  # the same shutdown signal delivered twice (RQ ignores it too)
        job = self.get_current_job() if self.horse_pid else None
        if job is not None and self.requeue_current_job(job, reason="worker shutdown (forced)"):
            with contextlib.suppress(OSError):
                self.wait_for_horse()
            self.handle_job_failure(job, get_queue(job.origin, self.connection))
            forget_work_horse(self)
        super().request_force_stop(signum, frame)

    def handle_exception(self, job: RQJob, *exc_info: Any) -> None:
        """A canceled or superseded attempt is not an error: one line, no traceback."""
        if len(exc_info) > 1 and isinstance(exc_info[1], JobInterrupted):
            self.log.info("Worker %s: job %s stopped: %s", self.name, job.id, exc_info[1])
            return
        super().handle_exception(job, *exc_info)

    def fork_work_horse(self, job: RQJob, queue: Queue) -> None:
        gc.freeze()
        try:
            super().fork_work_horse(job, queue)
        finally:
            gc.unfreeze()


@contextlib.contextmanager
def _through_redis_blips(worker: str) -> Iterator[None]:
    """While a job runs, a Redis that is briefly unreachable (a restart, a failover) must not end the
    worker: its death would take the work-horse with it (PDEATHSIG). The next tick tries again."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        log.warning("worker %s: Redis unreachable while a job runs (%s); trying again next tick", worker, exc)


def worker_name() -> str:
    return f"{socket.gethostname()}.{uuid.uuid4().hex[:8]}"


def _die_with_parent() -> None:
    """In a child of the worker: get SIGTERM if the worker dies, so no orphan lingers (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def children_die_with_the_worker() -> None:
    """Every process this worker forks (RQ's scheduler, each work-horse) gets SIGTERM when it dies.

    After ``kill -9`` of a worker, RQ's scheduler child would live on as an orphan holding the
    scheduler lock, and a work-horse would finish its job unwatched while the reconciler, seeing
    the heartbeat stop, runs it again. Only forks of this process itself are marked: a task's own
    forks inside a work-horse keep the usual semantics (PDEATHSIG fires when the forking *thread*
    ends, which would surprise a task forking from a thread).
    """
    worker_pid = os.getpid()

    def marked() -> None:
        if os.getppid() == worker_pid:
            _die_with_parent()

    os.register_at_fork(after_in_child=marked)


# The recorder child runs this module's main() (worker/recorder.py). It cannot be imported here
# for its name (it imports this module); tests/test_seams.py checks the name resolves.
RECORDER_ENTRY = "worker.recorder"


def start_recorder_process(name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", RECORDER_ENTRY, "--name", name],
        preexec_fn=_die_with_parent,
    )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def configure_logging() -> None:
    """Log lines carry the running job's trace id; secrets are redacted from every record."""
    logging.basicConfig(
        level=get_settings().log_level,
        format="%(asctime)s %(levelname)s %(name)s [trace %(trace_id)s]: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(TraceIdFilter())
    install_log_redaction()


def run_worker(
    queues: list[str] | None = None,
    *,
    burst: bool = False,
    simple: bool = False,
    name: str | None = None,
    recorder: bool = True,
) -> bool:
    """Run a worker until it is stopped (or, with ``burst``, until the queues are empty)."""
    settings = get_settings()
    configure_logging()
    name = name or worker_name()
    recorder_proc = start_recorder_process(f"{name}.recorder") if recorder else None

    connection = Redis.from_url(redis_url())
    use_redis(connection)
    live_store(connection)  # register the gate's scripts once; every work-horse inherits them
    load_tasks()  # import task modules once, before forking, so every work-horse starts warm
    children_die_with_the_worker()
    worker_class = ConveyorSimpleWorker if simple else ConveyorWorker
    worker = worker_class(
        [get_queue(q, connection) for q in (queues or settings.queues)],
        connection=connection,
        serializer=SERIALIZER,
        name=name,
        job_monitoring_interval=max(1, int(settings.heartbeat_interval)),
    )
    try:
        return bool(worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level))
    finally:
        if recorder_proc is not None:
            stop_process(recorder_proc)  # it drains what is left before exiting


def run_recorder(name: str | None = None, *, maintenance: bool = True) -> None:
    """Replay the journal into SQL until SIGTERM/SIGINT; then drain what is left and exit.

    Beside it, a thread runs the maintenance loop: the reconciler and the
    recurring (cron) jobs, both of which need SQL, which work-horses never open.
    """
    configure_logging()
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    settings = get_settings()
    consumer = name or f"{worker_name()}.recorder"
    client = Redis.from_url(redis_url(), socket_timeout=30)
    use_redis(client)
    thread = None
    if maintenance:
        load_tasks()
        loop = Maintenance(client, name=consumer)
        thread = threading.Thread(target=loop.run, args=(stop,), name="maintenance", daemon=True)
        thread.start()
    recorder = Recorder(client, consumer=consumer, claim_idle=settings.recorder_claim_idle)
    recorder.run(stop, block=0.5)
    recorder.drain()
    if thread is not None:
        thread.join(timeout=10)
