"""`Progress`: what a task calls to report how far it has got.

    def resize(payload: ResizePayload, progress: Progress) -> dict:
        for i, image in enumerate(images, 1):
            ...
            progress.update(i, total=len(images), message=f"resized {image}")

`update` is cheap and coalesced (:class:`CoalescingWriter`): the snapshot is
written at most once per ``progress_interval`` (a background thread, started
on first need, writes the latest value when the task goes quiet), and
journaled for SQL at most once per ``progress_journal_interval``. A tight loop of 100,000 calls therefore
costs a bounded number of Redis writes, and the last value always lands.
Each write also refreshes the job's heartbeat; between writes the worker
process keeps it (see `worker.main.ConveyorWorker`).

`update` and `checkpoint` are where a job obeys its controls: a cancel raises
:class:`JobCanceled`, a pause holds the task (status ``paused``) until it is
resumed or canceled. Both are cheap: the gate hands back any pending request
with every write, and a checkpoint reads it from Redis at most once per
``control_poll_interval``. `checkpoint` also raises :class:`JobInterrupted`
when this attempt is over (the job was ended or retried by someone else), so
a long loop stops doing work nobody will record.

An ``async def`` task awaits `aupdate` and `acheckpoint` instead: the same
cheap calls, except that a pause holds the task in a thread (the child's other
async jobs go on meanwhile) and its time does not count against the task's
timeout. The plain `update` and `checkpoint` work in an async task too, but a
pause would hold the child's whole event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import redis.exceptions
from redis import Redis

from jobs.access.redaction import redact_text
from jobs.clock import utcnow
from jobs.progress_protocol import ProgressReporter
from jobs.settings import get_settings
from jobs.state.attempts import lost_our_start, reannounce_start
from jobs.state.lifecycle import record
from jobs.state.live import HeadField, TransitionResult, decode_head, heartbeat_key, read_head, read_head_in
from jobs.status import RUNNING, WAITING, JobStatus

log = logging.getLogger(__name__)
# What a task's checkpoint reads of its job: is it still this attempt, and is anything asked of it.
_CONTROL_HEAD: tuple[HeadField, ...] = ("status", "attempt", "control")
# Journaled progress writes an attempt keeps for its end's SQL write: journaled once a second,
# older ones have long been applied by a recorder.
JOURNALED_KEPT = 16


class JobInterrupted(BaseException):
    """This attempt is over: stop working. A BaseException, so `except Exception` does not swallow it."""


class JobCanceled(JobInterrupted):
    """The job was canceled; the runner records it. Catch it only to clean up, then re-raise."""

    def __init__(
        self, by: str | None = None, requested_at: str | None = None, *, forced: bool = False
    ) -> None:
        super().__init__(f"canceled by {by or 'a request'}")
        self.by = by
        self.requested_at = requested_at
        self.forced = forced  # stopped by force (an async job's asyncio cancellation), not at a checkpoint


class CoalescingWriter:
    """Hands the latest of many progress values to ``write``, at most once per ``interval``.

    Only the newest value waits; a background thread (started on first need) writes it once
    its window has passed, so the last value always lands. Every ``journal_interval`` a write
    is flagged for the SQL journal. ``write`` runs under the writer's lock, one at a time.
    """

    def __init__(
        self,
        *,
        interval: float,
        journal_interval: float,
        write: Callable[[float | None, str | None, bool], None],
        name: str,
    ) -> None:
        self._interval = interval
        self._journal_interval = journal_interval
        self._write = write
        self._name = name
        self._cond = threading.Condition()
        self._pending: tuple[float | None, str | None] | None = None
        self._last_write = -math.inf
        self._last_journal = -math.inf
        self._closed = False
        self._thread: threading.Thread | None = None
        self.percent: float | None = None  # the last value handed to ``write``
        self.message: str | None = None
        self.writes = 0  # snapshot writes made, for tests and benchmarks

    @property
    def closed(self) -> bool:
        return self._closed

    def offer(self, percent: float, message: str | None) -> bool:
        """The newest value (``message`` None keeps the last one written); written now or later.

        False once closed: the value is dropped."""
        with self._cond:
            if self._closed:
                return False
            self._pending = (percent, message if message is not None else self.message)
            if time.monotonic() - self._last_write >= self._interval:
                self._write_locked()
            elif self._thread is None:
                self._thread = threading.Thread(target=self._flusher, name=self._name, daemon=True)
                self._thread.start()
            else:
                self._cond.notify()
        return True

    def _write_locked(self) -> None:
        """Write the pending value (caller holds the condition's lock)."""
        if self._pending is None:
            return
        percent, message = self._pending
        self._pending = None
        now = time.monotonic()
        journal = now - self._last_journal >= self._journal_interval
        self._last_write = now
        if journal:
            self._last_journal = now
        self.percent, self.message = percent, message
        self.writes += 1
        self._write(percent, message, journal)

    def _flusher(self) -> None:
        """Write a held-back value once its coalescing window has passed."""
        with self._cond:
            while not self._closed:
                if self._pending is None:
                    self._cond.wait()
                    continue
                wait = self._last_write + self._interval - time.monotonic()
                if wait > 0:
                    self._cond.wait(timeout=wait)
                else:
                    self._write_locked()

    def flush(self) -> None:
        """Write any pending value now."""
        with self._cond:
            self._write_locked()

    def close(self) -> None:
        """Write any pending value and stop the background thread."""
        with self._cond:
            if self._closed:
                return
            self._write_locked()
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)


