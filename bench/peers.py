"""Conveyor's worker next to the systems a user would pick instead, in one run, on one private Redis.

    .venv-bench/bin/python bench/peers.py [--jobs N] [--only a,b] [--skip a,b] [--quick]
                                          [--conveyor-args "--concurrency 4"] [--conveyor-sleep-task T]

For each system: queue N jobs from this process with the system's own client, start 2 worker
processes with its own CLI (concurrency at its defaults), and time the drain from the first job
done to the last (start-up is reported apart, as "start -> first job done"). Then, on the same
warm idle workers, 200 jobs one at a time: submit, wait for the start, next. Every system's task
is the same line (bench/peer_mark.py: a wall-clock mark appended to a file), so throughput,
start-up and latency are read from the same instrument for all; worker CPU comes from the worker
process trees (children included), Redis commands from `INFO commandstats` over the drain.
Conveyor's legs also wait until SQL has every job finished (the recorder's history is part of its
drain) and check it at the end. Targets print PASS/FAIL; the last line is `ratio X.XX` =
Conveyor no-op jobs/s / RQ `Worker` no-op jobs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from redis import Redis
from redis import exceptions as redis_errors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peer_mark import LINE  # noqa: E402
from jobs.embedded import free_port  # noqa: E402

BIN = Path(sys.executable).parent
QUEUE = "peers"
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


# --- the instrument ---------------------------------------------------------------------------------


def marks(path: Path) -> int:
    """How many jobs have marked so far (fixed-width lines: a stat, no read)."""
    try:
        return path.stat().st_size // LINE
    except FileNotFoundError:
        return 0


def mark_time(path: Path, index: int) -> float:
    """The wall-clock time of mark ``index`` (0-based; -1 is the last)."""
    with path.open("rb") as fh:
        fh.seek(index * LINE if index >= 0 else -LINE, os.SEEK_SET if index >= 0 else os.SEEK_END)
        return float(fh.read(LINE))


def wait_for_marks(path: Path, count: int, timeout: float, interval: float) -> None:
    deadline = time.monotonic() + timeout
    while marks(path) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{marks(path)} of {count} jobs done after {timeout:.0f} s")
        time.sleep(interval)


def commands(redis: Redis) -> int:
    """Every command Redis has served so far, less the INFO calls this benchmark makes."""
    stats = redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of the worker processes and all their descendants, the reaped ones included
    (a reaped child's time is in its parent's children_* fields, a live one's only in its own)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    t = proc.cpu_times()
                    total += t.user + t.system + t.children_user + t.children_system
    return total


# --- the systems ------------------------------------------------------------------------------------


@dataclass
class System:
    """One leg: how to queue a job from this process and which commands start its workers."""

    name: str
    concurrency: str  # what the 2 worker processes run at, by default
    per_job: str  # what the system keeps of each job (docs/benchmarks.md)
    commands: Callable[[str], list[list[str]]]  # kind ("noop"/"sleep") -> worker command lines
    enqueue: Callable[[str], object]  # kind -> queue one job (what the client returns is unused)
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[], object] = lambda: None
    finished_in_sql: Callable[[], int] | None = None  # Conveyor: how many jobs SQL has finished
    teardown: Callable[[], object] = lambda: None


class Loop:
    """One event loop for an async client, so each enqueue pays for the call, not for a new loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)


def twice(argv: list[str]) -> list[list[str]]:
    """Two worker processes for CLIs that start one each."""
    return [argv, argv]


def rq_system(name: str, worker_class: str, url: str) -> System:
    from rq import Queue

    queue = Queue(QUEUE, connection=Redis.from_url(url))
    return System(
        name=name,
        concurrency=f"2 x `rq worker -w {worker_class}`, 1 job at a time each",
        per_job="job hash + result kept 500 s, registries; "
        + ("forks a work-horse per job" if worker_class.endswith(".Worker") else "runs jobs in-process"),
        commands=lambda kind: twice(
            [str(BIN / "rq"), "worker", "-q", "--url", url, "-w", worker_class, QUEUE]
        ),
        enqueue=lambda kind: queue.enqueue(f"bench.peer_mark.{kind}"),
    )


