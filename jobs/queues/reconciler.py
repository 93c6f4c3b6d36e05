"""The reconciler: closes the gaps between Conveyor's record, RQ and the workers.

One pass:

1. Running jobs (the gate keeps their ids in ``cv:running``; a sweep adds the
   ones SQL believes are running). A job whose heartbeat key expired is
   abandoned unless RQ's own record shows a live worker still on it (rq#2424:
   RQ's registries alone report false positives). An abandoned job is retried
   by its policy or failed as ``WorkerLost`` (canceled, if a cancel was
   pending). A cancel still unobeyed after its grace period is enforced with
   RQ's stop-job command.
2. Deferred jobs whose parent ended failed or canceled can never run: they
   fail as ``DependencyFailed``.
3. A sweep (`jobs.queues.requeue.requeue_lost`) of waiting jobs SQL has and RQ lost (Redis restarted without
   persistence, a failover that lost the last writes, or a crash between the
   SQL write and the enqueue): their live state is seeded from SQL and they
   are enqueued again. A full sweep runs when Redis has lost the ``cv:epoch``
   marker, every ``reconcile_sweep_interval``, and on every one-shot run; a
   sweep of the jobs touched within ``reconcile_recent_window`` runs every
   ``reconcile_recent_interval`` (a failover keeps the marker but loses the
   newest writes). After a loss nothing is swept for a heartbeat TTL (running
   jobs re-announce themselves by their heartbeats first), then one full sweep
   and a recent sweep on every pass while ``cv:recovering`` lasts (jobs
   submitted just before the loss were too fresh for the first one).
4. Jobs RQ holds in flight for a worker that died before our record moved:
   taken off the queue but never started (RQ's intermediate list), or marked
   started by RQ while our record still says waiting, go back to their queue;
   RQ's leftover records of jobs that ended are settled to match.
5. Due scheduled jobs are moved to their queues when no RQ scheduler is alive.

Every change goes through the gate with the statuses and attempt it expects,
so the reconciler never moves a job backwards, and several reconcilers (one
per worker, plus a scheduled Lambda) are safe together. A short Redis lock
keeps them from repeating each other's work within a pass.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from redis import Redis
from rq.job import JobStatus as RQStatus

from jobs.actions.batch_deps import release_batch_waiters
from jobs.clock import isoformat, utcnow
from jobs.history.db import SessionFactory
from jobs.history.store import deferred_jobs, get_job, running_job_ids, statuses_of
from jobs.queues.queueing import (
    cancel_waiting,
    drop_from_intermediate,
    fetch,
    in_flight,
    known_queues,
    release_abandoned,
    retry_in,
    return_to_queue,
    run_due_scheduled,
    stop_running,
    trim_canceled,
    worker_alive,
)
from jobs.queues.requeue import (
    dependency_ids,
    enqueue_again,
    parents_of,
    payload_for,
    requeue_lost,
    retries_left,
)
from jobs.settings import get_settings
from jobs.state.attempts import WORKER_LOST, AttemptEnd, end_failed_attempt
from jobs.state.lifecycle import annotate, record, reseed_from_sql, write_through_or_log
from jobs.state.live import (
    RUNNING_SET,
    HeadField,
    TransitionResult,
    decode_head,
    heartbeat_key,
    read_head,
    read_head_in,
    read_heads,
)
from jobs.status import RUNNING, WAITING, JobStatus
from jobs.tasks import get_task, load_tasks

log = logging.getLogger(__name__)

LOCK_KEY = "cv:reconciler:lock"
EPOCH_KEY = "cv:epoch"  # gone after Redis lost its data: the next pass sweeps SQL
RECOVERING_KEY = "cv:recovering"  # set when a loss is seen: each pass sweeps recent jobs until it expires
DEQUEUED_AT = "cv:dequeued:"  # when the reconciler first saw a job in RQ's intermediate list
PAGE = 500
# What the running-jobs check reads of each job, beside its heartbeat, in one pipeline.
_RUNNING_HEAD: tuple[HeadField, ...] = ("status", "attempt", "worker", "control", "control_deadline")


@dataclass
class PassReport:
    """What one pass did."""

    ran: bool = True
    swept: bool = False
    retried: int = 0
    failed: int = 0
    canceled: int = 0
    recovered: int = 0  # finished per RQ, though the work-horse's last write never landed
    stops_sent: int = 0
    dependency_failed: int = 0
    requeued: int = 0
    returned: int = 0  # taken off a queue by a worker that died before starting it
    settled: int = 0  # RQ leftovers of ended jobs, brought in line
    reseeded: int = 0
    unrecoverable: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reconciler:
    """Reconciler passes over one Redis client; each unit of SQL work opens a session from ``sessions``."""

    def __init__(
        self, client: Redis, *, sessions: SessionFactory, name: str | None = None, use_lock: bool = True
    ) -> None:
        self.client = client
        self.sessions = sessions
        self.name = name or f"reconciler-{uuid.uuid4().hex[:8]}"
        self.use_lock = use_lock
        self._last_sweep = -float("inf")
        self._last_recent_sweep = -float("inf")

    # --- the pass ---------------------------------------------------------------------------------

    def run_pass(self, *, sweep: bool | None = None) -> PassReport:
        """One pass; ``sweep`` forces (True) or skips (False) the SQL sweep, else it runs when due."""
        started = time.monotonic()
        token = f"{self.name}:{uuid.uuid4().hex[:8]}"
        settings = get_settings()
        # Short, so that a reconciler killed mid-pass delays the others by seconds only. A pass
        # that outlives it may overlap the next one: harmless (the lock only saves repeated work).
        lock_ttl = max(5, int(2 * settings.reconcile_interval))
        if self.use_lock and not self.client.set(LOCK_KEY, token, nx=True, ex=lock_ttl):
            return PassReport(ran=False)
        try:
            sweep, recent = self._sweeps_due(sweep, started)
            report = PassReport(swept=sweep)
            candidates = {m.decode() for m in self.client.smembers(RUNNING_SET)}
            if sweep:
                with self.sessions() as session:
                    sql_running = set(running_job_ids(session))
                candidates |= sql_running
            self._check_running(sorted(candidates), report)
            self._fail_orphans(report)
            release_batch_waiters(self.client, self.sessions)
            queues = known_queues(self.client)
            self._reconcile_in_flight(queues, report)
            if sweep or recent:
                window = None if sweep else utcnow() - timedelta(seconds=settings.reconcile_recent_window)
                lost = requeue_lost(self.client, sessions=self.sessions, by=self.name, touched_after=window)
                report.requeued, report.reseeded, report.unrecoverable = (
                    lost.requeued,
                    report.reseeded + lost.reseeded,
                    lost.unrecoverable,
                )
                self._last_recent_sweep = started
            if sweep:
                self._last_sweep = started
            run_due_scheduled(self.client, queues)
            trim_canceled(self.client, queues)
            report.seconds = round(time.monotonic() - started, 3)
            return report
        finally:
            if self.use_lock and self.client.get(LOCK_KEY) == token.encode():
                self.client.delete(LOCK_KEY)

    def _sweeps_due(self, forced: bool | None, now: float) -> tuple[bool, bool]:
        """(full, recent): the sweeps of waiting jobs this pass runs.

        After Redis lost its data, workers still running jobs put their heartbeat keys back
        within a heartbeat interval; until a heartbeat TTL has passed nothing is swept, since a
        running job SQL still calls queued would otherwise be enqueued and run a second time.
        Then one full sweep, and a recent sweep on every pass while ``cv:recovering`` lasts.
        """
        settings = get_settings()
        if forced is False:
            return False, False
        with self.client.pipeline(transaction=False) as pipe:
            pipe.exists(EPOCH_KEY)
            pipe.get(RECOVERING_KEY)
            marked, since = pipe.execute()
        if not marked:
            lasts = int(settings.heartbeat_ttl + settings.reconcile_grace + 30)
            self.client.set(RECOVERING_KEY, time.time(), nx=True, ex=lasts)
            self.client.set(EPOCH_KEY, isoformat(utcnow()) or "")
            since = self.client.get(RECOVERING_KEY) or time.time()
            log.warning("reconciler: Redis lost its data; sweeping SQL once running jobs re-announce")
        if since is not None:
            wait = float(since) + settings.heartbeat_ttl - time.time()
            if wait > 0 and not forced:
                return False, False
            if wait > 0:  # a one-shot run: wait the rest out rather than skip its sweep
                time.sleep(wait)
            full = bool(forced) or bool(self.client.set(RECOVERING_KEY + ":full", self.name, nx=True, ex=300))
            return full, not full
        if forced:
            return True, False
        full = now - self._last_sweep >= settings.reconcile_sweep_interval
        return full, not full and now - self._last_recent_sweep >= settings.reconcile_recent_interval

    # --- 1. running jobs ------------------------------------------------------------------------

    def _check_running(self, job_ids: list[str], report: PassReport) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                read_head_in(pipe, job_id, _RUNNING_HEAD)
                pipe.exists(heartbeat_key(job_id))
            replies = pipe.execute()
        now = time.time()
        for i, job_id in enumerate(job_ids):
            head, beating = decode_head(_RUNNING_HEAD, replies[2 * i]), replies[2 * i + 1]
            if head.status is None and reseed_from_sql(job_id, self.client) is not None:
                report.reseeded += 1  # Redis lost it while it ran: judge it by its heartbeat like any other
                head = read_head(self.client, job_id, ("status", "attempt", "worker"))
            if head.status not in RUNNING:
                self.client.srem(RUNNING_SET, job_id)
                continue
            worker_name = head.worker or ""
            if beating:
                deadline = head.control_deadline
                overdue = head.control == "cancel" and deadline and now > deadline
                if overdue and stop_running(job_id, self.client, worker_name):
                    report.stops_sent += 1
                continue
            if self._worker_alive(worker_name, job_id):
                self.client.set(heartbeat_key(job_id), head.attempt or 0, ex=get_settings().heartbeat_ttl)
                continue
            self._take_over(job_id, head.attempt or 0, worker_name, report)

    def _worker_alive(self, worker_name: str, job_id: str | None) -> bool:
        return worker_alive(self.client, worker_name, job_id, stale_after=get_settings().heartbeat_ttl)

    def _take_over(self, job_id: str, attempt: int, worker_name: str, report: PassReport) -> None:
        """End the attempt of a job whose worker is gone: recovered, canceled, retried or failed."""
        rq_job = fetch(job_id, self.client)
        if rq_job is not None and rq_job.get_status(refresh=False) == RQStatus.FINISHED:
            self._recover_finished(job_id, attempt, rq_job, report)
            return
        error = {
            "type": WORKER_LOST,
            "detail": f"The worker running this job ({worker_name or 'unknown'}) stopped heartbeating: "
            "it was killed or lost its connection. Detected by the reconciler.",
        }
        data = {"worker": worker_name, "detected_by": self.name}
        ended: AttemptEnd | None
        if rq_job is not None:
            ended = end_failed_attempt(
                job_id, error, attempt=attempt, retry_in=retry_in(rq_job), data=data, client=self.client
            )
            if ended.applied:
                release_abandoned(rq_job, self.client, outcome=ended.outcome, detail=error["detail"])
        else:
            ended = self._take_over_without_rq(job_id, attempt, error, data)
        if ended is None or not ended.applied:
            return
        self._write_through(ended.result, event=ended.event, data=ended.data)
        log.warning("reconciler: job %s abandoned by %s: %s", job_id, worker_name or "?", ended.outcome)
        if ended.outcome == "retry":
            report.retried += 1
        elif ended.outcome == "canceled":
            report.canceled += 1
        else:
            report.failed += 1

    def _take_over_without_rq(
        self, job_id: str, attempt: int, error: dict[str, str], data: dict[str, Any]
    ) -> AttemptEnd | None:
        """RQ's record is gone too (Redis lost it): decide from SQL, and enqueue a retry afresh."""
        with self.sessions() as session:
            row = get_job(session, job_id=job_id)
        if row is None:
            return None
        payload = payload_for(row, self.client)
        runnable = payload is not None and row.task in load_tasks()  # a task since removed cannot retry
        left = retries_left(row) if runnable else 0
        delay = get_task(row.task).retry_policy.schedule(left)[0] if left > 0 else None
        ended = end_failed_attempt(
            job_id, error, attempt=attempt, retry_in=delay, data=data, client=self.client
        )
        if ended.applied and ended.outcome == "retry" and payload is not None:
            run_at = utcnow() + timedelta(seconds=delay) if delay else None
            enqueue_again(row, payload, self.client, run_at=run_at, retries_left=left - 1)
        return ended

    def _recover_finished(self, job_id: str, attempt: int, rq_job: Any, report: PassReport) -> None:
        result = record(
            job_id,
            JobStatus.FINISHED,
            event="finished",
            from_statuses=RUNNING,
            expect_attempt=attempt,
            patch={
                "result": rq_job.return_value(),
                "progress": 100.0,
                "ended_at": utcnow(),
                "eta_seconds": None,
            },
            data={"recovered_by": self.name},
            client=self.client,
        )
        if result.applied:
            self._write_through(result, event="finished", data={"recovered_by": self.name})
            report.recovered += 1

    def _write_through(self, result: TransitionResult, *, event: str, data: dict[str, Any] | None) -> None:
        with self.sessions() as session:
            write_through_or_log(result, session=session, event=event, data=data)

    # --- 2. jobs whose parents failed -------------------------------------------------------------

    def _fail_orphans(self, report: PassReport) -> None:
        with self.sessions() as session:
            rows = deferred_jobs(session, limit=PAGE)
            known = statuses_of(session, [p for row in rows for p in dependency_ids(row)])
        for row in rows:
            parents = parents_of(row, known)
            if not parents.blocking:
                continue
            parent = parents.blocking[0]
            error = {
                "type": "DependencyFailed",
                "detail": f"Job {parent}, which this job depends on, ended without finishing; "
                "restart it, then restart this job.",
            }
            data = {"error": error, "parent": parent}
            result = record(
                row.job_id,
                JobStatus.FAILED,
                event="failed",
                from_statuses=(JobStatus.DEFERRED,),
                patch={"error": error, "ended_at": utcnow(), "eta_seconds": None},
                data=data,
                client=self.client,
            )
            if result.applied:
                cancel_waiting(row.job_id, self.client)
                self._write_through(result, event="failed", data=data)
                report.dependency_failed += 1

    # --- 4. what RQ holds in flight ---------------------------------------------------------------

    def _reconcile_in_flight(self, queues: list[str], report: PassReport) -> None:
        entries = list(in_flight(self.client, queues))
        if not entries:
            return
        live = read_heads(self.client, [entry.job_id for entry in entries], ("status",))
        started = {(e.job_id, e.queue) for e in entries if e.worker is not None}
        for entry, head in zip(entries, live, strict=True):
            status = head.status
            if status is None or status in RUNNING:
                continue  # unknown to us, or running: the heartbeat decides (step 1)
            if entry.worker is None:
                if (entry.job_id, entry.queue) not in started:
                    self._unstick(entry.job_id, entry.queue, status, report)
                continue
            # Its worker may not have named the job as current yet (it is forking): judge the worker.
            if self._worker_alive(entry.worker, None):
                continue
            rq_job = fetch(entry.job_id, self.client)
            if rq_job is None or rq_job.get_status(refresh=False) not in (RQStatus.STARTED, RQStatus.QUEUED):
                continue
            if status in WAITING:  # its worker died between taking it and our record of its start
                noted = annotate(
                    entry.job_id,
                    event="requeued",
                    when=WAITING,
                    data={"reason": f"worker {entry.worker} died before the job started", "by": self.name},
                    client=self.client,
                )
                if noted.applied:
                    release_abandoned(rq_job, self.client, outcome="requeue")
                    report.returned += 1
            else:
                release_abandoned(rq_job, self.client, outcome=status.value)
                report.settled += 1

    def _unstick(self, job_id: str, queue: str, status: JobStatus, report: PassReport) -> None:
        """A job in RQ's intermediate list that no worker started within a heartbeat TTL goes back."""
        if status not in WAITING:
            drop_from_intermediate(job_id, queue, self.client)  # a leftover of a job that ended
            return
        marker = DEQUEUED_AT + job_id
        ttl = get_settings().heartbeat_ttl
        if self.client.set(marker, time.time(), nx=True, ex=3 * ttl + 5):
            return  # first seen now
        seen = float(self.client.get(marker) or time.time())
        if time.time() - seen < ttl:
            return
        if return_to_queue(job_id, queue, self.client):
            self.client.delete(marker)
            report.returned += 1
            log.warning("reconciler: job %s was dequeued by a worker that never started it; requeued", job_id)
