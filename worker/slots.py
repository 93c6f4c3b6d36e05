"""What each child of a worker pool is doing, in memory the supervisor and its children share.

A child has several slots: one job at a time for sync tasks, and up to
``async_concurrency`` async jobs running side by side on its event loop, each
in a slot of its own. A child writes a slot when it takes a job and when the
job ends; the supervisor reads every slot on each tick (heartbeats, hard
deadlines) and when it must stop one job by force. No Redis round trip, no pipe
message per job: an anonymous shared mapping created before the children are forked.

A slot is written by one process (its child) and read by another, without a
lock: a reader compares the ``generation`` before and after its read and
retries on a change, so it never acts on half of one job and half of the next.
The supervisor asks a child to cancel one async job by writing that job's
generation into the slot's stop word (a second region, which only the
supervisor writes); the child's event loop looks at it every few tenths of a second.
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass

# generation, job id, attempt, started (monotonic), deadline, concurrent (an async job)
_LAYOUT = struct.Struct("<Q128sqdd?")
_STOP = struct.Struct("<Q")  # the generation of the job the supervisor wants cancelled
MAX_JOB_ID = 128


@dataclass(frozen=True)
class SlotView:
    """One consistent reading of a slot: the job it holds now (``job_id`` None when idle)."""

    generation: int
    job_id: str | None
    attempt: int
    started: float
    deadline: float  # monotonic time after which the supervisor stops the job by force (0: never)
    concurrent: bool = False  # an async job, cancellable on its own without killing its child


class Slots:
    """``per_child`` slots for each of ``children`` children, in one shared anonymous mapping
    (create it before forking the children). A slot's index is global; `of` gives a child's."""

    def __init__(self, children: int, per_child: int = 1) -> None:
        self.count = children * per_child
        self.per_child = per_child
        self._stops = _LAYOUT.size * self.count
        self._map = mmap.mmap(-1, self._stops + _STOP.size * self.count)

    def of(self, child: int) -> range:
        """The slots of child ``child``; the first one is where it runs sync jobs."""
        return range(child * self.per_child, (child + 1) * self.per_child)

    def _offset(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return index * _LAYOUT.size

    def _write(
        self, index: int, job_id: str | None, attempt: int, started: float, deadline: float, concurrent: bool
    ) -> None:
        offset = self._offset(index)
        generation = _LAYOUT.unpack_from(self._map, offset)[0] + 1
        raw = (job_id or "").encode()[:MAX_JOB_ID]
        _LAYOUT.pack_into(self._map, offset, generation, raw, attempt, started, deadline, concurrent)

    def begin(self, index: int, job_id: str, *, timeout: float | None, concurrent: bool = False) -> None:
        """The child took ``job_id``; without a ``timeout`` the job has no hard deadline."""
        now = time.monotonic()
        self._write(index, job_id, 0, now, now + timeout if timeout else 0.0, concurrent)

    def started(self, index: int, attempt: int) -> None:
        """The attempt number, once the gate has recorded the start."""
        view = self.read(index)
        if view.job_id is not None:
            self._write(index, view.job_id, attempt, view.started, view.deadline, view.concurrent)

    def extend(self, index: int, seconds: float) -> None:
        """Move the hard deadline later (time spent paused does not count against a timeout)."""
        view = self.read(index)
        if view.job_id is not None and view.deadline:
            self._write(
                index, view.job_id, view.attempt, view.started, view.deadline + seconds, view.concurrent
            )

    def end(self, index: int) -> None:
        self._write(index, None, 0, 0.0, 0.0, False)

    def read(self, index: int) -> SlotView:
        offset = self._offset(index)
        while True:
            first = _LAYOUT.unpack_from(self._map, offset)
            again = _LAYOUT.unpack_from(self._map, offset)
            if first == again:
                break
        generation, raw, attempt, started, deadline, concurrent = first
        job_id = raw.rstrip(b"\0").decode() or None
        return SlotView(generation, job_id, attempt, started, deadline, concurrent)

    def ask_stop(self, index: int, generation: int) -> None:
        """The supervisor's side: cancel the job the slot holds while it is at ``generation``."""
        self._offset(index)
        _STOP.pack_into(self._map, self._stops + index * _STOP.size, generation)

    def stop_asked(self, index: int) -> bool:
        """The child's side: was the job this slot holds now asked to stop?"""
        self._offset(index)
        wanted: int = _STOP.unpack_from(self._map, self._stops + index * _STOP.size)[0]
        return wanted != 0 and wanted == self.read(index).generation

    def close(self) -> None:
        self._map.close()
