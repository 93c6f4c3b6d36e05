"""GET /api/v1/jobs/{id} throughput next to a bare FastAPI hello-world, served the same way.

    python bench/get_throughput.py [--seconds 5] [--rounds 3] [--connections 50]

Both apps run under uvicorn with one worker (as `conveyor api` serves Conveyor).
Conveyor's request is the real one: API-key authentication, tenant check,
the snapshot read from Redis, the stored document returned with its ETag. The
load comes from keep-alive HTTP/1.1 connections in this process (uvloop),
alternating between the two servers each round. The last line is `ratio X.XX`:
Conveyor's requests/s over hello-world's (median of the rounds; target >= 0.60).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.stack import Stack, raise_fd_limit

HOST = "127.0.0.1"


class KeepAliveGetter(asyncio.Protocol):
    """Sends the same GET again as soon as the previous response is complete."""

    def __init__(self, request: bytes, stats: dict[str, int], running: list[bool]) -> None:
        self.request = request
        self.stats = stats
        self.running = running
        self.buffer = b""
        self.transport: Any = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio's classes
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (head_end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:head_end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            self.stats["ok" if self.buffer[9:12] == b"200" else "bad"] += 1
            self.buffer = self.buffer[end:]
            if self.running[0] and self.transport is not None:
                self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def load(port: int, path: str, headers: str, connections: int, seconds: float) -> tuple[float, int]:
    """(requests per second, non-200 answers) over ``seconds`` after a one-second warm-up."""
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n".encode()
    stats = {"ok": 0, "bad": 0}
    running = [True]
    getters = [
        (await loop.create_connection(lambda: KeepAliveGetter(request, stats, running), HOST, port))[1]
        for _ in range(connections)
    ]
    await asyncio.sleep(1.0)  # warm-up
    start_ok, start_bad, started = stats["ok"], stats["bad"], time.perf_counter()
    await asyncio.sleep(seconds)
    done_ok, done_bad, elapsed = stats["ok"], stats["bad"], time.perf_counter() - started
    running[0] = False
    for getter in getters:
        if getter.transport is not None:
            getter.transport.close()
    await asyncio.gather(*(g.closed for g in getters))
    return (done_ok - start_ok) / elapsed, done_bad - start_bad


async def run(args: argparse.Namespace) -> None:
    from jobs.embedded import free_port

    raise_fd_limit()
    stack = Stack(queues=["default"])
    try:
        api_port, hello_port = free_port(), free_port()
        stack.serve("api.main:app", api_port)
        stack.serve("bench.hello:app", hello_port)
        auth = f"Authorization: Bearer {stack.key}\r\n"
        job = httpx.post(
            f"http://{HOST}:{api_port}/api/v1/jobs",
            json={"task": "long_task", "payload": {"n": 1}},
            headers={"Authorization": f"Bearer {stack.key}"},
        ).json()
        targets = {
            "hello-world": (hello_port, "/", ""),
            "conveyor GET /api/v1/jobs/{id}": (api_port, f"/api/v1/jobs/{job['job_id']}", auth),
        }
        rates: dict[str, list[float]] = {name: [] for name in targets}
        for round_no in range(1, args.rounds + 1):
            order = list(targets) if round_no % 2 else list(targets)[::-1]
            for name in order:
                port, path, headers = targets[name]
                rate, bad = await load(port, path, headers, args.connections, args.seconds)
                if bad:
                    raise RuntimeError(f"{name}: {bad} answers were not 200")
                rates[name].append(rate)
                print(f"round {round_no} {name:32s} {rate:9.0f} req/s")
    finally:
        stack.close()
    hello, conveyor = (statistics.median(values) for values in rates.values())
    print(f"hello-world (median)              {hello:9.0f} req/s")
    print(f"conveyor GET (median)             {conveyor:9.0f} req/s")
    print(f"{args.connections} keep-alive connections, {args.seconds:.0f} s per round, {args.rounds} rounds")
    print(f"ratio {conveyor / hello:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    import uvloop

    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
