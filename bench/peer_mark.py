"""The one instrument every system's task in bench/peers.py shares: a fixed-width wall-clock line
appended to $BENCH_MARK_FILE. A file, not Redis, so the marks add nothing to the Redis commands
the benchmark counts, and one O_APPEND write per job costs every system the same few microseconds.
Imports nothing but the standard library (RQ runs these functions directly)."""

from __future__ import annotations

import asyncio
import os
import time

LINE = 18  # "%17.6f\n": a Unix time in seconds with microseconds, good until the year 2286


def mark() -> None:
    """Append now's wall-clock time; the benchmark counts lines and reads the times."""
    fd = os.open(os.environ["BENCH_MARK_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{time.time():17.6f}\n".encode())
    finally:
        os.close(fd)


def noop() -> None:
    """The no-op job: its only line is the mark, so the mark is both its start and its end."""
    mark()


def sleep() -> None:
    """The 10 ms I/O-bound job for systems that run sync tasks; marked when done."""
    time.sleep(0.01)
    mark()


async def async_noop() -> None:
    mark()


async def async_sleep() -> None:
    await asyncio.sleep(0.01)
    mark()
