"""The one place that talks to RQ: queues, enqueueing, stopping, and RQ's own view of a job.

Conveyor's job id is the RQ job id; RQ runs one generic entry point
(:data:`RUNNER`) that looks the task up in the registry. Everything is
serialised as JSON: no pickle anywhere. Conveyor's record (the live state and
SQL) is the authority on a job's status; RQ's record is how the job gets run,
and the functions here keep it in step after Conveyor decided.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.client import Pipeline
from rq import Callback, Queue, Retry
from rq.command import send_command, send_stop_job_command
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus
from rq.registry import CanceledJobRegistry
from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler
from rq.scripts import release_lock
from rq.serializers import JSONSerializer
from rq.utils import current_timestamp, utcparse
from rq.worker import Worker as RQWorker

from jobs.access.redaction import redact
from jobs.clock import isoformat, utcnow
from jobs.queues.rq_private import enqueue_without_dependency_check, execution_key
from jobs.settings import get_settings
from jobs.tasks import TaskSpec

if TYPE_CHECKING:  # the worker's processes import no SQL library (see worker/main.py)
    from jobs.history.models import Job
    from jobs.history.submit_sql import NewJob

log = logging.getLogger(__name__)

# The one place jobs/ names worker code: RQ stores a job's function as a dotted path and the
# work-horse imports it, so the path must be a string here (jobs/ imports no worker module).
# worker/runner.py defines both functions; tests/test_rq_private.py checks they resolve.
RQ_FUNCTIONS_MODULE = "worker.runner"
RUNNER = f"{RQ_FUNCTIONS_MODULE}.run_job"  # runs one attempt of any task
ON_STOPPED = f"{RQ_FUNCTIONS_MODULE}.on_stopped"  # RQ's callback when a work-horse is stopped
SERIALIZER = JSONSerializer

# RQ statuses under which a job is waiting to run (what a waiting Conveyor job should have).
RQ_WAITING = frozenset({RQStatus.QUEUED, RQStatus.SCHEDULED, RQStatus.DEFERRED})

# A field of the RQ worker hash: Conveyor's worker keeps `last_heartbeat` fresh while a job runs,
# so a stale one means it is dead.
HEARTBEAT_MARKER = "conveyor_heartbeat_interval"
# A field of the RQ worker hash: the last job the worker's claim took (the fast path's claim
# script writes it with the start; nothing clears it). RQ's `current_job` is cleared when any job
# ends, so with async jobs running beside the claim it may no longer name the one just taken.
CLAIMED_FIELD = "conveyor_claimed"

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


def retry_for(spec: TaskSpec, retries_left: int | None = None) -> Retry | None:
    """RQ's Retry for the task's policy (backoff and jitter built into the interval list)."""
    policy = spec.retry_policy
    left = policy.retries if retries_left is None else min(retries_left, policy.retries)
    if left <= 0:
        return None
    return Retry(max=left, interval=policy.schedule(left))


def enqueue(
    job: Job | NewJob,
    spec: TaskSpec,
    payload: dict[str, Any],
    *,
    connection: Redis,
    pipeline: Pipeline,
    run_at: datetime | None = None,
    depends_on: Sequence[str] = (),
    retries_left: int | None = None,
) -> None:
    """Add the RQ job for an attempt of ``job`` to ``pipeline`` (the caller executes it).

    It lands in the queue, in the scheduled registry (``run_at``), or deferred
    behind ``depends_on``. With dependencies RQ first WATCHes the parents, so
    ``pipeline`` must hold no buffered command yet; either way it is in MULTI
    on return, so the caller's own commands join the same transaction.
    """
    queue = get_queue(job.queue, connection)
    rq_job = queue.create_job(
        **_job_options(job, spec, payload, retries_left),
        depends_on=list(depends_on) or None,
        status=RQStatus.SCHEDULED if run_at is not None else RQStatus.QUEUED,
    )
    if run_at is not None:
        if not pipeline.explicit_transaction:
            pipeline.multi()
        # RQ keeps whole seconds, rounded down: round up instead, so a job never runs early.
        whole = run_at.replace(microsecond=0)
        queue.schedule_job(
            rq_job, whole + timedelta(seconds=1) if whole < run_at else whole, pipeline=pipeline
        )
        return
    if not depends_on and not pipeline.explicit_transaction:
        pipeline.multi()
    queue.enqueue_job(rq_job, pipeline=pipeline)
    if not pipeline.explicit_transaction:
        pipeline.multi()


def _job_options(
    job: Job | NewJob, spec: TaskSpec, payload: dict[str, Any], retries_left: int | None
) -> dict[str, Any]:
    """What RQ stores for an attempt of ``job``: the same for one enqueue and for many."""
    settings = get_settings()
    return {
        "func": RUNNER,
        "kwargs": {"task": spec.name, "payload": payload},
        "job_id": job.job_id,
        "timeout": job.timeout_s or spec.timeout or settings.job_timeout,
        "result_ttl": spec.result_ttl if spec.result_ttl is not None else settings.result_ttl,
        "failure_ttl": settings.failure_ttl,
        "description": f"{spec.name} submitted at {isoformat(job.created_at)}",
        "meta": {
            "job_id": job.job_id,
            "submitted_at": isoformat(job.created_at),
            "payload": redact(payload),
            "task_name": spec.name,
            "tenant": job.tenant,
            "tags": ["api", "v1", *(job.tags or spec.tags)],
            "trace_id": job.trace_id,
        },
        "retry": retry_for(spec, retries_left),
        "on_stopped": Callback(ON_STOPPED),
    }


def enqueue_many(
    items: Sequence[tuple[Job, TaskSpec, dict[str, Any]]], *, connection: Redis, pipeline: Pipeline
) -> None:
    """Add many jobs due now, without dependencies, to ``pipeline`` through RQ's ``enqueue_many``
    (one call per queue); the caller executes it, in the same transaction as their live state."""
    by_queue: dict[str, list[Any]] = {}
    for job, spec, payload in items:
        by_queue.setdefault(job.queue, []).append(
            Queue.prepare_data(**_job_options(job, spec, payload, None))
        )
    for name, datas in by_queue.items():
        get_queue(name, connection).enqueue_many(datas, pipeline=pipeline)


def park(job: Job, spec: TaskSpec, payload: dict[str, Any], *, connection: Redis, pipeline: Pipeline) -> None:
    """Keep RQ's record of a job that waits for something RQ cannot see (a whole batch), deferred and
    in no queue or registry; :func:`jobs.queues.requeue.enqueue_again` hands it to its queue when it
    may run."""
    queue = get_queue(job.queue, connection)
    rq_job = queue.create_job(**_job_options(job, spec, payload, None), status=RQStatus.DEFERRED)
    rq_job.origin = queue.name
    rq_job.save(pipeline=pipeline)


def fetch(job_id: str, connection: Redis) -> RQJob | None:
    """RQ's record of a job, or None when RQ has none (expired, or Redis lost it)."""
    try:
        return RQJob.fetch(job_id, connection=connection, serializer=SERIALIZER)
    except NoSuchJobError:
        return None


