"""Analytics at scale: seed a million jobs into PostgreSQL and SQLite, time the 7-day summary and stats.

    python bench/analytics.py [--rows 1000000] [--days 90] [--runs 5]
                              [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres]
                              [--skip-postgres] [--skip-sqlite] [--keep]

Rows spread over ``--days`` of history the way real traffic does: weekday and
office-hour peaks, growth over the period, 50 tenants of very different sizes,
three queues, tasks with log-normal run times, 93 % finished / 5 % failed /
2 % canceled, a few retries, error messages with varying ids and numbers, and
a couple of thousand live jobs; rows arrive oldest first, as a table filled
over time is laid out. PostgreSQL is loaded with COPY into a fresh database
next to ``--postgres-url``; SQLite with executemany in large transactions.
Each query runs once to warm up, then ``--runs`` times; the median is printed
next to its target (7-day summary: 300 ms on PostgreSQL, 1 s on SQLite) with
measured/target. The plans' key lines follow. The last line is `ratio X.XX`:
the worse of the two 7-day summary ratios (at most 1.00 meets both targets).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CONVEYOR_ENVIRONMENT", "test")
os.environ.setdefault("CONVEYOR_SECRET_KEY", "bench")

TARGETS_MS = {"postgresql": 300.0, "sqlite": 1000.0}
DB_NAME = "conveyor_bench_analytics"

QUEUES = {  # queue: [(task, share within the queue, median run ms, sigma)]
    "default": [
        ("resize_image", 0.5, 180, 0.8),
        ("send_webhook", 0.3, 60, 1.0),
        ("sync_crm", 0.2, 2500, 1.1),
    ],
    "reports": [("monthly_report", 0.6, 18_000, 0.9), ("export_csv", 0.4, 4_000, 1.2)],
    "emails": [("send_email", 0.8, 350, 0.6), ("digest", 0.2, 1_200, 0.7)],
}
QUEUE_SHARE = {"default": 0.60, "reports": 0.25, "emails": 0.15}
ERRORS = [
    ("TimeoutError", "upstream {host}:{port} did not answer within {n}s"),
    ("KeyError", "customer {n} not found in '{region}'"),
    ("ValueError", "invalid row {n} in batch {uuid}"),
    ("ConnectionError", "connection to db-{d}:5432 refused"),
    ("PermissionError", "token for account {n} expired at {time}"),
    ("RuntimeError", "out of memory after {n} MB"),
    ("JobTimeout", "The job exceeded its timeout of {n} s."),
    ("ValueError", 'unsupported format "{fmt}" for file {hex}'),
]
COLUMNS = (
    "job_id", "tenant", "owner", "task", "queue", "status", "params", "result", "error_type", "error_detail",
    "error_signature", "message", "progress", "attempt", "max_retries", "seq", "trace_id", "created_at",
    "enqueued_at", "started_at", "finished_at", "failed_at", "canceled_at", "ended_at", "updated_at",
    "wait_ms", "run_ms",
)  # fmt: skip


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _day_counts(rows: int, days: int, now: datetime, rng: random.Random) -> list[int]:
    """How many jobs end on each day: weekdays busier than weekends, growing over the period."""
    weights = []
    for d in range(days):
        day = now - timedelta(days=days - d)
        weights.append((1.0 if day.weekday() < 5 else 0.4) * (0.7 + 0.6 * d / max(days - 1, 1)))
    total = sum(weights)
    counts = [int(rows * w / total) for w in weights]
    for _ in range(rows - sum(counts)):
        counts[rng.randrange(days)] += 1
    return counts


def _failure(rng: random.Random, ended: datetime) -> tuple[str, str]:
    error_type, template = rng.choice(ERRORS)
    detail = template.format(
        host=f"api-{rng.randint(1, 9)}.example.com",
        port=rng.choice([443, 8443]),
        n=rng.randint(1, 99999),
        region=rng.choice(["eu-west-1", "us-east-2"]),
        uuid=uuid.uuid4(),
        d=rng.randint(1, 4),
        time=ended.isoformat(),
        fmt=rng.choice(["xlsx", "numbers"]),
        hex=uuid.uuid4().hex[:12],
    )
    return error_type, detail


def generate(rows: int, days: int, now: datetime, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """Rows as tuples in COLUMNS order, oldest first (as a live table fills), then the live jobs."""
    from jobs.reporting.error_signature import error_signature

    rng = random.Random(seed)
    hours = [0.3 if h < 7 or h > 20 else (1.0 if 9 <= h <= 17 else 0.6) for h in range(24)]
    tenants = {f"tenant-{i:02d}": 1 / (i + 1) ** 1.1 for i in range(50)}
    live = min(2000, rows // 100)
    start = now - timedelta(days=days)
    for d, count in enumerate(_day_counts(rows - live, days, now, rng)):
        day_start = start + timedelta(days=d)
        offsets = sorted(
            h * 3600 + rng.uniform(0, 3600) for h in rng.choices(range(24), weights=hours, k=count)
        )
        for offset in offsets:
            ended = day_start + timedelta(seconds=offset)
            queue = _pick(rng, QUEUE_SHARE)
            task, _, median, sigma = rng.choices(QUEUES[queue], weights=[t[1] for t in QUEUES[queue]])[0]
            attempt = rng.choices([1, 2, 3], weights=[95, 4, 1])[0]
            status = rng.choices(["finished", "failed", "canceled"], weights=[93, 5, 2])[0]
            run_ms: int | None = max(1, int(rng.lognormvariate(math.log(median), sigma)))
            wait_ms: int | None = max(0, int(rng.lognormvariate(math.log(150), 1.3)))
            started: datetime | None = ended - timedelta(milliseconds=run_ms or 0)
            enqueued = (started or ended) - timedelta(milliseconds=wait_ms or 0)
            if status == "canceled" and rng.random() < 0.5:  # canceled while it waited
                started, run_ms, wait_ms = None, None, None
                enqueued = ended - timedelta(seconds=rng.uniform(1, 300))
            error_type = detail = signature = None
            if status == "failed":
                error_type, detail = _failure(rng, ended)
                signature = error_signature(error_type, detail)
            yield (
                str(uuid.uuid4()), _pick(rng, tenants), f"key{rng.randint(1, 5)}", task, queue, status, "{}",
                '{"ok": true}' if status == "finished" else None, error_type, detail, signature, None,
                100.0 if status == "finished" else None, attempt, 2, 6, uuid.uuid4().hex, enqueued, enqueued,
                started, ended if status == "finished" else None, ended if status == "failed" else None,
                ended if status == "canceled" else None, ended, ended, wait_ms, run_ms,
            )  # fmt: skip
    for _ in range(live):
        queue = _pick(rng, QUEUE_SHARE)
        task = rng.choices(QUEUES[queue], weights=[t[1] for t in QUEUES[queue]])[0][0]
        status = rng.choices(["queued", "started", "scheduled"], weights=[6, 3, 1])[0]
        enqueued = now - timedelta(seconds=rng.uniform(0, 600))
        begun = enqueued + timedelta(seconds=rng.uniform(0, 5)) if status == "started" else None
        yield (
            str(uuid.uuid4()), _pick(rng, tenants), None, task, queue, status, "{}", None, None, None,
            None, None, None, 1, 2, 3, uuid.uuid4().hex, enqueued, enqueued, begun, None, None, None,
            None, begun or enqueued, None, None,
        )  # fmt: skip


def load_postgres(admin_url: str, rows: int, days: int, now: datetime) -> str:
    import psycopg

    from jobs.history.migrate import upgrade

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{DB_NAME}"
    upgrade(url)
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY jobs ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in generate(rows, days, now):
                copy.write_row(row)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE jobs")
    elapsed = time.perf_counter() - started
    print(f"postgresql: loaded {rows:,} rows in {elapsed:.1f} s (COPY, then VACUUM ANALYZE)")
    return url


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):  # SQLAlchemy's SQLite format for UTC timestamps
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def load_sqlite(path: Path, rows: int, days: int, now: datetime) -> str:
    import sqlite3

    from jobs.history.migrate import upgrade

    path.unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    upgrade(url)
    started = time.perf_counter()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    sql = f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    batch: list[tuple[Any, ...]] = []
    for row in generate(rows, days, now):
        batch.append(tuple(_sqlite_value(v) for v in row))
        if len(batch) >= 50_000:
            with conn:
                conn.executemany(sql, batch)
            batch.clear()
    with conn:
        conn.executemany(sql, batch)
    conn.execute("ANALYZE")
    conn.close()
    elapsed = time.perf_counter() - started
    print(f"sqlite: loaded {rows:,} rows in {elapsed:.1f} s (executemany, 50k rows per transaction)")
    return url


def _use(database_url: str) -> None:
    from jobs.history.db import reset_engine
    from jobs.settings import get_settings

    os.environ["DATABASE_URL"] = database_url
    get_settings.cache_clear()
    reset_engine()


def timed(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm the caches once
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def plan_lines(dialect: str, window: Any) -> list[str]:
    """Key lines of the plans of the 7-day summary's statements (the SET is skipped)."""
    import sqlalchemy as sa

    from jobs.history.db import get_engine, session_scope
    from jobs.reporting.analytics import summary

    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if not statement.startswith("SET"):
            captured.append((statement, params))

    engine = get_engine()
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with session_scope() as session:
            summary(session, window)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    lines: list[str] = []
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for number, (statement, params) in enumerate(captured, 1):
            lines.append(f"statement {number}:")
            if dialect == "postgresql":
                cursor.execute("SET work_mem = '64MB'")
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
                keep = ("Scan", "Sort", "Aggregate", "Execution Time", "Rows Removed", "Heap Fetches")
                lines += [r[0].rstrip() for r in cursor.fetchall() if any(k in r[0] for k in keep)][:7]
            else:
                cursor.execute("EXPLAIN QUERY PLAN " + statement, params)
                lines += [str(r[-1]) for r in cursor.fetchall() if "SCAN" in r[-1] or "SEARCH" in r[-1]][:6]
    finally:
        raw.close()
    return lines


