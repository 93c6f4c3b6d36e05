"""Worker overhead: no-op jobs drained by Conveyor's worker (with full persistence: Redis
snapshots, pub/sub, the journal and SQL rows and events) versus bare RQ with the same
worker class (the forking `Worker`), on the same Redis, in one run.

    python bench/worker_overhead.py [--jobs 200] [--rounds 7] [--database-url URL]

Each round queues one batch for each worker from the benchmark's own process
(as an API would), then times a fresh worker process draining it, alternating.
Conveyor's time includes the recorder flushing every job's SQL row and events,
and the round checks that SQL has every job finished.
The last line reads `ratio X.XX` (Conveyor jobs/s / bare RQ jobs/s; target >= 0.80).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fill(mode: str, jobs: int, tenant: str) -> None:
    """Queue the round's jobs from this (the benchmark's) process, as an API would: the timed
    worker process does nothing but drain them."""
    from jobs.queues.queueing import get_queue
    from jobs.state.redis_conn import get_redis

    if mode == "bare":
        redis = get_redis()
        queue = get_queue("bench-bare", redis)
        with redis.pipeline() as pipe:
            for _ in range(jobs):
                queue.enqueue_call("bench.bare_tasks.bare_noop", result_ttl=500, pipeline=pipe)
            pipe.execute()
        return
    from jobs.actions.submit import submit_job
    from jobs.history.db import session_scope

    with session_scope() as session:
        for _ in range(jobs):
            submit_job(
                session=session,
                client=get_redis(),
                tenant=tenant,
                owner=None,
                task="noop",
                payload={},
                queue="bench-conveyor",
            )


def child(mode: str, jobs: int, tenant: str) -> None:
    """Run in a fresh process: time one burst drain of the queued jobs."""
    from redis import Redis
    from rq import Worker

    from jobs.queues.queueing import SERIALIZER, get_queue

    if mode == "bare":
        import bench.bare_tasks  # noqa: F401  (loaded before forking, as Conveyor's worker loads its tasks)

        connection = Redis.from_url(os.environ["REDIS_URL"])
        worker = Worker([get_queue("bench-bare", connection)], connection=connection, serializer=SERIALIZER)
        started = time.perf_counter()
        worker.work(burst=True, logging_level="WARNING")
        elapsed = time.perf_counter() - started
    else:
        from worker.main import run_worker

        started = time.perf_counter()
        run_worker(["bench-conveyor"], burst=True)  # returns after the recorder's final drain
        elapsed = time.perf_counter() - started

        from sqlmodel import func, select

        from jobs.history.db import session_scope
        from jobs.history.models import Job

        with session_scope() as session:
            done = session.exec(
                select(func.count()).select_from(Job).where(Job.status == "finished", Job.tenant == tenant)
            ).one()
        assert done == jobs, f"only {done} of {jobs} jobs recorded finished in SQL"
    print(json.dumps({"mode": mode, "jobs": jobs, "seconds": elapsed, "rate": jobs / elapsed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--child", choices=["bare", "conveyor"])
    parser.add_argument("--tenant", default="bench")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.jobs, args.tenant)
        return

    from jobs.embedded import EmbeddedRedis
    from jobs.history.migrate import upgrade

    tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    redis_url = os.environ.get("REDIS_URL")
    server = None
    if not redis_url:
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
        "CONVEYOR_QUEUES": '["default", "bench-conveyor", "bench-bare"]',
        "CONVEYOR_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update(env)
    upgrade(database_url)
    print(f"redis: {redis_url}\ndatabase: {database_url.split('@')[-1]}\njobs per round: {args.jobs}")

    rates: dict[str, list[float]] = {"bare": [], "conveyor": []}
    run_id = uuid.uuid4().hex[:8]  # a database reused across runs already holds earlier rounds' jobs
    try:
        for round_no in range(1, args.rounds + 1):
            for mode in ("bare", "conveyor"):
                tenant = f"bench-{run_id}-{round_no}"
                fill(mode, args.jobs, tenant)
                out = subprocess.run(
                    [sys.executable, __file__, "--child", mode, "--jobs", str(args.jobs), "--tenant", tenant],
                    env=env,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if out.returncode != 0:
                    raise SystemExit(f"the {mode} worker failed:\n{out.stderr[-3000:]}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                rates[mode].append(result["rate"])
                print(f"round {round_no} {mode:9s} {result['rate']:8.1f} jobs/s")
    finally:
        if server is not None:
            server.stop()
    bare, conveyor = statistics.median(rates["bare"]), statistics.median(rates["conveyor"])
    print(f"bare RQ (median)   {bare:8.1f} jobs/s")
    print(f"Conveyor (median)  {conveyor:8.1f} jobs/s")
    print(f"ratio {conveyor / bare:.2f}")


if __name__ == "__main__":
    main()
