"""The API's snapshot read through three Redis clients, in one run, on one server.

    python bench/pipelined_redis.py [--seconds 3] [--rounds 3] [--tasks 200] [--jobs 1000]

The command is the one `GET /api/v1/jobs/{id}` sends: `HMGET conveyor:job:<id> tenant _doc seq`
on a hash seeded like a running job's (a ~700-byte snapshot document). ``--tasks`` asyncio tasks
in this process (uvloop, as under uvicorn) each issue it in a loop, as concurrent requests do.
Clients:

- ours: `jobs.state.pipelined_redis.PipelinedRedis` (one auto-pipelined connection per loop);
- redis-py: `redis.asyncio.Redis` on a blocking pool of 100 connections, as `jobs.state.redis_conn` sets
  up the API's, with hiredis's parser when installed (the line says which);
- valkey-glide: `glide.GlideClient` (one multiplexed connection, Rust core), when installed.

Each round runs every client for ``--seconds`` after a 0.5 s warm-up, in rotating order; the
figures are medians. CPU per operation counts every thread of this process (glide's Rust runtime
runs beside the event loop), so it stays comparable when the cores are shared.
The last line is `ratio X.XX`: ours over the fastest other client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

Command = Callable[[str], Awaitable[Any]]
FIELDS = ("tenant", "_doc", "seq")


def seed(url: str, jobs: int) -> list[str]:
    """``jobs`` hashes shaped like the live store's job hashes; their keys."""
    from redis import Redis

    client = Redis.from_url(url)
    keys = []
    pipe = client.pipeline(transaction=False)
    for n in range(jobs):
        job_id = f"bench{n:06d}"
        doc = {
            "id": job_id,
            "task": "heavy_compute",
            "status": "started",
            "queue": "default",
            "progress": {"current": n % 100, "total": 100, "message": "step " + "x" * 40},
            "params": {"n": n, "label": "a" * 200},
            "result": None,
            "error": None,
            "created_at": "2026-12-03T10:00:00.000000Z",
            "started_at": "2026-12-03T10:00:01.000000Z",
            "ended_at": None,
            "attempt": 1,
            "seq": 7,
            "tags": ["bench", "pipelined", "redis"],
            "note": "b" * 250,
        }
        key = f"conveyor:job:{job_id}"
        pipe.hset(key, mapping={"tenant": "bench", "_doc": json.dumps(doc), "seq": "7", "status": "started"})
        keys.append(key)
    pipe.execute()
    client.close()
    return keys


async def drive(command: Command, keys: list[str], tasks: int, seconds: float) -> tuple[float, float]:
    """(operations per second, this process's CPU µs per operation, every thread counted) of
    ``tasks`` concurrent loops of ``command`` over ``seconds``."""
    counts = [0] * tasks
    running = [True]

    async def loop(slot: int) -> None:
        rng = random.Random(slot)
        while running[0]:
            reply = await command(rng.choice(keys))
            if reply[0] != b"bench":  # every client must really have read the hash
                raise AssertionError(f"unexpected reply {reply!r}")
            counts[slot] += 1

    workers = [asyncio.create_task(loop(slot)) for slot in range(tasks)]
    await asyncio.sleep(0.5)  # warm-up: connections opened, pools filled
    before, started, cpu = sum(counts), time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    done, elapsed, cpu = sum(counts), time.perf_counter() - started, time.process_time() - cpu
    running[0] = False
    await asyncio.gather(*workers)
    return (done - before) / elapsed, cpu * 1e6 / max(1, done - before)


async def ours(url: str) -> tuple[Command, Callable[[], Awaitable[None]]]:
    import redis.exceptions

    from jobs.state.pipelined_redis import PipelinedRedis

    client = PipelinedRedis(url)

    async def command(key: str) -> Any:
        return await client.command("HMGET", key, *FIELDS)

    async def close() -> None:
        client._fail(redis.exceptions.ConnectionError("benchmark over"))

    return command, close


async def redis_py(url: str) -> tuple[Command, Callable[[], Awaitable[None]]]:
    import redis.asyncio

    from jobs.state.redis_conn import ASYNC_MAX_CONNECTIONS

    # Configured as jobs.state.redis_conn.get_async_redis configures the API's own asyncio client.
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=ASYNC_MAX_CONNECTIONS,
        timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    client = redis.asyncio.Redis(connection_pool=pool)

    async def command(key: str) -> Any:
        return await client.hmget(key, FIELDS)

    return command, client.aclose


async def glide(url: str) -> tuple[Command, Callable[[], Awaitable[None]]]:
    from glide import GlideClient, GlideClientConfiguration, NodeAddress
    from redis.connection import parse_url

    options = parse_url(url)
    config = GlideClientConfiguration([NodeAddress(options.get("host", "localhost"), options["port"])])
    client = await GlideClient.create(config)

    async def command(key: str) -> Any:
        return await client.hmget(key, list(FIELDS))

    return command, client.close


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


async def run(url: str, args: argparse.Namespace) -> None:
    import redis.utils

    keys = seed(url, args.jobs)
    parser = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "pure-Python parser"
    clients: dict[str, Callable[[str], Awaitable[tuple[Command, Callable[[], Awaitable[None]]]]]] = {
        "ours (PipelinedRedis)": ours,
        f"redis-py {version('redis')} asyncio, {parser} {version('hiredis')}": redis_py,
    }
    try:
        import glide as _  # noqa: F401

        clients[f"valkey-glide {version('valkey-glide')}"] = glide
    except ImportError:
        print("valkey-glide: not installed, left out")
    rates: dict[str, list[float]] = {name: [] for name in clients}
    cpu: dict[str, list[float]] = {name: [] for name in clients}
    names = list(clients)
    for round_no in range(args.rounds):
        order = names[round_no % len(names) :] + names[: round_no % len(names)]
        for name in order:
            command, close = await clients[name](url)
            try:
                rate, cpu_per_op = await drive(command, keys, args.tasks, args.seconds)
            finally:
                await close()
            rates[name].append(rate)
            cpu[name].append(cpu_per_op)
            print(f"round {round_no + 1}: {name}: {rate:,.0f} ops/s, {cpu_per_op:.1f} µs CPU/op", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{args.tasks} tasks, HMGET of 3 fields ({args.jobs} hashes), medians of {args.rounds} rounds:")
    for name, rate in medians.items():
        print(f"  {name}: {rate:,.0f} ops/s, {statistics.median(cpu[name]):.1f} µs CPU/op")
    mine = medians[names[0]]
    best_name, best = max(((n, r) for n, r in medians.items() if n != names[0]), key=lambda p: p[1])
    print(f"ours / fastest other ({best_name}): {mine / best:.2f}")
    print(f"ratio {mine / best:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--redis-url", default="", help="an existing server (default: an embedded one)")
    args = parser.parse_args()
    server = None
    url = args.redis_url
    if not url:
        from jobs.embedded import EmbeddedRedis

        server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="conveyor-bench-redis-")), persist=False)
        url = server.start()
    try:
        try:
            import uvloop

            runner: Any = uvloop.run
        except ImportError:
            runner = asyncio.run
        runner(run(url, args))
    finally:
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()


if __name__ == "__main__":
    main()
