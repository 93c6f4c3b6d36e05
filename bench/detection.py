"""Detection time: a worker SIGKILLed mid-job (worker, work-horse and all) until SQL says
the job failed, with Conveyor's default settings, next to RQ alone in the same run.

    python bench/detection.py [--rounds 3] [--database-url URL] [--skip-rq]

Conveyor: a victim worker runs a long job; a second worker (on another queue)
carries the reconciler. RQ alone: a plain RQ worker runs a long job, and RQ's
`StartedJobRegistry.cleanup()` is called every second, as if RQ's maintenance
ran back to back (its best case: a real worker runs it every 10 minutes).
The last line reads `ratio X.XX` (RQ's best case / Conveyor: how many times sooner).
Target: Conveyor within 30 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tree(pid: int) -> list[int]:
    """``pid`` and every process under it (Linux /proc)."""
    found, pending = [pid], [pid]
    while pending:
        parent = pending.pop()
        for task_dir in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(FileNotFoundError):
                for child in map(int, (task_dir / "children").read_text().split()):
                    found.append(child)
                    pending.append(child)
    return found


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    pids = tree(proc.pid)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    proc.wait()


def wait_for(predicate, timeout: float, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("gave up waiting")


def worker(env: dict[str, str], queue: str, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", "--queues", queue, "--name", name],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def conveyor_round(env: dict[str, str], n: int) -> float:
    from jobs.actions.submit import submit_job
    from jobs.history.db import session_scope
    from jobs.history.models import Job
    from jobs.state.redis_conn import get_redis

    victim = worker(env, "bench", f"victim-{n}-{os.getpid()}")
    try:
        with session_scope() as session:
            job_id = submit_job(
                session=session,
                client=get_redis(),
                tenant="bench",
                owner=None,
                task="hold",
                payload={"seconds": 600},
                queue="bench",
            ).job_id
        wait_for(lambda: get_redis().hget(f"cv:job:{job_id}", "status") == b'"started"', 60)
        time.sleep(3)  # well into the job: its heartbeat has been refreshed by the worker
    finally:
        killed = time.monotonic()
        kill_tree(victim)

    def ended() -> bool:
        with session_scope() as session:
            row = session.get(Job, job_id)
            return row is not None and row.status == "failed"

    wait_for(ended, 120)
    return time.monotonic() - killed


def rq_round() -> float:
    from redis import Redis
    from rq import Queue
    from rq.registry import FailedJobRegistry, StartedJobRegistry

    connection = Redis.from_url(os.environ["REDIS_URL"])
    queue = Queue("bench-bare", connection=connection)
    job = queue.enqueue("bench.bare_tasks.bare_sleep", 600, job_timeout=3600)
    code = (
        "import os; from redis import Redis; from rq import Queue, Worker;"
        "c = Redis.from_url(os.environ['REDIS_URL']);"
        "Worker([Queue('bench-bare', connection=c)], connection=c).work(logging_level='WARNING')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ))
    try:
        wait_for(lambda: job.get_status() == "started", 60)
        time.sleep(3)
    finally:
        killed = time.monotonic()
        kill_tree(proc)
    registry, failed = StartedJobRegistry(queue=queue), FailedJobRegistry(queue=queue)

    def noticed() -> bool:
        registry.cleanup()  # what RQ's maintenance does, here every second
        return job.id in failed.get_job_ids()

    wait_for(noticed, 900, interval=1.0)
    return time.monotonic() - killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--skip-rq", action="store_true", help="skip RQ's ~90 s anchor")
    args = parser.parse_args()

    from jobs.embedded import EmbeddedRedis
    from jobs.history.migrate import upgrade
    from jobs.settings import get_settings

    tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    server = EmbeddedRedis(tmp / "redis", persist=False)
    redis_url = server.start()
    database_url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "CONVEYOR_ENVIRONMENT": "test",
        "CONVEYOR_SECRET_KEY": "bench",
        "CONVEYOR_TASK_MODULES": '["worker.tasks", "bench.tasks"]',
        "CONVEYOR_QUEUES": '["default", "bench", "bench-idle"]',
        "CONVEYOR_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update(env)
    get_settings.cache_clear()
    upgrade(database_url)
    settings = get_settings()
    print(
        f"redis: {redis_url}\ndatabase: {database_url.split('@')[-1]}\n"
        f"settings: heartbeat every {settings.heartbeat_interval}s, ttl {settings.heartbeat_ttl}s; "
        f"reconciler every {settings.reconcile_interval}s"
    )
    survivor = worker(env, "bench-idle", f"survivor-{os.getpid()}")
    times: list[float] = []
    try:
        time.sleep(2)
        for n in range(1, args.rounds + 1):
            took = conveyor_round(env, n)
            times.append(took)
            print(f"round {n} conveyor   kill -9 -> failed (WorkerLost) in SQL: {took:6.1f} s")
        rq = None if args.skip_rq else rq_round()
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(timeout=30)
        server.stop()
    conveyor = statistics.median(times)
    print(f"Conveyor (median)  {conveyor:6.1f} s   (target <= 30 s)")
    if rq is None:
        return
    print(f"RQ alone           {rq:6.1f} s   (best case; RQ's maintenance runs every 600 s)")
    print(f"ratio {rq / conveyor:.2f}")


if __name__ == "__main__":
    main()
