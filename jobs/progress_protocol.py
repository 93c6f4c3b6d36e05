"""What a task may ask of the progress object the worker hands it.

Task code annotates its ``progress`` parameter with :class:`ProgressReporter`, so
a task module (which the API imports to validate payloads) depends on this
protocol in `jobs/`, not on the worker's implementation (`worker.progress.Progress`)
and the Redis client, threads and signals that come with it.

    @task(queue="default")
    def resize(payload: ResizePayload, progress: ProgressReporter) -> dict:
        for i, image in enumerate(images, 1):
            progress.update(i, total=len(images), message=f"resized {image}")

An ``async def`` task awaits ``progress.aupdate(...)`` / ``progress.acheckpoint()`` instead.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class ProgressReporter(Protocol):
    """Progress reporting and the safe points where a job obeys cancel and pause."""

    @property
    def job_id(self) -> str:
        """The job this attempt belongs to."""
        ...

    @property
    def attempt(self) -> int:
        """The attempt being run (1 for the first run, + 1 for each retry or restart)."""
        ...

    @property
    def percent(self) -> float | None:
        """The last reported progress, in percent."""
        ...

    def update(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report ``done`` of ``total`` (or ``done`` percent) with a message; cheap, coalesced.

        A pending cancel raises here; a pending pause holds the task here until it is resumed.
        """
        ...

    def checkpoint(self) -> None:
        """A safe point to stop or hold, for loops that report no progress."""
        ...

    async def aupdate(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """`update` for ``async def`` tasks: a pause holds this task, not the worker's event loop."""
        ...

    async def acheckpoint(self) -> None:
        """`checkpoint` for ``async def`` tasks."""
        ...

    def flush(self) -> None:
        """Write any held-back progress now."""
        ...