def arq_system(url: str) -> System:
    from arq import create_pool
    from arq.connections import RedisSettings

    loop = Loop()
    pool = loop.run(create_pool(RedisSettings.from_dsn(url)))
    return System(
        name="arq",
        concurrency="2 x `arq`, max_jobs 10 each (asyncio)",
        per_job="job + result kept 1 h (keep_result default)",
        commands=lambda kind: twice([str(BIN / "arq"), "bench.peer_apps.arq_app.WorkerSettings"]),
        enqueue=lambda kind: loop.run(pool.enqueue_job(kind)),
    )


def saq_system(url: str) -> System:
    from saq import Queue

    loop = Loop()
    queue = Queue.from_url(url)
    loop.run(queue.connect())
    return System(
        name="saq",
        concurrency="2 x `saq`, concurrency 10 each (asyncio)",
        per_job="job record kept (default ttl 600 s), stats",
        commands=lambda kind: twice([str(BIN / "saq"), "bench.peer_apps.saq_app.settings"]),
        enqueue=lambda kind: loop.run(queue.enqueue(kind)),
    )


def celery_system(url: str) -> System:
    from bench.peer_apps import celery_app

    tasks = {"noop": celery_app.noop, "sleep": celery_app.sleep}
    return System(
        name="celery",
        concurrency="1 x `celery worker`: prefork, 2 children (one per core), prefetch 4",
        per_job="nothing after the ack (no result backend by default)",
        commands=lambda kind: [
            [str(BIN / "celery"), "-A", "bench.peer_apps.celery_app", "worker", "-l", "WARNING"]
        ],
        enqueue=lambda kind: tasks[kind].delay(),
    )


def dramatiq_system(url: str) -> System:
    from bench.peer_apps import dramatiq_app

    actors = {"noop": dramatiq_app.noop, "sleep": dramatiq_app.sleep}
    return System(
        name="dramatiq",
        concurrency="1 x `dramatiq`: 2 processes (one per core), 8 threads each",
        per_job="nothing after the ack (no results middleware by default)",
        commands=lambda kind: [[str(BIN / "dramatiq"), "bench.peer_apps.dramatiq_app"]],
        enqueue=lambda kind: actors[kind].send(),
    )


def taskiq_system(url: str) -> System:
    from bench.peer_apps import taskiq_app

    loop = Loop()
    tasks = {"noop": taskiq_app.noop, "sleep": taskiq_app.sleep}
    return System(
        name="taskiq",
        concurrency="1 x `taskiq worker`: 2 processes (its default), asyncio",
        per_job="stream entry acked (no result backend by default)",
        commands=lambda kind: [[str(BIN / "taskiq"), "worker", "bench.peer_apps.taskiq_app:broker"]],
        enqueue=lambda kind: loop.run(tasks[kind].kiq()),
        setup=lambda: loop.run(taskiq_app.broker.startup()),  # the consumer group, before the first job
    )


