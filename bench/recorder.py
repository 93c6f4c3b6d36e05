"""Recorder cost: CPU and Redis commands per no-op job to replay the journal into SQL.

    python bench/recorder.py [--jobs 2000] [--rounds 3] [--batch 500] [--impl old|new|both]
                             [--baseline REF] [--postgres-url URL] [--skip-sqlite] [--skip-postgres]
                             [--profile]

Each round writes N jobs' rows (queued) to SQL and seeds their live state in a private Redis
(``redis-server --save '' --appendonly no`` on a free port, never the shared one), then moves
each job started and finished through the gate exactly as the worker does (`jobs.state.lifecycle.record`
with the runner's patches), which journals two entries per job. Then it times one
``Recorder.drain()`` with ``time.process_time()`` (the recorder's own CPU: parsing, SQL client,
Redis client) and counts the Redis commands the drain sent (``INFO commandstats``), and checks that
SQL has every job finished with its three events.

``--impl old`` runs the recorder of ``--baseline`` (a git ref, extracted to a temporary
directory), ``new`` the working tree's; ``both`` measures each in its own process and database,
on SQLite (a temporary file) and PostgreSQL (a throwaway database on ``--postgres-url``).
``--profile`` prints where the drain's time goes (cProfile, by own time).
The last line reads `ratio X.XX` (old CPU per job / new CPU per job, the worst backend;
target: new <= 0.5 ms per job).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The recorder as it was before the per-batch rewrite (issue 17): the "old" side of the ratio.
BASELINE = "2792ba4"
TARGET_MS = 0.5


def _fill(jobs: int) -> None:
    """N queued jobs in SQL and Redis, each then started and finished through the gate."""
    from jobs.clock import utcnow
    from jobs.history.db import session_scope
    from jobs.history.models import Job
    from jobs.history.store import add_job
    from jobs.snapshot import row_fields
    from jobs.state.lifecycle import record
    from jobs.state.live import live_store
    from jobs.state.redis_conn import get_redis
    from jobs.status import WAITING, JobStatus

    client = get_redis()
    now = utcnow()
    rows = [
        Job(
            job_id=str(uuid.uuid4()),
            tenant="bench",
            task="noop",
            queue="bench",
            status="queued",
            created_at=now,
            enqueued_at=now,
            updated_at=now,
        )
        for _ in range(jobs)
    ]
    with session_scope() as session:
        for job in rows:
            add_job(session, job=job)
    store = live_store(client)
    for job in rows:
        store.seed(row_fields(job), tenant=job.tenant)
    for job in rows:  # the runner's two writes of a no-op job (worker/runner.py)
        # The runner's start also nulls the result, error, progress and message fields: a fresh
        # job's are null already, so the journaled documents are the same.
        record(
            job.job_id,
            JobStatus.STARTED,
            event="started",
            from_statuses=WAITING,
            patch={"started_at": utcnow(), "ended_at": None},
            private={"worker": "bench-worker"},
            data={"worker": "bench-worker"},
            client=client,
        )
        record(
            job.job_id,
            JobStatus.FINISHED,
            event="finished",
            patch={"result": None, "result_ref": None, "progress": 100.0, "ended_at": utcnow()},
            expect_attempt=1,
            client=client,
        )


def _redis_calls(client: Any) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config"))


def _check(jobs: int) -> None:
    """Every job finished in SQL with its queued, started and finished events."""
    import sqlalchemy as sa

    from jobs.history.db import get_engine

    with get_engine().connect() as conn:
        finished = conn.execute(sa.text("SELECT count(*) FROM jobs WHERE status = 'finished'")).scalar()
        events = conn.execute(sa.text("SELECT count(*) FROM job_events")).scalar()
        conn.execute(sa.text("DELETE FROM job_events"))
        conn.execute(sa.text("DELETE FROM jobs"))
        conn.commit()
    if finished != jobs or events != 3 * jobs:
        raise SystemExit(f"SQL has {finished} of {jobs} jobs finished and {events} of {3 * jobs} events")


def child(jobs: int, rounds: int, batch: int, profile: bool) -> None:
    """In a fresh process (the code under test first on sys.path): print one JSON line of results."""
    from jobs.history.migrate import upgrade
    from jobs.history.recorder import Recorder
    from jobs.state.redis_conn import get_redis

    upgrade()
    client = get_redis()
    client.flushdb()
    _fill(50)  # warm up: imports, compiled statements, the connection pool
    Recorder(client, consumer="bench", batch=batch).drain()
    _check(50)
    cpu: list[float] = []
    wall: list[float] = []
    calls: list[float] = []
    profiler = None
    for _ in range(rounds):
        _fill(jobs)
        recorder = Recorder(client, consumer="bench", batch=batch)
        client.config_resetstat()
        if profile:
            import cProfile

            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
        started, started_wall = time.process_time(), time.perf_counter()
        applied = recorder.drain()
        cpu.append((time.process_time() - started) * 1000 / jobs)
        wall.append((time.perf_counter() - started_wall) * 1000 / jobs)
        if profiler is not None:
            profiler.disable()
        calls.append(_redis_calls(client) / jobs)
        if applied != 2 * jobs:
            raise SystemExit(f"the recorder applied {applied} entries, expected {2 * jobs}")
        _check(jobs)
    if profiler is not None:
        import io
        import pstats

        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).sort_stats(os.environ.get("BENCH_SORT", "tottime"))
        stats.print_stats(int(os.environ.get("BENCH_TOP", "25")))
        print(out.getvalue(), file=sys.stderr)
    result = {"cpu_ms": statistics.median(cpu), "wall_ms": statistics.median(wall), "calls": calls[-1]}
    print(json.dumps(result))


def _start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    from jobs.embedded import free_port

    port = free_port()
    server = subprocess.Popen(
        ["/usr/bin/redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )
    from redis import Redis

    client = Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return server, f"redis://127.0.0.1:{port}/0"
        except Exception:
            time.sleep(0.05)
    server.kill()
    raise SystemExit("the private redis-server did not start")


def _baseline_tree(ref: str, tmp: Path) -> Path:
    """The code of ``ref`` (jobs/, migrations/) in a directory of its own."""
    target = tmp / "baseline"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "jobs", "migrations"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def _postgres_database(admin_url: str) -> tuple[str, Any]:
    import psycopg

    name = f"conveyor_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{admin_url.rpartition('/')[0]}/{name}", drop


def _measure(code: Path, database_url: str, redis_url: str, args: argparse.Namespace) -> dict[str, float]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "CONVEYOR_ENVIRONMENT": "test",
        "CONVEYOR_SECRET_KEY": "bench-secret-key-not-for-production-4Hq8",
        "CONVEYOR_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join([str(code), str(ROOT)]),
    }
    command = [sys.executable, __file__, "--child", "--jobs", str(args.jobs), "--rounds", str(args.rounds)]
    command += ["--batch", str(args.batch)] + (["--profile"] if args.profile else [])
    out = subprocess.run(command, env=env, cwd=code, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the recorder run failed:\n{out.stderr[-4000:]}")
    if args.profile:
        print(out.stderr)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--impl", choices=["old", "new", "both"], default="both")
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.jobs, args.rounds, args.batch, args.profile)
        return

    sys.path.insert(0, str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-recorder-"))
    impls = ["old", "new"] if args.impl == "both" else [args.impl]
    skips = {"sqlite": args.skip_sqlite, "postgresql": args.skip_postgres}
    backends = [name for name, skip in skips.items() if not skip]
    server, redis_url = _start_redis(tmp)
    drops: list[Any] = []
    print(f"{args.jobs} no-op jobs a round (2 journal entries each), {args.rounds} rounds,", end=" ")
    print(f"batch {args.batch}")
    print(f"old: {args.baseline}; new: the working tree; private redis {redis_url}")
    cpu: dict[tuple[str, str], float] = {}
    try:
        code = {"new": ROOT, **({"old": _baseline_tree(args.baseline, tmp)} if "old" in impls else {})}
        for backend in backends:
            for impl in impls:
                if backend == "sqlite":
                    database_url = f"sqlite:///{tmp / f'{impl}.db'}"
                else:
                    database_url, drop = _postgres_database(args.postgres_url)
                    drops.append(drop)
                result = _measure(code[impl], database_url, redis_url, args)
                cpu[(backend, impl)] = result["cpu_ms"]
                above = impl == "new" and result["cpu_ms"] > TARGET_MS
                print(
                    f"{backend:10} {impl}: {result['cpu_ms']:.3f} ms CPU/job, {result['wall_ms']:.3f} ms"
                    f" wall/job, {result['calls']:.2f} Redis commands/job"
                    + (f"  (ABOVE {TARGET_MS} ms)" if above else "")
                )
    finally:
        for drop in drops:
            drop()
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    if len(impls) == 2:
        ratios = [cpu[(b, "old")] / cpu[(b, "new")] for b in backends]
        print(f"ratio {min(ratios):.2f}")


if __name__ == "__main__":
    main()
