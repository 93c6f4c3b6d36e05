"""Jobs' ends into SQL straight from the worker, without waiting for a recorder.

When a job ends, its child hands the journal entries of the attempt (its start,
its last journaled progress and its end, as the scripts returned them, with their
entry ids) to the supervisor over a pipe of its own; the supervisor's writer thread
applies everything that arrived within a few milliseconds in one SQL transaction.
So SQL holds a job's end moments after it happened even if Redis then loses the
journal before a recorder read it (the loss sweep would otherwise run the job
again), at a transaction per batch rather than per job, without SQL in the
processes that run tasks, and never ahead of the progress that led to it.

Then the writer takes those entries out of the journal (`jobs.history.recorder.take_applied`):
those no recorder has been handed yet are deleted and counted in the metrics in one
script, so each change is written to SQL and counted once; those a recorder already
holds stay its own (applied again, idempotently, and counted there). A job the fast
path did not end (RQ's path, a failure, a cancel) is handed over by id, and its
entries are looked up in the journal (`jobs.history.recorder.record_end_now`). The hand-over
never blocks a child: a frame that does not fit in the pipe is dropped, and the
recorders carry that end.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import selectors
import struct
import threading
import time
from typing import Any

from redis import Redis

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<I")
LINGER = 0.01  # seconds the writer gathers ends before a transaction
PIPE_SIZE = 1 << 20  # room for a burst of ends (a frame is about 1 KB per entry)

Entry = tuple[str, bytes, str, bytes]
"""A journal entry as a script returned it: (event, document, data, entry id; b"" if unknown)."""


def new_pipe() -> tuple[int, int]:
    """(read end, write end); the write end never blocks."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    with contextlib.suppress(OSError, AttributeError):  # Linux only; the default (64 KB) works too
        fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read, write


class EndNotes:
    """A child's side: tells the supervisor which job just ended, with its entries when known."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()  # async jobs end on several threads; a frame is one write

    def ended(self, job_id: str, entries: list[Entry] | None = None) -> None:
        """``entries``: the attempt's start, last progress and end (None: find them by id)."""
        frame: dict[str, Any] = {"job": job_id}
        if entries is not None:
            frame["entries"] = [
                [event, doc.decode(), data, eid.decode()] for event, doc, data, eid in entries
            ]
        body = json.dumps(frame, separators=(",", ":")).encode()
        with self._lock, contextlib.suppress(BlockingIOError, BrokenPipeError):  # the recorders carry it
            os.write(self.fd, _LENGTH.pack(len(body)) + body)


class EndWriter:
    """The supervisor's side: a thread reading every child's pipe and writing ends to SQL."""

    def __init__(self, client: Redis, name: str) -> None:
        self.client = client
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._added: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake_read, self._wake_write = new_pipe()
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._buffers: dict[int, bytearray] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="end-writer", daemon=True)
        self.written = 0

    def start(self) -> None:
        self._thread.start()

    def add(self, fd: int) -> None:
        """Read a new child's pipe (its read end; closed when the child's write end is)."""
        self._added.put(fd)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"x")

    def stop(self, timeout: float = 5.0) -> None:
        """Write what has arrived, then stop."""
        self._stop.set()
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"x")
        self._thread.join(timeout)

    def _run(self) -> None:
        pending: list[dict[str, Any]] = []
        while True:
            stopping = self._stop.is_set()
            timeout = LINGER if pending else (0 if stopping else 1.0)
            for key, _ in self._selector.select(timeout):
                pending += self._read(key.fd)
            if pending and (stopping or not self._ready()):
                self._write(pending)
                pending = []
            if stopping and not self._ready():
                return

    def _ready(self) -> bool:
        """Whether anything is readable right now (more ends to gather into this batch)."""
        return bool(self._selector.select(0))

    def _read(self, fd: int) -> list[dict[str, Any]]:
        if fd == self._wake_read:
            with contextlib.suppress(BlockingIOError):
                os.read(fd, 4096)
            while not self._added.empty():
                added = self._added.get()
                self._buffers[added] = bytearray()
                self._selector.register(added, selectors.EVENT_READ)
            return []
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:  # the child is gone
            self._selector.unregister(fd)
            os.close(fd)
            self._buffers.pop(fd, None)
            return []
        buffer = self._buffers[fd]
        buffer += chunk
        frames = []
        while len(buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer)
            if len(buffer) < _LENGTH.size + size:
                break
            frames.append(json.loads(buffer[_LENGTH.size : _LENGTH.size + size]))
            del buffer[: _LENGTH.size + size]
        return frames

    def _write(self, frames: list[dict[str, Any]]) -> None:
        # SQL is loaded here, in this thread, at the first end: the children are running by then.
        from jobs.history.recorder import record_end_now, record_ends_now, take_applied
        from jobs.history.store import JournalEntry

        known: list[list[JournalEntry]] = []
        ids: list[bytes] = []
        for frame in frames:
            if "entries" not in frame:
                continue
            entries = []
            for event, doc, data, entry_id in frame["entries"]:
                entries.append(
                    JournalEntry(event=event, doc=json.loads(doc), data=json.loads(data) if data else {})
                )
                ids.append(entry_id.encode())
            known.append(entries)
        started = time.monotonic()
        try:
            if known:
                record_ends_now(self.client, known)
                take_applied(self.client, [e for entries in known for e in entries], ids)
            for frame in frames:
                if "entries" not in frame:
                    record_end_now(self.client, frame["job"])
            self.written += len(frames)
        except Exception:  # SQL or Redis away: the recorders carry these ends when they can
            log.exception("pool %s: could not write %d job ends to SQL yet", self.name, len(frames))
        elapsed = time.monotonic() - started
        if elapsed > 1:
            log.warning("pool %s: writing %d job ends took %.1fs", self.name, len(frames), elapsed)