def measure(dialect: str, url: str, runs: int, now: datetime, redis_client: Any) -> float:
    from jobs.history.db import session_scope
    from jobs.reporting.analytics import Window, summary
    from jobs.reporting.queue_stats import queue_stats

    _use(url)
    week = Window(now - timedelta(days=7), now)
    target = TARGETS_MS[dialect]

    def run(window: Window) -> Callable[[], Any]:
        def go() -> Any:
            with session_scope() as session:
                return summary(session, window)

        return go

    def stats(tenant: str | None) -> Callable[[], Any]:
        def go() -> Any:
            with session_scope() as session:
                return queue_stats(session, redis_client, tenant=tenant, include_rq=True)

        return go

    largest = Window(week.start, week.end, tenant="tenant-00")
    rows = [
        ("summary 7d, all tenants", timed(run(week), runs), target),
        ("summary 7d, largest tenant", timed(run(largest), runs), target),
        ("summary 7d, one queue", timed(run(Window(week.start, week.end, queue="reports")), runs), target),
        ("summary 30d, all tenants", timed(run(Window(now - timedelta(days=30), now)), runs), None),
        ("queue stats, all tenants (24h)", timed(stats(None), runs), None),
        ("queue stats, one tenant (24h)", timed(stats("tenant-07"), runs), None),
    ]
    with session_scope() as session:
        ended = summary(session, week).totals.ended
    print(f"\n{dialect}: {ended:,} jobs ended in the last 7 days")
    for name, ms, goal in rows:
        anchor = f"target {goal:6.0f} ms   ratio {ms / goal:.2f}" if goal else "(no target)"
        print(f"  {name:32s} {ms:8.1f} ms   {anchor}")
    print(f"  plans of the 7-day summary ({dialect}):")
    for line in plan_lines(dialect, week):
        print(f"    {line}")
    return rows[0][1] / target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the seeded databases")
    args = parser.parse_args()

    from redis import Redis

    from jobs.embedded import EmbeddedRedis

    tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-analytics-"))
    server = EmbeddedRedis(tmp / "redis", persist=False)
    os.environ["REDIS_URL"] = server.start()
    redis_client = Redis.from_url(os.environ["REDIS_URL"])
    now = datetime.now(UTC).replace(microsecond=0)
    print(f"{args.rows:,} jobs over {args.days} days; median of {args.runs} runs after one warm-up")
    ratios = []
    try:
        if not args.skip_postgres:
            url = load_postgres(args.postgres_url, args.rows, args.days, now)
            ratios.append(measure("postgresql", url, args.runs, now, redis_client))
        if not args.skip_sqlite:
            url = load_sqlite(tmp / "bench.db", args.rows, args.days, now)
            ratios.append(measure("sqlite", url, args.runs, now, redis_client))
    finally:
        from jobs.history.db import reset_engine

        reset_engine()
        server.stop()
        if not args.keep:
            (tmp / "bench.db").unlink(missing_ok=True)
            if not args.skip_postgres:
                import psycopg

                with psycopg.connect(args.postgres_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    print(f"ratio {max(ratios):.2f}")


if __name__ == "__main__":
    main()
