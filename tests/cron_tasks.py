"""A recurring task for the cron test; only the workers started by that test load this module."""

from __future__ import annotations

from pydantic import BaseModel

from jobs.queues.schedules import cron
from jobs.tasks import task


class TickPayload(BaseModel):
    tag: str = "tick"


@cron(interval=1, payload={"tag": "every-second"})
@task(queue="cron", timeout=30)
def tick(payload: TickPayload) -> dict[str, str]:
    """Fires every second."""
    return {"tag": payload.tag}
