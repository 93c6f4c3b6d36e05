"""Caps on the streams one API process holds: SSE, long polls and WebSockets alike.

Each open stream holds a socket, a file descriptor and a listener until it ends, so without a
cap one client (985 streams from one key, in the issue that asked for this) exhausts the
process's files and every other client's connections are reset. A stream takes a slot before
it opens its feed and gives it back when the feed closes, which every way a stream ends goes
through (the job ended, the client left, an error, a revoked key); a refusal is a 429 with
Retry-After, or close code 4429 on a WebSocket, and names the cap that was reached.

The counts are this process's: with several API processes (uvicorn workers, containers) a key
may hold ``CONVEYOR_MAX_STREAMS_PER_KEY`` in each. That bounds what matters here, the files
and memory of each process; a global per-key count would need Redis on every stream's start
and end.
"""

from __future__ import annotations

import threading

from jobs.errors import ConveyorError
from jobs.process_limits import open_file_limit
from jobs.settings import get_settings

WS_TOO_MANY = 4429
"""The WebSocket close code of a refusal: 4000 + the HTTP status it stands for, like 4401/4404."""


class StreamLimitReached(ConveyorError):
    """A stream refused because a cap is reached; ``cap`` is ``"key"`` or ``"process"``."""

    status_code = 429

    def __init__(self, message: str, *, cap: str, retry_after: int) -> None:
        super().__init__(message, cap=cap)
        self.cap = cap
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class KeyRevoked(ConveyorError):
    """The key an open long poll was made with was revoked while it waited."""

    status_code = 401

    def __init__(self) -> None:
        super().__init__(REVOKED)
        self.headers = {"WWW-Authenticate": "Bearer"}


REVOKED = "The API key was revoked while this stream was open."


def process_cap() -> int:
    """``CONVEYOR_MAX_STREAMS_PER_PROCESS``, bounded by half the open-file limit: the other half
    is for ordinary requests, Redis and database connections, and the listening socket."""
    return max(1, min(get_settings().max_streams_per_process, open_file_limit() // 2))


class StreamSlot:
    """One stream's place under the caps; :meth:`release` is idempotent."""

    __slots__ = ("key_id", "released", "slots")

    def __init__(self, slots: StreamSlots, key_id: str) -> None:
        self.slots = slots
        self.key_id = key_id
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.slots._release(self.key_id)


class StreamSlots:
    """The process's open streams, counted per key and in all.

    A lock, not the event loop, guards the counts: a process serves from one loop, but tests
    (and a Lambda's runtime) may drive the app from several threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._per_key: dict[str, int] = {}
        self.total = 0
        self.refused = {"key": 0, "process": 0}

    def held_by(self, key_id: str) -> int:
        return self._per_key.get(key_id, 0)

    def acquire(self, key_id: str) -> StreamSlot:
        """A slot for one stream of ``key_id``, or StreamLimitReached."""
        settings = get_settings()
        per_key, per_process = settings.max_streams_per_key, process_cap()
        retry = settings.stream_retry_after
        with self._lock:
            held = self._per_key.get(key_id, 0)
            if held >= per_key:
                self.refused["key"] += 1
                raise StreamLimitReached(
                    f"Too many open streams for this API key: it holds {held} SSE streams, long "
                    f"polls and WebSockets on this server, the most one key may "
                    f"(CONVEYOR_MAX_STREAMS_PER_KEY={per_key}). Close one, or retry in {retry} s.",
                    cap="key",
                    retry_after=retry,
                )
            if self.total >= per_process:
                self.refused["process"] += 1
                raise StreamLimitReached(
                    f"This server holds {self.total} open streams, long polls and WebSockets, its "
                    f"limit (CONVEYOR_MAX_STREAMS_PER_PROCESS, at most half the open-file limit: "
                    f"{per_process}). Retry in {retry} s.",
                    cap="process",
                    retry_after=retry,
                )
            self._per_key[key_id] = held + 1
            self.total += 1
        return StreamSlot(self, key_id)

    def _release(self, key_id: str) -> None:
        with self._lock:
            left = self._per_key.get(key_id, 0) - 1
            if left > 0:
                self._per_key[key_id] = left
            else:
                self._per_key.pop(key_id, None)
            self.total = max(0, self.total - 1)


stream_slots = StreamSlots()
"""The process's one registry (the caps are per process)."""
