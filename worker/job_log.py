"""Capturing what a task logs (and, as a setting, prints) into its job's log.

A logging handler on the root logger hands each record to the job whose
context it was emitted in: :data:`current_job_log`, a context variable the
runner sets for the task's call (:func:`capturing`). A context variable rather
than a global or a thread-local, so that tasks running side by side in one
process (threads, or asyncio tasks, each of which runs in a copy of the
context) never see each other's lines.

A line costs an append to a list in memory: a flusher thread
sends every job's new lines every ``CONVEYOR_JOB_LOG_FLUSH_INTERVAL`` seconds in
one Redis pipeline (jobs/state/job_logs.py), and the rest of an attempt's lines go
when its task returns, before its end is recorded. Past the job's cap a line
is dropped here without being formatted; Redis keeps the cap across attempts
and says "log truncated" once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from jobs.access.redaction import redact_text
from jobs.settings import get_settings
from jobs.state.job_logs import append_lines, encode_line

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

CUT = " [cut]"


class JobLog:
    """One attempt's lines not yet sent to Redis."""

    __slots__ = ("attempt", "client", "count", "job_id", "lines", "partial", "size")

    def __init__(self, job_id: str, attempt: int, client: Redis) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.client = client
        self.lines: list[str] = []
        self.count = 0
        self.size = 0
        self.partial: dict[str, str] = {}

    def full(self) -> bool:
        """Past the caps already: Redis would refuse the line, so it is not even formatted."""
        settings = get_settings()
        return self.count >= settings.job_log_max_lines or self.size > settings.job_log_max_bytes

    def add(self, *, level: str, logger: str, message: str, created: float) -> None:
        limit = get_settings().job_log_max_line
        if len(message) > limit:
            message = message[:limit] + CUT
        line = encode_line(
            at=datetime.fromtimestamp(created, UTC),
            level=level,
            logger=logger,
            message=message,
            attempt=self.attempt,
        )
        self.count += 1
        self.size += len(line)
        with _sink.lock:
            self.lines.append(line)


current_job_log: ContextVar[JobLog | None] = ContextVar("conveyor_job_log", default=None)


class Sink:
    """This process's open job logs and the thread that flushes them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sending = threading.Lock()  # one flush at a time: a job's batches land in order
        self.open: dict[int, JobLog] = {}
        self.pid = 0
        self._wake = threading.Event()

    def start(self) -> None:
        """Install the handler (again if logging was reconfigured since) and start the flusher,
        once per process (again after a fork)."""
        root = logging.getLogger()
        if not any(isinstance(h, JobLogHandler) for h in root.handlers):
            root.addHandler(JobLogHandler())
        if self.pid == os.getpid():
            return
        self.pid = os.getpid()
        self.open = {}
        self.lock, self.sending = threading.Lock(), threading.Lock()  # a fork may copy them held
        if get_settings().job_log_capture_print:
            for name in ("stdout", "stderr"):
                stream = getattr(sys, name)
                if not isinstance(stream, PrintCapture):
                    setattr(sys, name, PrintCapture(stream, name))
        threading.Thread(target=self._run, name="job-log-flusher", daemon=True).start()

    def _run(self) -> None:
        interval = get_settings().job_log_flush_interval
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # Redis away for a moment: the lines wait for the next try
                log.warning("job logs: could not write to Redis: %s", exc)

    def flush(self, only: JobLog | None = None) -> None:
        """Send the new lines of every open log (or of ``only``) in one pipeline."""
        with self.sending:
            self._flush(only)

    def _flush(self, only: JobLog | None) -> None:
        with self.lock:
            logs = [only] if only is not None else list(self.open.values())
            taken = [(job_log, job_log.lines) for job_log in logs if job_log.lines]
            for job_log, _ in taken:
                job_log.lines = []
        by_client: dict[int, tuple[Redis, list[tuple[JobLog, list[str]]]]] = {}
        for job_log, lines in taken:  # in practice one client per process
            by_client.setdefault(id(job_log.client), (job_log.client, []))[1].append((job_log, lines))
        failed: Exception | None = None
        for client, group in by_client.values():
            batches: dict[str, list[str]] = {}
            for job_log, lines in group:
                batches.setdefault(job_log.job_id, []).extend(lines)
            try:
                append_lines(client, batches, now=time.time())
            except Exception as exc:
                failed = exc
                with self.lock:  # put them back in front, for the next flush
                    for job_log, lines in group:
                        job_log.lines[:0] = lines
        if failed is not None:
            raise failed


_sink = Sink()


@contextlib.contextmanager
def capturing(job_id: str, attempt: int, client: Redis) -> Iterator[JobLog]:
    """Route what is logged in this context to the job's log; its last lines are sent on exit."""
    _sink.start()
    job_log = JobLog(job_id, attempt, client)
    with _sink.lock:
        _sink.open[id(job_log)] = job_log
    token = current_job_log.set(job_log)
    try:
        yield job_log
    finally:
        current_job_log.reset(token)
        for name, rest in job_log.partial.items():
            if rest:
                _add_print(job_log, name, rest)
        with _sink.lock:
            _sink.open.pop(id(job_log), None)
        try:
            _sink.flush(job_log)
        except Exception as exc:
            log.warning("job logs: could not write job %s's last lines: %s", job_id, exc)


class JobLogHandler(logging.Handler):
    """Hands each record emitted in a job's context to that job's log."""

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: JobLog has its own
        job_log = current_job_log.get()
        if job_log is None or job_log.full():
            return False
        try:
            message = record.getMessage()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                message = f"{message}\n{record.exc_text}"
            if not getattr(logging.getLogRecordFactory(), "conveyor_redacting", False):
                message = redact_text(message)
            job_log.add(level=record.levelname, logger=record.name, message=message, created=record.created)
        except Exception:
            self.handleError(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)


def _add_print(job_log: JobLog, stream: str, text: str) -> None:
    if not job_log.full():
        job_log.add(level="PRINT", logger=stream, message=redact_text(text), created=time.time())


class PrintCapture:
    """``sys.stdout`` / ``sys.stderr`` when prints are captured: a job's whole lines go to its
    log, anything written outside a job to the stream it replaced."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self._stream = stream
        self._name = name

    def write(self, text: str) -> int:
        job_log = current_job_log.get()
        if job_log is None:
            return self._stream.write(text)
        pending = job_log.partial.get(self._name, "") + text
        *lines, rest = pending.split("\n")
        for line in lines:
            _add_print(job_log, self._name, line)
        job_log.partial[self._name] = rest[-get_settings().job_log_max_line :] if rest else ""
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
