"""`Progress`: what a task calls to report how far it has got.

    def resize(payload: ResizePayload, progress: Progress) -> dict:
        for i, image in enumerate(images, 1):
            ...
            progress.update(i, total=len(images), message=f"resized {image}")

`update` is cheap and coalesced: the snapshot is written at most once per
``progress_interval`` (a background thread, started on first need, writes the
latest value when the task goes quiet), and journaled for SQL at most once
per ``progress_journal_interval``. A tight loop of 100,000 calls therefore
costs a bounded number of Redis writes, and the last value always lands.
Each write also refreshes the job's heartbeat; between writes the worker
process keeps it (see `worker.main.ConveyorWorker`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import datetime

from redis import Redis

from jobs.clock import utcnow
from jobs.lifecycle import record
from jobs.redaction import redact_text
from jobs.settings import get_settings
from jobs.status import JobStatus

log = logging.getLogger(__name__)


class Progress:
    """Progress reporting for one attempt of one job (created by the runner)."""

    def __init__(self, *, job_id: str, attempt: int, started_at: datetime, client: Redis) -> None:
        settings = get_settings()
        self.job_id = job_id
        self.attempt = attempt
        self._started_at = started_at
        self._client = client
        self._interval = settings.progress_interval
        self._journal_interval = settings.progress_journal_interval

        self._cond = threading.Condition()
        self._pending: tuple[float | None, str | None] | None = None
        self._percent: float | None = None
        self._message: str | None = None
        self._last_write = -math.inf
        self._last_journal = -math.inf
        self._closed = False
        self.writes = 0  # snapshot writes made, for tests and benchmarks
        self.interrupted_by: JobStatus | None = None  # set when the job left `started` under us
        self._thread: threading.Thread | None = None

    @property
    def percent(self) -> float | None:
        return self._percent

    def update(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report ``done`` out of ``total`` (or, without ``total``, ``done`` percent), with a message."""
        if total is not None:
            percent = 100.0 * done / total if total > 0 else 0.0
        else:
            percent = float(done)
        percent = min(100.0, max(0.0, percent))
        with self._cond:
            if self._closed:
                return
            self._pending = (percent, message if message is not None else self._message)
            if time.monotonic() - self._last_write >= self._interval:
                self._write_locked()
            elif self._thread is None:
                self._thread = threading.Thread(
                    target=self._flusher, name=f"progress-{self.job_id}", daemon=True
                )
                self._thread.start()
            else:
                self._cond.notify()

    def _eta(self, percent: float | None) -> float | None:
        if not percent or percent >= 100.0:
            return None
        elapsed = (utcnow() - self._started_at).total_seconds()
        if elapsed < 0.5:
            return None
        return round(elapsed * (100.0 - percent) / percent, 1)

    def _write_locked(self) -> None:
        """Write the pending value (caller holds the condition's lock)."""
        if self._pending is None:
            return
        percent, message = self._pending
        self._pending = None
        if message:
            message = redact_text(message)
        now = time.monotonic()
        journal = now - self._last_journal >= self._journal_interval
        self._last_write = now
        if journal:
            self._last_journal = now
        self._percent, self._message = percent, message
        self.writes += 1
        try:
            result = record(
                self.job_id,
                JobStatus.STARTED,
                event="progress",
                from_statuses=(JobStatus.STARTED,),
                patch={"progress": percent, "message": message, "eta_seconds": self._eta(percent)},
                expect_attempt=self.attempt,
                journal=journal,
                client=self._client,
            )
        except Exception:  # a progress write must never fail the task
            log.exception("progress: could not write progress of job %s", self.job_id)
            return
        if not result.applied and result.outcome != "noop":
            self.interrupted_by = result.current_status

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
