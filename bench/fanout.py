"""Fan-out: SSE streams held by one API process, and how fast a worker's progress reaches them.

    python bench/fanout.py [--streams 5000] [--delay-streams 1000] [--updates 40] [--interval 0.2]

Two servers run side by side, each uvicorn with one worker: Conveyor's API (one
Redis subscription per process, fanned out in memory) and the naive pattern
of seed 001 (one Redis subscription per client, `bench/naive_sse.py`). For each:

- memory: open `--streams` SSE streams on a quiet job; resident memory per stream;
- delay: open `--delay-streams` streams on a job whose task (a real worker
  process) calls `progress.update` `--updates` times, putting `time.time()`
  in the message; every client notes when each update arrives. The figure
  is the p95, over updates, of the time until the LAST client has it (median over `--rounds`).

The clients are raw asyncio sockets in this process (uvloop). The last line is
`ratio X.XX`: the naive pattern's p95 delay over Conveyor's (above 1: faster).
Target: Conveyor's p95 <= 100 ms at 1,000 streams on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.stack import Stack, raise_fd_limit, rss_bytes

HOST = "127.0.0.1"
MESSAGE = b'"message":"'


class SSEClient(asyncio.Protocol):
    """One SSE connection: counts events, notes (sent_at, received_at) of timestamped ones."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buffer = b""
        self.events = 0
        self.samples: dict[float, float] = {}  # update's sent_at -> first received_at
        self.first = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        while (end := self.buffer.find(b"\n\n")) >= 0:
            event, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            if b"data:" not in event:
                continue
            self.events += 1
            if not self.first.done():
                self.first.set_result(None)
            at = event.find(MESSAGE)
            if at >= 0:
                stop = event.find(b'"', at + len(MESSAGE))
                with contextlib.suppress(ValueError):
                    self.samples.setdefault(float(event[at + len(MESSAGE) : stop]), now)
            if b'"status":"finished"' in event and not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.first, self.done):
            if not future.done():
                future.set_exception(ConnectionError(f"stream closed early ({exc}): {self.buffer[:300]!r}"))

    def close(self) -> None:
        for future in (self.first, self.done):
            if not future.done():
                future.cancel()
        if self.transport is not None:
            self.transport.close()


@dataclass
class Server:
    name: str
    port: int
    pid: int
    path: str  # with {job} in it
    headers: str = ""
    results: dict[str, Any] = field(default_factory=dict)

    def request(self, job_id: str) -> bytes:
        return (
            f"GET {self.path.format(job=job_id)} HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Accept: text/event-stream\r\n{self.headers}\r\n"
        ).encode()


async def open_streams(server: Server, job_id: str, count: int, batch: int = 250) -> list[SSEClient]:
    loop = asyncio.get_running_loop()
    request = server.request(job_id)
    clients: list[SSEClient] = []
    for start in range(0, count, batch):
        opened = await asyncio.gather(
            *(
                loop.create_connection(lambda: SSEClient(request), HOST, server.port)
                for _ in range(min(batch, count - start))
            )
        )
        clients.extend(protocol for _, protocol in opened)
        await asyncio.wait_for(asyncio.gather(*(c.first for c in clients[start:])), 60)
    return clients


async def close_streams(clients: list[SSEClient]) -> None:
    for client in clients:
        client.close()
    await asyncio.sleep(1.0)


def submit(stack: Stack, port: int, task: str, payload: dict[str, Any], queue: str) -> str:
    response = httpx.post(
        f"http://{HOST}:{port}/api/v1/jobs",
        json={"task": task, "payload": payload, "queue": queue},
        headers={"Authorization": f"Bearer {stack.key}"},
    )
    response.raise_for_status()
    return str(response.json()["job_id"])


def wait_started(stack: Stack, port: int, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        snap = httpx.get(
            f"http://{HOST}:{port}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {stack.key}"}
        ).json()
        if snap["status"] == "started":
            return
        time.sleep(0.05)
    raise RuntimeError(f"job {job_id} did not start (is the worker up?)")


async def memory_phase(stack: Stack, api_port: int, server: Server, streams: int) -> None:
    from jobs.state.redis_conn import get_redis

    quiet = submit(stack, api_port, "long_task", {"n": 1}, queue="default")  # no worker serves it
    warm = await open_streams(server, quiet, 20)
    await close_streams(warm)
    redis = get_redis()
    before, redis_before = rss_bytes(server.pid), int(redis.info("memory")["used_memory"])
    started = time.monotonic()
    clients = await open_streams(server, quiet, streams)
    opened_in = time.monotonic() - started
    await asyncio.sleep(1.0)
    after, redis_after = rss_bytes(server.pid), int(redis.info("memory")["used_memory"])
    subscribers = int(dict(redis.pubsub_numsub("cv:snapshots"))[b"cv:snapshots"])
    await close_streams(clients)
    server.results.update(
        streams=streams,
        open_seconds=opened_in,
        rss_mb=after / 1e6,
        per_stream_kb=(after - before) / streams / 1024,
        redis_per_stream_kb=(redis_after - redis_before) / streams / 1024,
        redis_subscribers=subscribers,
    )