def conveyor_system(name: str, url: str, database: str, args: argparse.Namespace) -> System:
    """Conveyor through its real CLI and its API's submit path, full history written to SQL."""
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-peers-"))
    drop: list[Callable[[], None]] = []
    env = {
        "REDIS_URL": url,
        "CONVEYOR_ENVIRONMENT": "test",
        "CONVEYOR_SECRET_KEY": "bench-peers-not-a-secret-0123456789abcdef",
        "CONVEYOR_TASK_MODULES": '["worker.tasks", "bench.tasks"]',
        "CONVEYOR_QUEUES": f'["default", "{QUEUE}"]',
        "CONVEYOR_LOG_LEVEL": "WARNING",
    }
    tasks = {"noop": args.conveyor_noop_task, "sleep": args.conveyor_sleep_task}
    tenant = f"peers-{uuid.uuid4().hex[:8]}"

    def setup() -> None:
        from jobs.history.migrate import upgrade

        if database == "postgres":
            env["DATABASE_URL"] = _throwaway_postgres(drop)
        else:
            env["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.db'}"
        _configure(env)
        upgrade(env["DATABASE_URL"])

    def enqueue(kind: str) -> None:
        from jobs.actions.submit import submit_job
        from jobs.history.db import session_scope
        from jobs.state.redis_conn import get_redis

        with session_scope() as session:
            submit_job(
                session=session,
                client=get_redis(),
                tenant=tenant,
                owner=None,
                task=tasks[kind],
                payload={},
                queue=QUEUE,
            )

    def finished() -> int:
        from sqlmodel import func, select

        from jobs.history.db import session_scope
        from jobs.history.models import Job

        with session_scope() as session:
            query = select(func.count()).select_from(Job)
            return int(session.exec(query.where(Job.status == "finished", Job.tenant == tenant)).one())

    argv = [str(BIN / "conveyor"), "worker", "--queues", QUEUE, *shlex.split(args.conveyor_args)]
    return System(
        name=name,
        concurrency="2 x `conveyor worker"
        + (f" {args.conveyor_args}" if args.conveyor_args else "")
        + "` (a pool: one child per core unless --concurrency says otherwise), a recorder child each",
        per_job="SQL row + events (history), Redis snapshot, pub/sub, journal, RQ's records; "
        "long-lived children, no fork per job",
        commands=lambda kind: twice(argv),
        enqueue=enqueue,
        env=env,
        setup=setup,
        finished_in_sql=finished,
        teardown=lambda: [fn() for fn in drop],
    )


def _configure(env: dict[str, str]) -> None:
    """Point this process's Conveyor settings, engine and Redis client at ``env`` (a leg each)."""
    from jobs.history.db import reset_engine
    from jobs.settings import get_settings
    from jobs.state.redis_conn import reset_redis

    os.environ.update(env)
    get_settings.cache_clear()
    reset_engine()
    reset_redis()


def _throwaway_postgres(drop: list[Callable[[], None]]) -> str:
    import psycopg

    name = f"conveyor_peers_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def dropdb() -> None:
        from jobs.history.db import reset_engine

        reset_engine()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    drop.append(dropdb)
    return f"{POSTGRES_URL.rpartition('/')[0]}/{name}"


SYSTEMS: dict[str, Callable[[str, argparse.Namespace], System]] = {
    "conveyor-sqlite": lambda url, a: conveyor_system("conveyor-sqlite", url, "sqlite", a),
    "conveyor-pg": lambda url, a: conveyor_system("conveyor-pg", url, "postgres", a),
    "rq-worker": lambda url, a: rq_system("rq-worker", "rq.worker.Worker", url),
    "rq-simple": lambda url, a: rq_system("rq-simple", "rq.worker.SimpleWorker", url),
    "arq": lambda url, a: arq_system(url),
    "saq": lambda url, a: saq_system(url),
    "celery": lambda url, a: celery_system(url),
    "dramatiq": lambda url, a: dramatiq_system(url),
    "taskiq": lambda url, a: taskiq_system(url),
}


# --- one leg ----------------------------------------------------------------------------------------


@dataclass
class Drain:
    rate: float  # jobs/s from the first job done to the last (and, for Conveyor, SQL caught up)
    startup: float  # s from spawning the first worker to the first job done
    cpu_ms: float  # worker CPU per job over the drain
    commands: float  # Redis commands per job over the drain


@contextlib.contextmanager
def workers(system: System, kind: str, mark_file: Path) -> Iterator[list[int]]:
    """The system's worker processes, each in its own session, output to a log beside the marks;
    SIGTERM (its warm shutdown) on the way out, then SIGKILL for whatever is left after 20 s."""
    env = {**os.environ, **system.env, "BENCH_MARK_FILE": str(mark_file), "PYTHONPATH": str(ROOT)}
    log = mark_file.with_suffix(".log").open("ab")
    procs = [
        subprocess.Popen(argv, env=env, cwd=ROOT, start_new_session=True, stdout=log, stderr=log)
        for argv in system.commands(kind)
    ]
    try:
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def check_alive(procs: list[int]) -> None:
    for pid in procs:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            raise RuntimeError(f"a worker process (pid {pid}) exited")


def drain(
    system: System, redis: Redis, jobs: int, mark_file: Path, pids: list[int], spawned: float, sql_target: int
) -> Drain:
    """Time the already-queued ``jobs`` through the running workers; for Conveyor, until SQL has
    ``sql_target`` jobs finished too (the history is part of its drain)."""
    wait_for_marks(mark_file, 1, timeout=300, interval=0.002)
    check_alive(pids)
    cpu0, cmd0, done0 = tree_cpu(pids), commands(redis), marks(mark_file)
    wait_for_marks(mark_file, jobs, timeout=600, interval=0.005)
    end = mark_time(mark_file, -1)
    finished = system.finished_in_sql
    if finished is not None:
        wait_until(lambda: finished() >= sql_target, 120)
        end = max(end, time.time())
    cpu1, cmd1 = tree_cpu(pids), commands(redis)
    first = mark_time(mark_file, 0)
    window = jobs - done0
    return Drain(
        rate=(jobs - 1) / (end - first),
        startup=first - spawned,
        cpu_ms=1000 * (cpu1 - cpu0) / window,
        commands=(cmd1 - cmd0) / window,
    )


def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout:.0f} s")
        time.sleep(0.02)


