"""Tasks the benchmarks run: a no-op for Conveyor, and the same no-op as a bare RQ function."""

from __future__ import annotations

from pydantic import BaseModel

from jobs.tasks import task


class NoPayload(BaseModel):
    pass


@task(queue="bench")
def noop(payload: NoPayload) -> None:
    """Do nothing: the benchmark measures everything around the task."""
    return None


def bare_noop() -> None:
    return None
