"""What the pages' streams take from the app they are mounted in: feeds of jobs' snapshots.

The API process holds one Redis subscription, fanned out to its streams (api/live_hub.py);
the pages use the same one rather than a second. web/ does not import api/, so the app hands
it in (``mount_web(app, live=...)``), and these protocols say what web/ relies on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request
from starlette.types import Receive, Scope

from jobs.settings import get_settings


class Snapshot(Protocol):
    @property
    def seq(self) -> int: ...

    @property
    def is_terminal(self) -> bool: ...


class SnapshotFeed(Protocol):
    """One client's feed of one job (api.live_feed.JobFeed), holding one of its key's stream slots."""

    job_id: str
    current: Snapshot

    @property
    def gone(self) -> bool: ...

    @property
    def revoked(self) -> bool: ...

    async def next(self, after: int, *, timeout: float | None = None) -> list[Snapshot]: ...

    def watch_disconnect(self, receive: Receive) -> asyncio.Future[None]: ...

    def close(self) -> None: ...


OpenFeed = Callable[[str, str | None, str], Awaitable[SnapshotFeed]]
"""(job id, tenant scope, key id) -> a feed; JobNotFound, or StreamLimitReached over a cap."""


@dataclass(frozen=True)
class LiveSource:
    open_feed: OpenFeed
    streams_served: Callable[[Scope], bool]  # False under AWS Lambda: no response streams there
    hold_stream: Callable[[str], Callable[[], None]]
    """A stream slot for a key that no feed holds (StreamLimitReached over a cap); returns its release."""


def live_source(request: Request) -> LiveSource | None:
    return getattr(request.app.state, "conveyor_live", None)


def pushes(request: Request) -> bool:
    """Whether this page gets its updates pushed (one SSE stream) rather than polling for them."""
    live = live_source(request)
    return live is not None and get_settings().web_push and live.streams_served(request.scope)
