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
import signal
import socket
import subprocess
import sys
import threading
import uuid
from typing import Any

from redis import Redis
from rq import SimpleWorker, Worker
from rq.job import Job as RQJob
from rq.queue import Queue

from jobs.live import heartbeat_key
from jobs.queueing import SERIALIZER, get_queue
from jobs.recorder import Recorder
from jobs.redaction import install_log_redaction
from jobs.redis_conn import redis_url, use_redis
from jobs.settings import get_settings
from jobs.tasks import load_tasks
from jobs.tracing import TraceIdFilter
from worker.runner import record_attempt_failed

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def on_work_horse_killed(job: RQJob, retpid: int, ret_val: int, rusage: Any) -> None:
    """The work-horse died without reporting (OOM killer, SIGKILL): record the attempt as failed."""
    record_attempt_failed(
        job,
        {
            "type": "WorkHorseKilled",
            "detail": f"The work-horse process died unexpectedly (status {ret_val}).",
        },
    )


class ConveyorWorker(Worker):
    """RQ's forking worker, plus two things Conveyor needs from the parent process.

    - It keeps the running job's heartbeat key alive every `heartbeat_interval`
      (RQ wakes this often to monitor its work-horse), so the reconciler can
      tell an abandoned job from a quiet one within seconds.
    - It freezes the garbage collector's view of the parent's objects around
      each fork, so collections in the work-horse do not dirty (copy) the
      pages of every object it inherited.
    """

    def maintain_heartbeats(self, job: RQJob) -> None:
        super().maintain_heartbeats(job)
        ttl = get_settings().heartbeat_ttl
        self.connection.set(heartbeat_key(job.id), 1, ex=ttl, xx=True)

    def fork_work_horse(self, job: RQJob, queue: Queue) -> None:
        gc.freeze()
        try:
            super().fork_work_horse(job, queue)
        finally:
            gc.unfreeze()


def worker_name() -> str:
    return f"{socket.gethostname()}.{uuid.uuid4().hex[:8]}"


def _die_with_parent() -> None:
    """In the recorder child: get SIGTERM if the worker dies, so no orphan lingers (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_recorder_process(name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "recorder", "--name", name],
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
    load_tasks()  # import task modules once, before forking, so every work-horse starts warm
    worker_class = SimpleWorker if simple else ConveyorWorker
    worker = worker_class(
        [get_queue(q, connection) for q in (queues or settings.queues)],
        connection=connection,
        serializer=SERIALIZER,
        name=name,
        work_horse_killed_handler=on_work_horse_killed,
        job_monitoring_interval=max(1, int(settings.heartbeat_interval)),
    )
    try:
        return bool(worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level))
    finally:
        if recorder_proc is not None:
            stop_process(recorder_proc)  # it drains what is left before exiting


def run_recorder(name: str | None = None) -> None:
    """Replay the journal into SQL until SIGTERM/SIGINT; then drain what is left and exit."""
    configure_logging()
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    client = Redis.from_url(redis_url(), socket_timeout=30)
    recorder = Recorder(client, consumer=name or f"{worker_name()}.recorder")
    recorder.run(stop, block=0.5)
    recorder.drain()