def latency(system: System, mark_file: Path, count: int) -> list[float]:
    """Submit -> the job's first line, one job at a time, on the warm idle workers (ms)."""
    out = []
    for _ in range(count):
        before = marks(mark_file)
        time.sleep(0.02)  # idle: nothing in flight when the next submit goes
        submitted = time.time()
        system.enqueue("noop")
        wait_for_marks(mark_file, before + 1, timeout=30, interval=0.0005)
        out.append(1000 * (mark_time(mark_file, before) - submitted))
    return out


@dataclass
class Result:
    noop: Drain
    sleep: Drain
    p50: float
    p95: float


def run_leg(system: System, redis: Redis, jobs: int, latency_jobs: int, tmp: Path) -> Result:
    """No-op drain, latency on the same warm workers, then the 10 ms drain on fresh ones."""
    redis.flushall()  # each leg starts on an empty Redis (setup may declare what its workers need)
    system.setup()
    found: dict[str, Drain] = {}
    lat: list[float] = []
    sql_target = 0
    for kind in ("noop", "sleep"):
        mark_file = tmp / f"{system.name}-{kind}.marks"
        for _ in range(jobs):
            system.enqueue(kind)
        sql_target += jobs
        spawned = time.time()
        with workers(system, kind, mark_file) as pids:
            found[kind] = drain(system, redis, jobs, mark_file, pids, spawned, sql_target)
            if kind == "noop":
                lat = latency(system, mark_file, latency_jobs)
                sql_target += latency_jobs
    if system.finished_in_sql is not None:
        done = system.finished_in_sql()
        expected = 2 * jobs + latency_jobs
        if done != expected:
            raise RuntimeError(f"SQL has {done} of {expected} jobs finished")
    lat.sort()
    return Result(
        noop=found["noop"],
        sleep=found["sleep"],
        p50=statistics.median(lat),
        p95=lat[min(len(lat) - 1, int(0.95 * len(lat)))],
    )


# --- the report -------------------------------------------------------------------------------------


