"""Pausing, resuming and draining whole queues (issue 15).

Paused: no worker starts a new job from the queue (the claim script skips queues in
:data:`PAUSED`, and a job a blocking wait already took goes back to the queue's head); jobs
already running go on, and submits are still accepted, to wait. Draining: submits to the
queue are refused (409) while what is queued still runs, for taking a queue out of service.
Resume ends both. The state is two Redis sets, read by every worker and API process, so it
holds for every tenant at once: only operators may change it.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.exceptions
from redis import Redis

from jobs.errors import ConveyorError, InvalidRequest
from jobs.settings import get_settings

PAUSED = "cv:queues:paused"  # read by the claim script (jobs/queues/rq_engine.py) and worker/child.py
DRAINING = "cv:queues:draining"


class QueueDraining(ConveyorError):
    status_code = 409


@dataclass(frozen=True)
class QueueState:
    name: str
    paused: bool
    draining: bool


def _known(name: str) -> str:
    queues = get_settings().queues
    if name not in queues:
        raise InvalidRequest(f"Unknown queue {name!r}. Known queues: {', '.join(queues)}.")
    return name


def pause_queue(client: Redis, name: str) -> QueueState:
    client.sadd(PAUSED, _known(name))
    return queue_state(client, name)


def drain_queue(client: Redis, name: str) -> QueueState:
    client.sadd(DRAINING, _known(name))
    return queue_state(client, name)


def resume_queue(client: Redis, name: str) -> QueueState:
    """Start taking jobs from the queue again, and accepting submits to it."""
    with client.pipeline(transaction=True) as pipe:
        pipe.srem(PAUSED, _known(name))
        pipe.srem(DRAINING, name)
        pipe.execute()
    return queue_state(client, name)


def queue_state(client: Redis, name: str) -> QueueState:
    with client.pipeline(transaction=False) as pipe:
        pipe.sismember(PAUSED, name)
        pipe.sismember(DRAINING, name)
        paused, draining = pipe.execute()
    return QueueState(name, bool(paused), bool(draining))


def queue_states(client: Redis) -> tuple[set[str], set[str]]:
    """(paused, draining) queue names."""
    with client.pipeline(transaction=False) as pipe:
        pipe.smembers(PAUSED)
        pipe.smembers(DRAINING)
        paused, draining = pipe.execute()
    return {n.decode() for n in paused}, {n.decode() for n in draining}


def refuse_if_draining(client: Redis, name: str) -> None:
    """Raise `QueueDraining` for a submit to a draining queue. Redis unreachable: let the submit
    go on, to fail where a submit without Redis fails (recorded as EnqueueFailed)."""
    try:
        draining = client.sismember(DRAINING, name)
    except redis.exceptions.RedisError:
        return
    if draining:
        raise QueueDraining(
            f"Queue {name!r} is draining: it accepts no new jobs until an operator resumes it "
            f"(POST /api/v1/queues/{name}/resume). Submit to another queue, or later.",
            queue=name,
        )
