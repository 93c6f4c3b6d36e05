"""`conveyor worker`: a pool of long-lived workers (worker/pool.py), with a recorder process beside it.

It imports no SQL library: the pool's processes never open SQL (the supervisor's writer of
job ends imports it on first use, once the children are running), so a worker starts in a
fraction of a second and scaling out on queue depth is quick.

The recorder (journal -> SQL) runs as a process of its own rather than a
thread: the pool forks its children, and forking a process whose other
threads may hold locks (SQLite's, a connection pool's) is how deadlocks are
born; it also keeps SQL work off the pool's GIL, and SQL out of every process
that runs a task.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import uuid

from jobs.access.redaction import install_log_redaction
from jobs.settings import get_settings
from jobs.tasks import load_tasks
from jobs.tracing import TraceIdFilter
from worker.child import ChildLimits
from worker.pool import Pool, default_concurrency, die_with_parent

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}.{uuid.uuid4().hex[:8]}"


def children_die_with_the_worker() -> None:
    """Every process this worker forks (its children, RQ's scheduler) is told when it dies.

    After ``kill -9`` of a worker, RQ's scheduler would live on as an orphan holding the
    scheduler lock, and a child would finish its job unwatched while the reconciler, seeing the
    heartbeat stop, runs it again. Only forks of this process itself are marked: a task's own
    forks keep the usual semantics (PDEATHSIG fires when the forking *thread* ends, which would
    surprise a task forking from a thread). The pool's children then ask for SIGKILL.
    """
    worker_pid = os.getpid()

    def marked() -> None:
        if os.getppid() == worker_pid:
            die_with_parent(signal.SIGTERM)

    os.register_at_fork(after_in_child=marked)


# The recorder child runs this module's main() (worker/recorder.py). It cannot be imported here
# for its name (it imports this module); tests/test_seams.py checks the name resolves.
RECORDER_ENTRY = "worker.recorder"


def start_recorder_process(name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", RECORDER_ENTRY, "--name", name],
        preexec_fn=lambda: die_with_parent(signal.SIGTERM),  # it drains what is left on SIGTERM
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
    concurrency: int | None = None,
    name: str | None = None,
    recorder: bool = True,
) -> bool:
    """Run a worker pool until it is stopped (or, with ``burst``, until the queues are empty)."""
    settings = get_settings()
    configure_logging()
    name = name or worker_name()
    recorder_proc = start_recorder_process(f"{name}.recorder") if recorder else None
    load_tasks()  # import task modules once, before forking, so every child starts warm
    children_die_with_the_worker()
    count = concurrency or settings.worker_concurrency or default_concurrency()
    pool = Pool(
        queues or settings.queues,
        name=name,
        concurrency=count,
        burst=burst,
        limits=ChildLimits(settings.child_max_jobs, settings.child_max_memory_mb),
    )
    try:
        return pool.run()
    finally:
        if recorder_proc is not None:
            stop_process(recorder_proc)  # it drains what is left before exiting
