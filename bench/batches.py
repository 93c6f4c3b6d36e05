"""Batch submit throughput: jobs/s for one `POST /api/v1/batches` of 1,000 and 10,000 jobs.

    python bench/batches.py [--sizes 1000,10000] [--rounds 3] [--skip-sqlite] [--skip-postgres]
                            [--profile]

Each backend runs in a child process of its own, against a private Redis and (for PostgreSQL) a
throwaway cluster from the local binaries (`tests/services.py`), migrated from scratch. The child
sends each batch through the whole app in process (Starlette's TestClient: JSON parsing, the
request model, validation of every job, the SQL INSERTs, the Redis transaction) and times request
to response; every job is in its RQ queue when the response is sent, which the child checks
(``LLEN`` of the queue) before the next round. No worker runs, so the queue only grows.

Then it watches a batch of the largest size over SSE while moving its jobs through the gate by
hand: how soon one job's change reaches the watcher, and how many messages 10,000 jobs ending
send it (coalesced: about one per ``CONVEYOR_BATCH_LIVE_INTERVAL``).

Prints jobs/s and the API process's CPU per job (``time.process_time``: on a shared machine the
steadier figure) per backend and size (median of the rounds) and, on the last line, `ratio X.XX`:
the 10,000-job batch's jobs/s on PostgreSQL over the issue's target of 10,000 jobs/s (>= 1.00 meets
it; SQLite when PostgreSQL is skipped).
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_JOBS_PER_S = 10_000


def child(sizes: list[int], rounds: int, profile: bool) -> None:
    """Measure in this process (its environment names the stores); print one JSON line."""
    sys.path.insert(0, str(ROOT))
    from fastapi.testclient import TestClient

    from api.app import create_app
    from jobs.access.auth import create_key
    from jobs.history.db import session_scope
    from jobs.history.migrate import upgrade
    from jobs.state.redis_conn import get_redis

    upgrade()
    with session_scope() as session:
        _, key = create_key(session, tenant="bench", role="member")
    client = get_redis()
    queue_key = "rq:queue:default"
    results: dict[str, dict[str, float]] = {}
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as api:
        api.post("/api/v1/batches", json={"jobs": [{"task": "long_task", "payload": {"n": 1}}]})  # warm up
        for size in sizes:
            body = {
                "jobs": [{"task": "long_task", "payload": {"n": i % 100, "delay": 0}} for i in range(size)]
            }
            times = []
            for _ in range(rounds):
                before = client.llen(queue_key)
                profiler = None
                if profile and size == sizes[-1]:
                    import cProfile

                    profiler = cProfile.Profile()
                    profiler.enable()
                started, cpu_started = time.perf_counter(), time.process_time()
                response = api.post("/api/v1/batches", json=body)
                took, cpu = time.perf_counter() - started, time.process_time() - cpu_started
                if profiler is not None:
                    profiler.disable()
                    import io
                    import pstats

                    out = io.StringIO()
                    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
                    print(out.getvalue(), file=sys.stderr)
                if response.status_code != 201:
                    raise SystemExit(f"the batch was refused: {response.status_code} {response.text[:500]}")
                queued = client.llen(queue_key) - before
                if queued != size:
                    raise SystemExit(f"{queued} of {size} jobs were in their queue at the response")
                times.append((took, cpu))
            median = statistics.median(t for t, _ in times)
            cpu_median = statistics.median(c for _, c in times)
            results[str(size)] = {
                "seconds": median,
                "jobs_per_s": size / median,
                "cpu_ms_per_job": 1000 * cpu_median / size,
            }
        results["watch"] = _watch_latency(api, max(sizes))
    print(json.dumps(results))


def _watch_latency(api: Any, size: int) -> dict[str, float]:
    """How soon a change of one job reaches a watcher of its batch (SSE), and how many messages a
    burst of changes to every job sends: jobs are moved through the gate by hand (no worker)."""
    import threading

    from jobs.clock import utcnow
    from jobs.state.lifecycle import record
    from jobs.state.redis_conn import get_redis
    from jobs.status import JobStatus

    created = api.post("/api/v1/batches", json={"jobs": [{"task": "long_task", "payload": {}}] * size}).json()
    events: list[tuple[float, dict[str, Any]]] = []
    opened = threading.Event()

    def watch() -> None:
        with api.stream("GET", f"/api/v1/batches/{created['batch_id']}/stream") as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events.append((time.perf_counter(), json.loads(line[5:])))
                    opened.set()

    threading.Thread(target=watch, daemon=True).start()
    opened.wait(30)
    client = get_redis()
    latencies = []
    for job_id in created["job_ids"][:20]:  # one change at a time, 0.3 s apart
        seen = len(events)
        changed = time.perf_counter()
        record(job_id, JobStatus.STARTED, event="started", patch={"started_at": utcnow()}, client=client)
        while len(events) == seen and time.perf_counter() - changed < 5:
            time.sleep(0.0005)
        latencies.append(events[-1][0] - changed)
        time.sleep(0.3)
    before, burst_started = len(events), time.perf_counter()
    for job_id in created["job_ids"]:  # then every job ends as fast as the gate takes it
        record(job_id, JobStatus.CANCELED, event="canceled", client=client)
    while events[-1][1]["status"] != "canceled" and time.perf_counter() - burst_started < 60:
        time.sleep(0.01)
    burst = time.perf_counter() - burst_started
    return {
        "latency_p50_ms": 1000 * statistics.median(latencies),
        "latency_max_ms": 1000 * max(latencies),
        "burst_changes": float(size),
        "burst_seconds": burst,
        "burst_messages": float(len(events) - before),
    }


def _measure(database_url: str, redis_url: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "CONVEYOR_ENVIRONMENT": "test",
        "CONVEYOR_SECRET_KEY": "bench-secret-key-not-for-production-4Hq8",
        "CONVEYOR_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        # Throughput, not the tenant limits (issue 13): no rate, no waiting quota (0: none).
        "CONVEYOR_TENANT_SUBMITS_PER_MINUTE": "0",
        "CONVEYOR_KEY_SUBMITS_PER_MINUTE": "0",
        "CONVEYOR_TENANT_MAX_WAITING": "0",
    }
    command = [sys.executable, __file__, "--child", "--sizes", args.sizes, "--rounds", str(args.rounds)]
    command += ["--profile"] if args.profile else []
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the batch run failed:\n{out.stderr[-4000:]}")
    if args.profile:
        print(out.stderr)
    result: dict[str, dict[str, float]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _postgres_database(admin_url: str) -> str:
    import uuid

    import psycopg

    name = f"conveyor_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{admin_url.rpartition('/')[0]}/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        child(sizes, args.rounds, args.profile)
        return

    sys.path.insert(0, str(ROOT))
    from tests.services import provision

    services = provision()
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-batches-"))
    found: dict[str, Any] = {}
    try:
        redis_url = services.redis.url or ""
        print(f"batches of {args.sizes} jobs, {args.rounds} rounds each; redis: {services.redis.how}")
        backends = []
        if not args.skip_sqlite:
            backends.append(("sqlite", f"sqlite:///{tmp / 'bench.db'}", 1))
        if not args.skip_postgres and services.postgres.url:
            backends.append(("postgresql", _postgres_database(services.postgres.url), 2))
        for name, database_url, db in backends:
            result = _measure(database_url, f"{redis_url.rpartition('/')[0]}/{db}", args)
            found[name] = result
            watch = result.pop("watch")
            for size, figures in result.items():
                print(
                    f"{name:10} batch of {int(size):>6}: {figures['seconds'] * 1000:8.1f} ms, "
                    f"{figures['jobs_per_s']:9.0f} jobs/s, {figures['cpu_ms_per_job']:.3f} ms CPU/job "
                    "(all queued in RQ at the response)"
                )
            print(
                f"{name:10} a watcher of a {int(watch['burst_changes'])}-job batch: a change reaches it in "
                f"{watch['latency_p50_ms']:.1f} ms (median, max {watch['latency_max_ms']:.1f}); "
                f"{int(watch['burst_changes'])} jobs ending in {watch['burst_seconds']:.2f} s sent it "
                f"{int(watch['burst_messages'])} messages"
            )
    finally:
        services.close()
    biggest = str(max(sizes))
    backend = "postgresql" if "postgresql" in found else "sqlite"
    print(f"ratio {found[backend][biggest]['jobs_per_s'] / TARGET_JOBS_PER_S:.2f}")


if __name__ == "__main__":
    main()
