"""Pausing, resuming and draining whole queues (`jobs.queues.queue_control`): operators only, since a
queue serves every tenant. Queue stats (`GET /api/v1/queue/stats`) show each queue's state."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path

from api.deps import CurrentPrincipal, RedisDep
from jobs.lazy_model import LazyModel

router = APIRouter(prefix="/api/v1", tags=["queues"])


class QueueStateOut(LazyModel):
    name: str
    paused: bool
    draining: bool


@router.post("/queues/{name}/{action}", response_model=QueueStateOut)
def steer_queue(
    name: Annotated[str, Path(max_length=64)],
    action: Annotated[Literal["pause", "resume", "drain"], Path()],
    principal: CurrentPrincipal,
    redis: RedisDep,
) -> QueueStateOut:
    """`pause`: start no new job from the queue (running ones go on; submits still wait in it).
    `drain`: refuse submits to it (409). `resume`: end both."""
    from jobs.queues.queue_control import drain_queue, pause_queue, resume_queue

    if principal.scope is not None:
        raise HTTPException(
            status_code=403,
            detail="A queue serves every tenant: pausing or draining it needs an operator key.",
        )
    act = {"pause": pause_queue, "resume": resume_queue, "drain": drain_queue}[action]
    state = act(redis, name)
    return QueueStateOut(name=state.name, paused=state.paused, draining=state.draining)