def versions() -> str:
    from importlib import metadata

    found = []
    for dist in (
        "conveyor",
        "rq",
        "redis",
        "arq",
        "saq",
        "celery",
        "kombu",
        "dramatiq",
        "taskiq",
        "taskiq-redis",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{dist} {metadata.version(dist)}")
    server = subprocess.run(["/usr/bin/redis-server", "--version"], capture_output=True, text=True).stdout
    return ", ".join(found) + f"; {server.split(' sha')[0].strip()}; Python {sys.version.split()[0]}"


def table(results: dict[str, Result]) -> None:
    print(
        f"\n{'system':24s} {'no-op/s':>8s} {'10ms/s':>7s} {'start s':>7s} {'p50 ms':>7s} {'p95 ms':>7s}"
        f" {'cpu ms/job':>10s} {'cmds/job':>8s} {'10ms cmds':>9s}"
    )
    for name, r in results.items():
        print(
            f"{name:24s} {r.noop.rate:8.0f} {r.sleep.rate:7.0f} {r.noop.startup:7.2f} {r.p50:7.1f}"
            f" {r.p95:7.1f} {r.noop.cpu_ms:10.2f} {r.noop.commands:8.1f} {r.sleep.commands:9.1f}"
        )


def ratios(results: dict[str, Result], headline: str) -> None:
    base = results[headline]
    print(f"\nratios ({headline} / peer): no-op throughput, 10 ms throughput, cpu per no-op job")
    for name, r in results.items():
        if name != headline:
            print(
                f"  vs {name:22s} {base.noop.rate / r.noop.rate:6.2f}x {base.sleep.rate / r.sleep.rate:6.2f}x"
                f" {base.noop.cpu_ms / r.noop.cpu_ms:6.2f}x"
            )


def targets(results: dict[str, Result], headline: str) -> None:
    r = results[headline]
    checks: list[tuple[str, str, bool]] = []

    def ratio_check(
        label: str, peer: str, mine: float, theirs: Callable[[Result], float], need: float
    ) -> None:
        if peer in results:
            value = mine / theirs(results[peer])
            checks.append((label, f"{value:.2f}x", value >= need))

    ratio_check("no-op >= 5x RQ Worker", "rq-worker", r.noop.rate, lambda p: p.noop.rate, 5.0)
    ratio_check("no-op >= 1.0x Celery prefork", "celery", r.noop.rate, lambda p: p.noop.rate, 1.0)
    ratio_check("10 ms I/O >= 0.5x SAQ", "saq", r.sleep.rate, lambda p: p.sleep.rate, 0.5)
    checks.append(("enqueue->started p50 <= 5 ms", f"{r.p50:.1f} ms", r.p50 <= 5))
    checks.append(("enqueue->started p95 <= 20 ms", f"{r.p95:.1f} ms", r.p95 <= 20))
    checks.append(("<= 40 Redis commands per no-op job", f"{r.noop.commands:.1f}", r.noop.commands <= 40))
    checks.append(("start -> first job done <= 0.5 s", f"{r.noop.startup:.2f} s", r.noop.startup <= 0.5))
    print(f"\ntargets ({headline})")
    for label, value, ok in checks:
        print(f"  {label:38s} {value:>10s}  {'PASS' if ok else 'FAIL'}")


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A Redis of the run's own: no persistence, never the shared one on 6379."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "/usr/bin/redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = Redis.from_url(url)
        wait_until(lambda: _pings(client), 10)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _pings(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except redis_errors.ConnectionError:  # the server is still starting
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs per drain (300: the run fits 10 min)")
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--only", default="", help=f"comma-separated, of: {','.join(SYSTEMS)}")
    parser.add_argument("--skip", default="")
    parser.add_argument("--quick", action="store_true", help="200 jobs per drain, 50 latency jobs")
    parser.add_argument(
        "--leg-timeout", type=int, default=300, help="seconds a system's leg may take before it is skipped"
    )
    parser.add_argument("--headline", default="conveyor-sqlite", help="the Conveyor leg the targets judge")
    parser.add_argument("--conveyor-args", default="", help="extra `conveyor worker` arguments")
    parser.add_argument("--conveyor-noop-task", default="peer_noop")
    parser.add_argument(
        "--conveyor-sleep-task", default="peer_sleep", help="e.g. peer_async_sleep (an async task)"
    )
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.latency_jobs = 200, 50
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(SYSTEMS)
    skipped = {n.strip() for n in args.skip.split(",") if n.strip()}
    unknown = (set(chosen) | skipped) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems: {sorted(unknown)}")

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, {_cpu_model()}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"versions: {versions()}")
    print(f"jobs per drain: {args.jobs}, latency jobs: {args.latency_jobs}")
    results: dict[str, Result] = {}
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-peers-"))
    with private_redis() as url:
        os.environ["REDIS_URL"] = url
        redis = Redis.from_url(url)
        for name in chosen:
            if name in skipped:
                continue
            try:
                system = SYSTEMS[name](url, args)
            except Exception as exc:  # not installed, or its client would not start
                print(f"{name}: skipped: {type(exc).__name__}: {exc}")
                continue
            print(
                f"{name} (load {os.getloadavg()[0]:.2f}): {system.concurrency}; keeps: {system.per_job}",
                flush=True,
            )
            try:
                with time_limit(args.leg_timeout):
                    results[name] = run_leg(system, redis, args.jobs, args.latency_jobs, tmp)
            except Exception as exc:
                print(f"{name}: skipped: {type(exc).__name__}: {exc} (worker logs in {tmp})", flush=True)
            finally:
                system.teardown()
    print(f"load at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    table(results)
    if args.headline not in results:
        raise SystemExit(f"no {args.headline} result: nothing to judge")
    ratios(results, args.headline)
    targets(results, args.headline)
    if "rq-worker" not in results:
        raise SystemExit("no rq-worker result: no ratio")
    print(f"ratio {results[args.headline].noop.rate / results['rq-worker'].noop.rate:.2f}")


class LegTimeout(Exception):
    """A system's leg ran past ``--leg-timeout`` (a client call that never returned, say)."""


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (SIGALRM: it also breaks a call blocked on a socket)."""

    def expired(signum: int, frame: Any) -> None:
        raise LegTimeout(f"the leg took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