class Progress:
    """Progress reporting for one attempt of one job (created by the runner).

    Tasks see it as `jobs.progress_protocol.ProgressReporter` (checked below for mypy).
    """

    def __init__(self, *, job_id: str, attempt: int, started_at: datetime, client: Redis) -> None:
        settings = get_settings()
        self.job_id = job_id
        self.attempt = attempt
        self._started_at = started_at
        self._client = client
        self._writer = CoalescingWriter(
            interval=settings.progress_interval,
            journal_interval=settings.progress_journal_interval,
            write=self._write,
            name=f"progress-{job_id}",
        )
        self.interrupted_by: JobStatus | None = None  # set when the job left `started` under us
        self._poll = settings.control_poll_interval
        self._heartbeat_ttl = settings.heartbeat_ttl
        self._control: str | None = None  # the pending control request, as last seen
        self._control_seen = time.monotonic()
        self.timeout_scope: asyncio.Timeout | None = None  # an async task's timeout (paused time is left out)
        # The newest journaled writes (document, journal entry id): the worker hands them to SQL
        # with the attempt's end, so SQL never shows the end before the progress that led to it.
        self.journaled: deque[tuple[bytes, bytes]] = deque(maxlen=JOURNALED_KEPT)

    @property
    def percent(self) -> float | None:
        return self._writer.percent

    @property
    def writes(self) -> int:
        """Snapshot writes made, for tests and benchmarks."""
        return self._writer.writes

    def update(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report ``done`` out of ``total`` (or, without ``total``, ``done`` percent), with a message."""
        if self._offer(done, total, message):
            self._obey(self._control_request())

    async def aupdate(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """`update` for an ``async def`` task: a pause holds this task alone, not the event loop."""
        if self._offer(done, total, message):
            await self._aobey(self._control_request())

    def _offer(self, done: float, total: float | None, message: str | None) -> bool:
        if total is not None:
            percent = 100.0 * done / total if total > 0 else 0.0
        else:
            percent = float(done)
        return self._writer.offer(min(100.0, max(0.0, percent)), message)

    def checkpoint(self) -> None:
        """A safe point to stop or hold: raises on cancel, holds while paused, returns at once otherwise.

        Call it in loops that do not report progress. It costs a clock read,
        and a Redis read at most once per ``control_poll_interval``.
        """
        control = self._checked_control()
        if control is not None:
            self._obey(control)

    async def acheckpoint(self) -> None:
        """`checkpoint` for an ``async def`` task (see `aupdate`)."""
        control = self._checked_control()
        if control is not None:
            await self._aobey(control)

    def _checked_control(self) -> str | None:
        """The pending control request at a checkpoint; raises when this attempt is over."""
        if self._writer.closed:
            return None
        if self.interrupted_by is not None:
            raise JobInterrupted(f"job {self.job_id} is now {self.interrupted_by.value}")
        return self._control_request(refresh_status=True)

    async def _aobey(self, control: str | None) -> None:
        """Obey in an async task: a pause waits in a thread, its time left out of the task's timeout."""
        if control != "pause":
            self._obey(control)
            return
        scope, loop = self.timeout_scope, asyncio.get_running_loop()
        when = scope.when() if scope is not None else None
        held_from = loop.time()
        if scope is not None:
            scope.reschedule(None)
        try:
            await asyncio.to_thread(self._hold)
        finally:
            if scope is not None and when is not None:
                scope.reschedule(when + loop.time() - held_from)

    def _control_request(self, *, refresh_status: bool = False) -> str | None:
        """The pending control request, re-read from Redis when the last sight of it is stale."""
        now = time.monotonic()
        if now - self._control_seen < self._poll:
            return self._control
        try:
            head = read_head(self._client, self.job_id, _CONTROL_HEAD)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            log.warning("progress: Redis unreachable; job %s goes on and asks again later", self.job_id)
            self._control_seen = now
            return self._control  # a Redis blip is no reason to stop the task
        self._control_seen = now
        self._control = head.control
        if refresh_status and head.status is not None:
            current, attempt = head.status, head.attempt or 0
            lost = current in WAITING and attempt == self.attempt
            worker = os.environ.get("RQ_WORKER_ID", "")
            if lost and reannounce_start(self.job_id, self.attempt, self._started_at, worker=worker):
                return self._control
            if current not in RUNNING or attempt != self.attempt:
                self.interrupted_by = current
                raise JobInterrupted(f"job {self.job_id} is now {current.value} (attempt {attempt})")
        return self._control

    def _obey(self, control: str | None) -> None:
        if control == "cancel":
            self._raise_canceled()
        if control == "pause":
            self._hold()

    def _raise_canceled(self) -> None:
        self.flush()
        head = read_head(self._client, self.job_id, ("control_by", "control_at"))
        raise JobCanceled(head.control_by, head.control_at)

    def _hold(self) -> None:
        """Hold while paused. RQ's timeout clock stops meanwhile (its alarm is set aside and re-armed)."""
        self.flush()
        paused = record(
            self.job_id,
            JobStatus.PAUSED,
            event="paused",
            from_statuses=(JobStatus.STARTED,),
            patch={"eta_seconds": None},
            expect_attempt=self.attempt,
            client=self._client,
        )
        if not paused.applied:
            return
        remaining = 0.0
        with contextlib.suppress(ValueError, OSError):  # no alarm outside RQ's forking worker
            remaining = signal.setitimer(signal.ITIMER_REAL, 0)[0]
        try:
            while True:
                time.sleep(self._poll)
                with self._client.pipeline(transaction=False) as pipe:
                    read_head_in(pipe, self.job_id, _CONTROL_HEAD)
                    pipe.set(heartbeat_key(self.job_id), self.attempt, ex=self._heartbeat_ttl, xx=True)
                    reply, _ = pipe.execute()
                head = decode_head(_CONTROL_HEAD, reply)
                self._control = head.control
                self._control_seen = time.monotonic()
                if head.status is None:  # Redis lost the live state: the pause went with it
                    self._control = None
                elif head.status != JobStatus.PAUSED or head.attempt != self.attempt:
                    self.interrupted_by = head.status
                    raise JobInterrupted(f"job {self.job_id} is now {self.interrupted_by.value}")
                if self._control == "cancel":
                    self._raise_canceled()
                if self._control != "pause":
                    record(
                        self.job_id,
                        JobStatus.STARTED,
                        event="resumed",
                        from_statuses=(JobStatus.PAUSED,),
                        expect_attempt=self.attempt,
                        client=self._client,
                    )
                    return
        finally:
            if remaining > 0:
                with contextlib.suppress(ValueError, OSError):
                    signal.setitimer(signal.ITIMER_REAL, remaining)

    def _eta(self, percent: float | None) -> float | None:
        if not percent or percent >= 100.0:
            return None
        elapsed = (utcnow() - self._started_at).total_seconds()
        if elapsed < 0.5:
            return None
        return round(elapsed * (100.0 - percent) / percent, 1)

    def _write(self, percent: float | None, message: str | None, journal: bool) -> None:
        """One coalesced write through the gate; notes the control request it hands back."""
        if message:
            message = redact_text(message)
        patch = {"progress": percent, "message": message, "eta_seconds": self._eta(percent)}

        def write() -> TransitionResult:
            return record(
                self.job_id,
                JobStatus.STARTED,
                event="progress",
                from_statuses=(JobStatus.STARTED,),
                patch=patch,
                expect_attempt=self.attempt,
                journal=journal,
                client=self._client,
            )

        try:
            result = write()
            worker = os.environ.get("RQ_WORKER_ID", "")
            if lost_our_start(result) and reannounce_start(
                self.job_id, self.attempt, self._started_at, worker=worker, client=self._client
            ):
                result = write()
        except Exception:  # a progress write must never fail the task
            log.exception("progress: could not write progress of job %s", self.job_id)
            return
        self._control, self._control_seen = result.control, time.monotonic()
        if journal and result.applied and result.doc and result.entry_id:
            self.journaled.append((result.doc, result.entry_id))
        if not result.applied and result.outcome != "noop" and result.current_status != JobStatus.PAUSED:
            self.interrupted_by = result.current_status

    def flush(self) -> None:
        """Write any pending value now."""
        self._writer.flush()

    def close(self) -> None:
        """Write any pending value and stop the background thread."""
        self._writer.close()


if TYPE_CHECKING:

    def _reports_progress(progress: Progress) -> ProgressReporter:
        return progress  # mypy: Progress keeps the protocol tasks are written against
