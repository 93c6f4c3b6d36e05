"""Helpers for the live-progress tests: a server with short heartbeats, SSE reading, job surgery."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from jobs.clock import utcnow
from jobs.snapshot import PUBLIC_FIELDS, assemble, encode
from jobs.state.live import job_key
from jobs.state.redis_conn import get_redis

T = TypeVar("T")
HEARTBEAT = 0.5
SEND_TIMEOUT = 1.0
LIVE_ENV = {"CONVEYOR_LIVE_HEARTBEAT": str(HEARTBEAT), "CONVEYOR_LIVE_SEND_TIMEOUT": str(SEND_TIMEOUT)}


@dataclass
class Event:
    id: str | None
    data: dict[str, Any]
    at: float


def read_events(lines: Iterator[str]) -> Iterator[Event]:
    """SSE events from response lines, independent of the client package's parser."""
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            yield Event(event_id, json.loads("\n".join(data)), time.monotonic())
            event_id, data = None, []


def collect_stream(
    url: str, headers: dict[str, str], *, limit: int | None = None, timeout: float = 30
) -> tuple[int, list[Event], bool]:
    """(status, events, ended_by_server) of one SSE request; stops after ``limit`` events."""
    events: list[Event] = []
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
        if response.status_code != 200:
            return response.status_code, events, True
        for event in read_events(response.iter_lines()):
            events.append(event)
            if limit is not None and len(events) >= limit:
                return 200, events, False
    return 200, events, True


def write_without_publishing(job_id: str, **changes: Any) -> dict[str, Any]:
    """Change a job's live state the way the Lua gate would, but publish nothing: a lost message."""
    client = get_redis()
    raw = {k.decode(): v.decode() for k, v in client.hgetall(job_key(job_id)).items()}
    fields = {name: raw[name] for name in PUBLIC_FIELDS if name in raw}
    seq = int(fields["seq"]) + 1
    for name, value in {**changes, "updated_at": utcnow(), "seq": seq}.items():
        fields[name] = encode(value)
    doc = assemble(fields)
    client.hset(job_key(job_id), mapping={**fields, "_doc": doc})
    return json.loads(doc)


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    """Run ``coro`` on a private event loop. Unlike asyncio.run, leaves the thread's current-loop
    setting alone (Mangum's handler, tested elsewhere, asks for it with get_event_loop())."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