def stored_payload(job_id: str, connection: Redis) -> dict[str, Any] | None:
    """The payload RQ holds for a job (unredacted, unlike SQL's copy), or None when it is gone."""
    rq_job = fetch(job_id, connection)
    if rq_job is None:
        return None
    try:
        payload = rq_job.kwargs.get("payload")
    except DeserializationError:
        return None
    return payload if isinstance(payload, dict) else None


def retry_in(rq_job: RQJob) -> int | None:
    """Seconds until RQ retries a failed attempt of this job, or None when it will not."""
    return rq_job.get_retry_interval() if rq_job.should_retry else None


def statuses(job_ids: Iterable[str], connection: Redis) -> dict[str, str | None]:
    """RQ's status of each job (None when RQ has no record of it), in one round trip."""
    ids = list(job_ids)
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(RQJob.key_for(job_id), "status")
        raw = pipe.execute()
    return {job_id: (value.decode() if value else None) for job_id, value in zip(ids, raw, strict=True)}


def discard(job_id: str, connection: Redis) -> None:
    """Remove RQ's record of a job (queue, registries, hash) before it is created afresh under its id.

    The set of jobs waiting on this one (its dependents) is kept: they still
    wait for the new attempt.
    """
    rq_job = fetch(job_id, connection)
    if rq_job is None:
        return
    queue = get_queue(rq_job.origin, connection)
    with connection.pipeline() as pipe:
        queue.remove(job_id, pipeline=pipe)
        for registry in (
            queue.scheduled_job_registry,
            queue.deferred_job_registry,
            queue.finished_job_registry,
            queue.failed_job_registry,
            queue.canceled_job_registry,
        ):
            registry.remove(job_id, pipeline=pipe)
        queue.started_job_registry.remove_executions(rq_job, pipeline=pipe)
        pipe.delete(rq_job.key, rq_job.dependencies_key)
        pipe.execute()


