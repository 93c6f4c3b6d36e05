"""Submitting jobs: single `POST /api/v1/jobs` against a bare FastAPI anchor, on SQLite and PostgreSQL.

    python bench/submit.py [--seconds 5] [--rounds 3] [--concurrency 20] [--only single]
                           [--skip-sqlite] [--skip-postgres] [--in-process] [--profile]

Each backend gets a stack of its own: an embedded Redis, a database (a SQLite file, or a
throwaway PostgreSQL database on BENCH_POSTGRES_URL), one API key. Two servers share it,
each one uvicorn process: Conveyor as `conveyor api` runs it, and the anchor
(bench/submit_anchor.py: one SQL INSERT and one RQ `enqueue` per POST). The load is
``--concurrency`` keep-alive HTTP/1.1 connections from this process (uvloop), each sending
its next POST as soon as the answer to the last one is in; rounds alternate the two servers.
Every answer must be a 201. Per server: requests/s (median of the rounds) and p50/p95 of
every request's latency. No worker runs: the jobs wait in their queues.

``--in-process`` also times `submit_job()` and RQ's own `enqueue` in this process (jobs/s),
and ``--profile`` prints where `submit_job()` spends its time (cProfile, cumulative).

The last line is `ratio X.XX`: Conveyor's single submits/s over the anchor's, on PostgreSQL
(SQLite's when PostgreSQL is skipped). Scenarios are functions in ``SCENARIOS`` taking a
:class:`Target` and returning result lines: batches are meant to join as one more.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import Stack, raise_fd_limit

HOST = "127.0.0.1"
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
QUEUE = "default"  # no worker listens in this benchmark
OUTER_URLS = {name: os.environ.get(name) for name in ("REDIS_URL", "DATABASE_URL")}
BODY = {"task": "long_task", "payload": {"n": 1}, "queue": QUEUE}


# --- the load -------------------------------------------------------------------------------------


class KeepAlivePoster(asyncio.Protocol):
    """Sends the same POST again as soon as the previous answer is complete; times each one."""

    def __init__(self, request: bytes, sample: Sample) -> None:
        self.request = request
        self.sample = sample
        self.buffer = b""
        self.sent = 0.0
        self.transport: Any = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio's classes
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (head_end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:head_end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            self.sample.record(self.buffer[9:12] == b"201", time.perf_counter() - self.sent)
            if self.buffer[9:12] != b"201" and not self.sample.first_error:
                self.sample.first_error = self.buffer[:end].decode(errors="replace")
            self.buffer = self.buffer[end:]
            if self.sample.running and self.transport is not None:
                self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class Sample:
    """What one round of load saw; only answers inside the measured window count."""

    running: bool = True
    measuring: bool = False
    ok: int = 0
    bad: int = 0
    first_error: str = ""
    answered: int = 0  # warm-up included
    latencies: list[float] = field(default_factory=list)

    def record(self, ok: bool, seconds: float) -> None:
        self.answered += 1
        if not self.measuring:
            return
        if ok:
            self.ok += 1
            self.latencies.append(seconds)
        else:
            self.bad += 1


def post_request(path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    content = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"Host: {HOST}", "Content-Type: application/json"]
    lines += [f"Content-Length: {len(content)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + content


async def load(port: int, request: bytes, connections: int, seconds: float) -> tuple[float, Sample]:
    """(requests per second, the sample) over ``seconds`` after a one-second warm-up."""
    loop = asyncio.get_running_loop()
    sample = Sample()
    posters = [
        (await loop.create_connection(lambda: KeepAlivePoster(request, sample), HOST, port))[1]
        for _ in range(connections)
    ]
    await asyncio.sleep(1.0)
    sample.measuring, started = True, time.perf_counter()
    await asyncio.sleep(seconds)
    sample.measuring, elapsed = False, time.perf_counter() - started
    sample.running = False
    for poster in posters:
        if poster.transport is not None:
            poster.transport.close()
    await asyncio.gather(*(p.closed for p in posters))
    return sample.ok / elapsed, sample


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system), from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_sessions(url: str) -> int | None:
    """Connections PostgreSQL has accepted into this database so far (None off PostgreSQL)."""
    if not url.startswith("postgresql"):
        return None
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) - 1 if row else None  # not counting this one


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


# --- the targets ----------------------------------------------------------------------------------


@dataclass
class Target:
    """One backend's stack with Conveyor's API and the anchor served on it."""

    backend: str
    stack: Stack
    api_port: int
    anchor_port: int
    api_pid: int
    anchor_pid: int
    args: argparse.Namespace
    results: dict[str, float] = field(default_factory=dict)


def open_target(backend: str, args: argparse.Namespace, cleanups: list[Callable[[], None]]) -> Target:
    from jobs.embedded import free_port
    from jobs.history.db import reset_engine

    # Each Stack puts its URLs in os.environ: the next backend must not inherit a stopped Redis.
    for name, value in OUTER_URLS.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    extra = {"CONVEYOR_QUEUES": json.dumps([QUEUE])}
    if backend == "postgres":
        extra["DATABASE_URL"] = throwaway_postgres(cleanups)
    reset_engine()
    stack = Stack(queues=[QUEUE], extra_env=extra)
    cleanups.append(stack.close)
    api_port, anchor_port = free_port(), free_port()
    cli = [sys.executable, "-m", "cli.main", "api", "--host", HOST, "--port", str(api_port), "--workers", "1"]
    api = stack.serve_command(cli, api_port)
    anchor = stack.serve("bench.submit_anchor:app", anchor_port)
    return Target(backend, stack, api_port, anchor_port, api.pid, anchor.pid, args)


def throwaway_postgres(cleanups: list[Callable[[], None]]) -> str:
    import psycopg

    name = f"conveyor_submit_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        from jobs.history.db import reset_engine

        reset_engine()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    cleanups.append(drop)
    return f"{POSTGRES_URL.rpartition('/')[0]}/{name}"


# --- the scenarios --------------------------------------------------------------------------------


async def single_submits(target: Target) -> list[str]:
    """Single submits at ``--concurrency``: Conveyor and the anchor, alternating, round by round."""
    args = target.args
    requests = {
        "conveyor": (
            target.api_port,
            target.api_pid,
            post_request("/api/v1/jobs", BODY, {"Authorization": f"Bearer {target.stack.key}"}),
        ),
        "anchor": (target.anchor_port, target.anchor_pid, post_request("/jobs", BODY, {})),
    }
    sql_url = target.stack.env["DATABASE_URL"]
    rates: dict[str, list[float]] = {name: [] for name in requests}
    cpu: dict[str, list[float]] = {name: [] for name in requests}
    latencies: dict[str, list[float]] = {name: [] for name in requests}
    lines = []
    for round_no in range(1, args.rounds + 1):
        order = list(requests) if round_no % 2 else list(requests)[::-1]
        for name in order:
            port, pid, request = requests[name]
            cpu_before, sessions_before = cpu_seconds(pid), postgres_sessions(sql_url)
            rate, sample = await load(port, request, args.concurrency, args.seconds)
            sessions_after = postgres_sessions(sql_url)
            if sample.bad:
                raise RuntimeError(f"{name}: {sample.bad} answers were not 201; first:\n{sample.first_error}")
            # Warm-up and measured window alike: the server's CPU per answer it gave.
            per_request = (cpu_seconds(pid) - cpu_before) / max(1, sample.answered) * 1000
            rates[name].append(rate)
            cpu[name].append(per_request)
            latencies[name] += sample.latencies
            line = f"{target.backend:8s} round {round_no} {name:8s} {rate:7.0f} req/s"
            p50 = percentile(sample.latencies, 0.5) * 1000
            opened = ""
            if sessions_before is not None and sessions_after is not None:  # less this bench's own
                opened = f"  new PG connections {sessions_after - sessions_before - 1}"
            print(f"{line}  p50 {p50:6.1f} ms  server CPU {per_request:4.2f} ms/req{opened}", flush=True)
    for name in requests:
        rate = statistics.median(rates[name])
        p50, p95 = (percentile(latencies[name], share) * 1000 for share in (0.5, 0.95))
        target.results[f"single {name}"] = rate
        lines.append(
            f"{target.backend:8s} single {name:8s} {rate:7.0f} req/s  p50 {p50:6.1f} ms  p95 {p95:6.1f} ms"
            f"  server CPU {statistics.median(cpu[name]):4.2f} ms/req"
        )
    ratio = target.results["single conveyor"] / target.results["single anchor"]
    target.results["single ratio"] = ratio
    lines.append(f"{target.backend:8s} single conveyor / anchor  {ratio:.2f}")
    return lines


SCENARIOS: dict[str, Callable[[Target], Any]] = {"single": single_submits}


# --- in process -----------------------------------------------------------------------------------


def in_process(backend: str, count: int, profile: bool) -> list[str]:
    """`submit_job()` and RQ's `enqueue` in this process, on the stack's databases (jobs/s)."""
    from jobs.actions.submit import submit_job
    from jobs.history.db import open_session
    from jobs.queues.queueing import get_queue
    from jobs.settings import get_settings
    from jobs.state.redis_conn import get_redis, reset_redis

    get_settings.cache_clear()
    reset_redis()
    client = get_redis()

    def submit() -> None:
        with open_session() as session:
            submit_job(
                session=session, client=client, tenant="bench", owner=None,
                task="long_task", payload={"n": 1}, queue=QUEUE,
            )  # fmt: skip

    queue = get_queue(QUEUE, client)

    def rq_enqueue() -> None:
        queue.enqueue("bench.submit_anchor.noop", kwargs={"n": 1})

    lines = []
    for name, one in (("submit_job()", submit), ("RQ enqueue", rq_enqueue)):
        for _ in range(100):
            one()
        started = time.perf_counter()
        for _ in range(count):
            one()
        rate = count / (time.perf_counter() - started)
        lines.append(f"{backend:8s} in process {name:13s} {rate:7.0f} jobs/s  {1000 / rate:5.2f} ms each")
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(count):
            submit()
        profiler.disable()
        print(f"--- {backend}: submit_job() x {count}, cumulative ---")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
    return lines


# --- the run --------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    raise_fd_limit()
    backends = [b for b in ("sqlite", "postgres") if not getattr(args, f"skip_{b}")]
    summary: list[str] = []
    ratios: dict[str, float] = {}
    for backend in backends:
        cleanups: list[Callable[[], None]] = []
        try:
            target = open_target(backend, args, cleanups)
            for name in args.only:
                summary += await SCENARIOS[name](target)
            if args.in_process:
                summary += in_process(backend, args.in_process_jobs, args.profile)
            if "single ratio" in target.results:
                ratios[backend] = target.results["single ratio"]
        finally:
            for cleanup in reversed(cleanups):
                cleanup()
    print(f"load average before: {args.load_before}; after: {os.getloadavg()[0]:.2f}")
    print(f"{args.concurrency} keep-alive connections, {args.seconds:.0f} s per round, {args.rounds} rounds")
    for line in summary:
        print(line)
    headline = ratios.get("postgres", ratios.get("sqlite"))
    if headline is not None:
        print(f"ratio {headline:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument(
        "--only", type=lambda text: text.split(","), default=list(SCENARIOS), help="comma-separated scenarios"
    )
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--in-process", action="store_true", help="also time submit_job() and RQ enqueue")
    parser.add_argument("--in-process-jobs", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="cProfile submit_job() (with --in-process)")
    args = parser.parse_args()
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}")
    args.load_before = f"{os.getloadavg()[0]:.2f}"
    import uvloop

    uvloop.run(run(args))


if __name__ == "__main__":
    main()
