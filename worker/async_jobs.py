"""The event loop a worker child runs its ``async def`` jobs on, side by side.

The child's main thread keeps taking jobs (worker/child.py); an async one is
handed to this loop, in a thread of its own started with the first async job,
and the main thread goes back for the next while fewer than ``limit`` run. Each
job holds one of the child's slots (worker/slots.py) for as long as it runs, so
the supervisor keeps its heartbeat and deadline and can ask for it to be
cancelled: a watcher on the loop reads the slots' stop words a few times a
second and cancels just that job's asyncio task. A job that ignores its
cancellation is the supervisor's to end, by killing the child.

The blocking end of a job (RQ's and Conveyor's records, one script) runs in a
small thread pool, so the loop never waits on it; redis-py's client is safe to
share between threads (each command takes a connection from its pool).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from worker.slots import Slots

log = logging.getLogger(__name__)

WATCH_EVERY = 0.2  # seconds between the watcher's looks at the stop words
END_THREADS = 2  # threads recording jobs' ends (Redis runs one command at a time anyway)

T = TypeVar("T")


class AsyncJobs:
    """Up to ``limit`` async jobs at once, each in one of ``entries`` (this child's slots)."""

    def __init__(self, slots: Slots, entries: range, limit: int) -> None:
        self.slots = slots
        self.limit = min(limit, len(entries))
        self._free = list(reversed(entries))
        self._running: dict[int, asyncio.Task[Any]] = {}  # the cancellable part, by slot (loop only)
        self._count = 0  # jobs handed over and not yet ended (read by the main thread)
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._ends = ThreadPoolExecutor(max_workers=END_THREADS, thread_name_prefix="job-end")
        self._thread = threading.Thread(target=self._serve, name="async-jobs", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.create_task(self._watch())
        try:
            self._loop.run_forever()
        except BaseException:  # SystemExit from a task (after its end was recorded), as a sync one's
            log.exception("the async jobs' event loop stopped: this child ends")
        # The pool settles the jobs still in this child's slots, as a dead child's.
        os._exit(1)

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._count

    def wait_for_room(self) -> None:
        """Block until fewer than ``limit`` jobs run (the main thread, before it takes another)."""
        with self._cond:
            self._cond.wait_for(lambda: self._count < self.limit)

    def drain(self) -> None:
        """Block until every job handed over has ended."""
        with self._cond:
            self._cond.wait_for(lambda: self._count == 0)

    def start(self, job: Callable[[int], Coroutine[Any, Any, None]], begin: Callable[[int], None]) -> int:
        """Run ``job(slot)`` on the loop in a free slot (there is one: see `wait_for_room`);
        ``begin(slot)`` fills the slot first, on the calling thread, so that from its claim to its
        end the job is in a slot the supervisor reads (a child killed before the loop got to it
        would otherwise leave its start unsettled). Returns the slot."""
        with self._cond:
            slot = self._free.pop()
            self._count += 1
        begin(slot)
        self._loop.call_soon_threadsafe(self._launch, job, slot)
        return slot

    def _launch(self, job: Callable[[int], Coroutine[Any, Any, None]], slot: int) -> None:
        task = self._loop.create_task(job(slot), context=contextvars.Context())
        task.add_done_callback(lambda done: self._ended(slot, done))

    async def cancellable(self, slot: int, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` (the task itself, not the recording of its end) as what a stop cancels."""
        task = asyncio.ensure_future(work)
        self._running[slot] = task
        try:
            return await task
        finally:
            del self._running[slot]

    def _ended(self, slot: int, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("async job in slot %d ended in the child's own code", slot, exc_info=task.exception())
        with self._cond:
            self._free.append(slot)
            self._count -= 1
            self._cond.notify_all()

    async def off_loop(self, call: Callable[[], T]) -> T:
        """Run a blocking call (a job's end) in the end threads, in this task's context."""
        context = contextvars.copy_context()
        return await self._loop.run_in_executor(self._ends, context.run, call)

    async def _watch(self) -> None:
        """Cancel each job the supervisor asked to stop (once; it owns what happens next)."""
        asked: dict[int, asyncio.Task[Any]] = {}
        while True:
            await asyncio.sleep(WATCH_EVERY)
            asked = {slot: task for slot, task in asked.items() if self._running.get(slot) is task}
            for slot, task in list(self._running.items()):
                if asked.get(slot) is not task and self.slots.stop_asked(slot):
                    asked[slot] = task
                    log.warning("stopping the async job in slot %d by asyncio cancellation", slot)
                    task.cancel()