def cancel_waiting(job_id: str, connection: Redis) -> None:
    """Take a waiting job out of its queue or registry; RQ marks it canceled.

    RQ keeps canceled jobs forever (its canceled registry is never cleaned), so
    the entry and the job get the failure TTL; :func:`trim_canceled` drops
    expired entries. The job is kept until then so that a restart can reuse its payload.
    """
    rq_job = fetch(job_id, connection)
    if rq_job is None or rq_job.get_status() in (RQStatus.CANCELED, RQStatus.FINISHED, RQStatus.FAILED):
        return
    ttl = get_settings().failure_ttl
    with connection.pipeline() as pipe:
        try:
            rq_job.cancel(pipeline=pipe)
        except InvalidJobOperation:
            return
        CanceledJobRegistry(rq_job.origin, connection, serializer=SERIALIZER).add(
            rq_job, ttl=ttl, pipeline=pipe
        )
        pipe.expire(rq_job.key, ttl)
        pipe.execute()


def trim_canceled(connection: Redis, queue_names: Iterable[str]) -> None:
    """Drop expired entries from RQ's canceled registries (RQ itself never does)."""
    with connection.pipeline(transaction=False) as pipe:
        for name in queue_names:
            pipe.zremrangebyscore(CanceledJobRegistry(name, connection).key, 0, current_timestamp())
        pipe.execute()


def stop_running(job_id: str, connection: Redis, worker_name: str | None) -> bool:
    """Ask the worker running a job to kill its work-horse: RQ's stop-job command.

    The worker then calls the job's `on_stopped` callback. Falls back to the
    worker Conveyor recorded when RQ's own record of the job is gone.
    """
    try:
        send_stop_job_command(connection, job_id, serializer=SERIALIZER)
        return True
    except (NoSuchJobError, InvalidJobOperation):
        if not worker_name:
            return False
        send_command(connection, worker_name, "stop-job", job_id=job_id)
        return True


def release_abandoned(rq_job: RQJob, connection: Redis, *, outcome: str, detail: str = "") -> None:
    """Settle RQ's record of a job whose worker died, after Conveyor recorded ``outcome``.

    ``retry`` hands the job back to RQ's retry (requeued or scheduled, one
    retry fewer); ``requeue`` puts it back at the front of its queue as it
    was; ``finished``, ``failed`` and ``canceled`` end it. Either way it leaves
    the started registry first, so RQ's own abandoned-job cleanup (which would
    retry it) never acts on it again.
    """
    queue = get_queue(rq_job.origin, connection)
    settings = get_settings()
    with connection.pipeline() as pipe:
        pipe.multi()
        queue.started_job_registry.remove_executions(rq_job, pipeline=pipe)
        if outcome == "retry" and rq_job.should_retry:
            rq_job.retry(queue, pipe)
        elif outcome in ("retry", "requeue"):
            pipe.lrem(queue.intermediate_queue.key, 0, rq_job.id)
            enqueue_without_dependency_check(queue, rq_job, pipeline=pipe)
        elif outcome == "finished":
            rq_job.set_status(RQStatus.FINISHED, pipeline=pipe)
            queue.finished_job_registry.add(rq_job, ttl=settings.result_ttl, pipeline=pipe)
        elif outcome == "canceled":
            rq_job.set_status(RQStatus.CANCELED, pipeline=pipe)
            canceled = CanceledJobRegistry(rq_job.origin, connection, serializer=SERIALIZER)
            canceled.add(rq_job, ttl=settings.failure_ttl, pipeline=pipe)
        else:
            rq_job.set_status(RQStatus.FAILED, pipeline=pipe)
            queue.failed_job_registry.add(rq_job, ttl=settings.failure_ttl, exc_string=detail, pipeline=pipe)
        pipe.execute()


def worker_alive(connection: Redis, worker_name: str, job_id: str | None, *, stale_after: float) -> bool:
    """Whether RQ's record shows a live worker (and, with ``job_id``, one still running that job).

    Checked before a job is judged abandoned: RQ's registries alone give false
    positives (rq#2424). A worker with Conveyor's heartbeat marker is dead once
    its `last_heartbeat` is older than ``stale_after``; one without it (RQ's
    `SimpleWorker` sends none while a job runs) only once its key expires.
    """
    if not worker_name:
        return False
    key = RQWorker.redis_worker_namespace_prefix + worker_name
    current, beat, marker, death = connection.hmget(
        key, ["current_job", "last_heartbeat", HEARTBEAT_MARKER, "death"]
    )
    if death is not None or (job_id is not None and (current is None or current.decode() != job_id)):
        return False
    if beat is None:  # no such worker: every RQ worker hash has a last heartbeat
        return False
    if marker is None:
        return True
    return (utcnow() - utcparse(beat.decode())).total_seconds() < stale_after