async def delay_phase(
    stack: Stack, api_port: int, server: Server, streams: int, updates: int, interval: float
):
    from jobs.state.redis_conn import get_redis

    go_key = f"bench:go:{uuid.uuid4().hex}"
    job_id = submit(
        stack,
        api_port,
        "timed_progress",
        {"updates": updates, "interval": interval, "go_key": go_key},
        queue="bench",
    )
    wait_started(stack, api_port, job_id)
    clients = await open_streams(server, job_id, streams)
    get_redis().set(go_key, 1, ex=600)
    timeout = updates * interval + 60
    await asyncio.wait_for(asyncio.gather(*(c.done for c in clients), return_exceptions=True), timeout)
    await close_streams(clients)

    arrivals: dict[float, list[float]] = {}
    for client in clients:
        for sent, received in client.samples.items():
            arrivals.setdefault(sent, []).append(received - sent)
    complete = [delays for delays in arrivals.values() if len(delays) == streams]
    every = sorted(max(delays) for delays in complete)
    pairs = sorted(d for delays in arrivals.values() for d in delays)
    server.results.update(
        delay_streams=streams,
        updates_seen=len(arrivals),
        updates_complete=len(complete),
        p50_all_ms=1000 * percentile(every, 50),
        p95_all_ms=1000 * percentile(every, 95),
        max_all_ms=1000 * (every[-1] if every else float("nan")),
        p50_each_ms=1000 * percentile(pairs, 50),
        p95_each_ms=1000 * percentile(pairs, 95),
    )


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


async def run(args: argparse.Namespace) -> None:
    import uvloop  # noqa: F401  (the client side runs on uvloop too: see main)

    from jobs.embedded import free_port

    limit = raise_fd_limit()
    needed = max(args.streams, args.delay_streams) * 2 + 200
    if limit < needed:
        sys.exit(f"the open-file limit is {limit}; {needed} are needed (lower --streams)")
    stack = Stack(queues=["default", "bench"], extra_env={"CONVEYOR_LIVE_SEND_TIMEOUT": "30"})
    try:
        api_port, naive_port = free_port(), free_port()
        api = stack.serve("api.main:app", api_port)
        naive = stack.serve("bench.naive_sse:app", naive_port)
        stack.start_worker("bench")
        servers = [
            Server(
                "conveyor (one subscription)",
                api_port,
                api.pid,
                "/api/v1/jobs/{job}/stream",
                f"Authorization: Bearer {stack.key}\r\n",
            ),
            Server("naive (one per client)", naive_port, naive.pid, "/jobs/{job}/stream"),
        ]
        print(f"redis {stack.redis_url}; fd limit {limit}; machine: {machine()}")
        if args.streams:
            for server in servers:
                await memory_phase(stack, api_port, server, args.streams)
                print_memory(server)
        figures = ("p95_all_ms", "p95_each_ms")
        rounds: dict[tuple[str, str], list[float]] = {(s.name, f): [] for s in servers for f in figures}
        for round_no in range(args.rounds):
            for server in servers if round_no % 2 == 0 else servers[::-1]:
                await delay_phase(stack, api_port, server, args.delay_streams, args.updates, args.interval)
                print_delay(server, round_no + 1)
                for figure in figures:
                    rounds[server.name, figure].append(server.results[figure])
        for server in servers:
            for figure in figures:
                server.results[figure] = statistics.median(rounds[server.name, figure])
    finally:
        stack.close()

    conveyor, naive_side = servers
    print()
    print(f"median of {args.rounds} rounds (delay) at {args.delay_streams} streams; memory at {args.streams}")
    print(f"{'':28s} {'p95 all (ms)':>13s} {'p95 each (ms)':>14s} {'KB/stream':>10s} {'Redis subs':>10s}")
    for server in servers:
        r = server.results
        print(
            f"{server.name:28s} {r['p95_all_ms']:13.1f} {r['p95_each_ms']:14.1f} "
            f"{r.get('per_stream_kb', float('nan')):10.1f} {r.get('redis_subscribers', 0):10d}"
        )
    target = "met" if conveyor.results["p95_all_ms"] <= 100 else "NOT met"
    print(f"target p95 <= 100 ms at {args.delay_streams} streams: {target}")
    print(f"ratio {naive_side.results['p95_all_ms'] / conveyor.results['p95_all_ms']:.2f}")


def print_memory(server: Server) -> None:
    r = server.results
    print(
        f"{server.name}: {r['streams']} streams open in {r['open_seconds']:.1f} s; "
        f"RSS {r['rss_mb']:.0f} MB, {r['per_stream_kb']:.1f} KB per stream in the API process, "
        f"{r['redis_per_stream_kb']:.1f} KB per stream in Redis; {r['redis_subscribers']} Redis subscribers"
    )


def print_delay(server: Server, round_no: int) -> None:
    r = server.results
    print(
        f"round {round_no} {server.name}: {r['delay_streams']} streams, "
        f"{r['updates_complete']}/{r['updates_seen']} updates reached every stream; "
        f"to the last stream p50 {r['p50_all_ms']:.1f} ms, p95 {r['p95_all_ms']:.1f} ms, "
        f"max {r['max_all_ms']:.1f} ms; per stream p50 {r['p50_each_ms']:.1f} ms, "
        f"p95 {r['p95_each_ms']:.1f} ms"
    )


def machine() -> str:
    import os
    import platform

    return f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--streams", type=int, default=5000, help="streams held for the memory figure (0: skip)"
    )
    parser.add_argument("--delay-streams", type=int, default=1000, help="streams for the delay figure")
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between progress updates")
    parser.add_argument("--rounds", type=int, default=3, help="delay rounds per server (alternating order)")
    args = parser.parse_args()
    import uvloop

    uvloop.run(run(args))


if __name__ == "__main__":
    main()
