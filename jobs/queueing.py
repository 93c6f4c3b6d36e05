"""The one place that talks to RQ: queues, enqueueing and RQ's own view of a job.

Conveyor's job id is the RQ job id; RQ runs one generic entry point
(:data:`RUNNER`) that looks the task up in the registry. Everything is
serialised as JSON: no pickle anywhere.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq import Callback, Queue, Retry, Worker
from rq.serializers import JSONSerializer

from jobs.clock import isoformat
from jobs.models import Job
from jobs.redaction import redact
from jobs.settings import get_settings
from jobs.tasks import TaskSpec

RUNNER = "worker.runner.run_job"
ON_STOPPED = "worker.runner.on_stopped"
SERIALIZER = JSONSerializer

_queues: dict[tuple[int, str], Queue] = {}


def get_queue(name: str, connection: Redis) -> Queue:
    """The RQ queue ``name`` on ``connection`` (cached: RQ asks the server version once per Queue)."""
    key = (id(connection), name)
    queue = _queues.get(key)
    if queue is None or queue.connection is not connection:
        queue = _queues[key] = Queue(
            name,
            connection=connection,
            serializer=SERIALIZER,
            default_timeout=get_settings().job_timeout,
        )
    return queue


def retry_for(spec: TaskSpec) -> Retry | None:
    if spec.retries <= 0:
        return None
    return Retry(max=spec.retries, interval=list(spec.retry_intervals) or 0)


def enqueue(
    job: Job, spec: TaskSpec, payload: dict[str, Any], *, connection: Redis, pipeline: Pipeline
) -> None:
    """Add the RQ job for a Conveyor job to ``pipeline`` (the caller executes it)."""
    settings = get_settings()
    queue = get_queue(job.queue, connection)
    queue.enqueue_call(
        RUNNER,
        kwargs={"task": spec.name, "payload": payload},
        job_id=job.job_id,
        timeout=job.timeout_s or spec.timeout or settings.job_timeout,
        result_ttl=spec.result_ttl if spec.result_ttl is not None else settings.result_ttl,
        failure_ttl=settings.failure_ttl,
        description=f"{spec.name} submitted at {isoformat(job.created_at)}",
        meta={
            "job_id": job.job_id,
            "submitted_at": isoformat(job.created_at),
            "payload": redact(payload),
            "task_name": spec.name,
            "tenant": job.tenant,
            "tags": ["api", "v1", *spec.tags],
        },
        retry=retry_for(spec),
        on_stopped=Callback(ON_STOPPED),
        pipeline=pipeline,
    )


def active_worker_count(connection: Redis) -> int:
    """How many RQ workers are registered (alive: a dead worker's registration expires)."""
    return int(Worker.count(connection=connection))