# --- jobs RQ holds between its queue and a finished run --------------------------------------------


@dataclass(frozen=True)
class InFlight:
    """A job RQ has taken off its queue: ``worker`` is set when it is in the started registry."""

    job_id: str
    queue: str
    worker: str | None


def known_queues(connection: Redis) -> list[str]:
    """Every queue RQ has seen, and every configured one."""
    prefix = Queue.redis_queue_namespace_prefix
    seen = {m.decode().removeprefix(prefix) for m in connection.smembers(Queue.redis_queues_keys)}
    return sorted(seen | set(get_settings().queues))


def in_flight(connection: Redis, queue_names: Iterable[str]) -> Iterator[InFlight]:
    """Jobs a worker dequeued (RQ's intermediate list) or is running (its started registry)."""
    for name in queue_names:
        queue = get_queue(name, connection)
        for job_id in queue.intermediate_queue.get_job_ids():
            yield InFlight(job_id, name, None)
        for job_id, execution_id in queue.started_job_registry.get_job_and_execution_ids(cleanup=False):
            worker = connection.hget(execution_key(job_id, execution_id, connection), "worker_name")
            yield InFlight(job_id, name, worker.decode() if worker else "")


# KEYS[1] intermediate list, KEYS[2] queue; ARGV[1] job id: back to the front of its queue, atomically.
_RETURN = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) > 0 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def return_to_queue(job_id: str, queue_name: str, connection: Redis) -> bool:
    """Put back a job a dead worker took off its queue but never started (RQ waits up to ten minutes)."""
    queue = get_queue(queue_name, connection)
    return bool(connection.eval(_RETURN, 2, queue.intermediate_queue.key, queue.key, job_id))


def drop_from_intermediate(job_id: str, queue_name: str, connection: Redis) -> None:
    connection.lrem(get_queue(queue_name, connection).intermediate_queue.key, 1, job_id)


# --- scheduled jobs when no RQ scheduler is alive ------------------------------------------------

_schedulers: dict[tuple[int, tuple[str, ...]], RQScheduler] = {}


def _scheduler_is_stale(connection: Redis, name: str, stale_after: float) -> bool:
    beat = connection.hget(SCHEDULER_KEY_TEMPLATE % name, "last_heartbeat")
    if beat is None:
        return True
    return (utcnow() - utcparse(beat.decode())).total_seconds() > stale_after


def run_due_scheduled(connection: Redis, queue_names: Sequence[str], *, stale_after: float = 15.0) -> bool:
    """Move due scheduled jobs (delayed submissions, backoff retries) to their queues.

    RQ's scheduler runs in one worker per queue, under a lock. When that worker
    is killed, its lock lives on for about a minute and the other workers take
    it back only at their next maintenance (up to ten minutes), so scheduled
    jobs would stall. This releases a lock whose scheduler stopped
    heartbeating, then runs one burst pass of RQ's own scheduler under the lock
    (skipped while a live scheduler holds it). Returns whether it ran.
    """
    names = tuple(sorted(queue_names))
    for name in names:
        lock_key = RQScheduler.get_locking_key(name)
        holder = connection.get(lock_key)
        if holder is not None and _scheduler_is_stale(connection, holder.decode(), stale_after):
            log.warning(
                "releasing the scheduler lock of queue %s: scheduler %s is gone", name, holder.decode()
            )
            release_lock(connection, lock_key, holder.decode())
    key = (id(connection), names)
    scheduler = _schedulers.get(key)
    if scheduler is None:
        scheduler = _schedulers[key] = RQScheduler(
            list(names),
            connection=connection,
            serializer=SERIALIZER,
            name=f"conveyor-{uuid.uuid4().hex[:12]}",
            logging_level=logging.WARNING,  # a burst pass on every reconciler pass: no lock chatter
        )
    if not scheduler.acquire_locks():
        return False
    try:
        scheduler.enqueue_scheduled_jobs()
    finally:
        scheduler.release_locks()
    return True
