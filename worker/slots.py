"""What each child of a worker pool is doing, in memory the supervisor and its children share.

A child writes its slot when it takes a job and when the job ends; the
supervisor reads every slot on each tick (heartbeats, hard deadlines) and when
it must stop one job by force. No Redis round trip, no pipe message per job:
an anonymous shared mapping created before the children are forked.

A slot is written by one process (its child) and read by another, without a
lock: a reader compares the ``generation`` before and after its read and
retries on a change, so it never acts on half of one job and half of the next.
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass

_LAYOUT = struct.Struct("<Q128sqdd")  # generation, job id, attempt, started (monotonic), deadline
MAX_JOB_ID = 128


@dataclass(frozen=True)
class SlotView:
    """One consistent reading of a slot: the job its child runs now (``job_id`` None when idle)."""

    generation: int
    job_id: str | None
    attempt: int
    started: float
    deadline: float  # monotonic time after which the supervisor stops the job by force (0: never)


class Slots:
    """``count`` slots in one shared anonymous mapping (create it before forking the children)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._map = mmap.mmap(-1, _LAYOUT.size * count)

    def _offset(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return index * _LAYOUT.size

    def _write(self, index: int, job_id: str | None, attempt: int, started: float, deadline: float) -> None:
        offset = self._offset(index)
        generation = _LAYOUT.unpack_from(self._map, offset)[0] + 1
        raw = (job_id or "").encode()[:MAX_JOB_ID]
        _LAYOUT.pack_into(self._map, offset, generation, raw, attempt, started, deadline)

    def begin(self, index: int, job_id: str, *, timeout: float | None) -> None:
        """The child took ``job_id``; without a ``timeout`` the job has no hard deadline."""
        now = time.monotonic()
        self._write(index, job_id, 0, now, now + timeout if timeout else 0.0)

    def started(self, index: int, attempt: int) -> None:
        """The attempt number, once the gate has recorded the start."""
        view = self.read(index)
        if view.job_id is not None:
            self._write(index, view.job_id, attempt, view.started, view.deadline)

    def extend(self, index: int, seconds: float) -> None:
        """Move the hard deadline later (time spent paused does not count against a timeout)."""
        view = self.read(index)
        if view.job_id is not None and view.deadline:
            self._write(index, view.job_id, view.attempt, view.started, view.deadline + seconds)

    def end(self, index: int) -> None:
        self._write(index, None, 0, 0.0, 0.0)

    def read(self, index: int) -> SlotView:
        offset = self._offset(index)
        while True:
            first = _LAYOUT.unpack_from(self._map, offset)
            again = _LAYOUT.unpack_from(self._map, offset)
            if first == again:
                break
        generation, raw, attempt, started, deadline = first
        job_id = raw.rstrip(b"\0").decode() or None
        return SlotView(generation, job_id, attempt, started, deadline)

    def close(self) -> None:
        self._map.close()
