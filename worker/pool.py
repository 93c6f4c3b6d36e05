"""The worker: a supervisor process and ``--concurrency`` long-lived children that run the jobs.

RQ's forking worker forks a work-horse per job, which is what let it stop a
job by force, and is also most of what a job cost (the fork, its copy-on-write
and its reaping: ~15 of 18 ms per no-op job). Here the fork happens once per
child, and a job is stopped by force by killing its child and starting a
fresh one. The supervisor (this module):

- forks the children (each an RQ worker of its own, see worker/child.py) after
  loading the tasks, so a fresh child starts warm in milliseconds;
- keeps each running job's heartbeat and each child's RQ heartbeat, in one
  pipeline per tick, and leaves paused time out of a job's hard deadline;
- listens on the children's RQ command channels: ``stop-job`` (a forced
  cancel, sent by `conveyor`'s control path after the cancel grace) kills that
  child and records the job canceled; ``kill-horse`` kills it and records a
  failed attempt; ``shutdown`` stops the pool;
- kills a child whose job ran past its timeout plus ``hard_stop_after`` (a
  task stuck in C code never sees its alarm) and records the timeout;
- notices a child that died (OOM killer, kill -9) and ends its job's attempt
  at once (retried if its task retries), instead of waiting for the reconciler;
- replaces a child that exited (after ``child_max_jobs`` jobs, past
  ``child_max_memory_mb``, or dead);
- on SIGTERM lets running jobs finish for ``shutdown_grace`` seconds, then
  stops the children that still run one and requeues their jobs as a new
  attempt; a second SIGTERM does that at once.

Only the job concerned is stopped: a child runs one sync job at a time, alone. An
async job (a child runs many side by side, see worker/async_jobs.py) is first
stopped by asyncio cancellation of that job alone; only if it is still running
``async_stop_grace`` seconds later is its child killed, and then every other job
that child ran ends as a dead worker's does (a failed attempt, retried when its
task retries). The same holds for an async job past its hard deadline.
If the supervisor itself is killed, its children die with it (PDEATHSIG), the
heartbeats stop, and the reconciler retries their jobs within seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

import redis.exceptions
from redis import Redis
from rq.command import PUBSUB_CHANNEL_TEMPLATE
from rq.utils import utcformat
from rq.worker import Worker

from jobs.clock import utcnow
from jobs.queues.queueing import (
    CLAIMED_FIELD,
    SERIALIZER,
    fetch,
    get_queue,
    release_abandoned,
    retry_in,
    run_due_scheduled,
)
from jobs.settings import get_settings
from jobs.state.attempts import end_failed_attempt, pending_cancel, record_canceled
from jobs.state.lifecycle import record
from jobs.state.live import HeadField, decode_head, heartbeat_key, live_store, read_head, read_head_in
from jobs.state.redis_conn import redis_url, use_redis
from jobs.status import RUNNING, JobStatus
from worker.child import ChildLimits, ConveyorChild
from worker.ends import EndNotes, EndWriter, new_pipe
from worker.slots import Slots, SlotView

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
BEAT_HEAD: tuple[HeadField, ...] = ("status",)
CLAIM_HEAD: tuple[HeadField, ...] = ("status", "attempt", "worker")
SCHEDULER_INTERVAL = 1.0  # seconds between passes over the scheduled registries (RQ's default)
TICK = 0.1  # seconds between the supervisor's looks at its children
WORKER_TTL = 480  # seconds a child's RQ worker hash outlives its last heartbeat (RQ's 420 + 60)

# KEYS: the children's RQ worker hashes; ARGV[1] the heartbeat time, ARGV[2] the hashes' TTL.
# Only a hash that exists is refreshed: a child registers its own (RQ refuses a name in use).
_WORKER_BEATS = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'last_heartbeat', ARGV[1])
    redis.call('EXPIRE', key, ARGV[2])
  end
end
"""


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> None:
    """In a child: get ``sig`` if the parent dies (Linux), so no orphan runs a job unwatched."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, sig)


@dataclass
class _Child:
    index: int
    pid: int
    name: str
    born: float = 0.0


@dataclass
class _Paused:
    generation: int  # the slot generation (the job) this belongs to
    seconds: float = 0.0  # seconds the job has been paused (added to its deadline)


@dataclass(frozen=True)
class _AsyncStop:
    """A forced stop asked of one async job: its child is killed if the job still runs at ``until``."""

    child: int
    generation: int
    until: float


@dataclass
class _Stopping:
    since: float  # when the first stop signal came
    until: float  # when jobs still running are requeued and their children stopped
    forced: bool = False  # a second signal: requeue now


class Pool:
    """A supervisor and its children. :meth:`run` returns when the pool has stopped."""

    def __init__(
        self,
        queues: list[str],
        *,
        name: str,
        concurrency: int,
        burst: bool = False,
        limits: ChildLimits | None = None,
    ) -> None:
        self.queues = queues
        self.name = name
        self.concurrency = concurrency
        self.burst = burst
        self.limits = limits or ChildLimits()
        self.slots = Slots(concurrency, get_settings().async_concurrency + 1)
        self._paused: dict[int, _Paused] = {}  # by slot
        self._async_stops: dict[int, _AsyncStop] = {}  # by slot
        self.children: dict[int, _Child] = {}  # by index
        self.client = Redis.from_url(redis_url())
        self.stopping: _Stopping | None = None
        self._generations = [0] * concurrency
        # A child that fails right after its start (Redis refusing it, a broken task module) is
        # started again after a growing pause, not in a tight loop.
        self._respawn_at = [0.0] * concurrency
        self._backoff = [0.0] * concurrency
        self._next_beat = 0.0
        self._next_schedule = 0.0
        self._worked = False
        self.ends = EndWriter(self.client, name)

    # --- the loop ----------------------------------------------------------------------------------

    def run(self) -> bool:
        """Run until stopped (or, in burst mode, until every child found the queues empty)."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        use_redis(self.client)
        live_store(self.client)
        gc.collect()
        gc.freeze()  # the children share the supervisor's objects; their GC must not copy them
        self.ends.start()
        for index in range(self.concurrency):
            self._spawn(index)
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe(PUBSUB_CHANNEL_TEMPLATE % f"{self.name}.*")
        try:
            while self.children or (not self.burst and self.stopping is None):
                self._listen(pubsub)
                self._reap()
                now = time.monotonic()
                if now >= self._next_beat:
                    self._beat()
                    self._next_beat = now + get_settings().heartbeat_interval
                if now >= self._next_schedule and self.stopping is None:
                    self._enqueue_due()
                    self._next_schedule = now + SCHEDULER_INTERVAL
                self._enforce_deadlines(now)
                self._enforce_async_stops(now)
                if self.stopping is not None:
                    self._shut_down(now)
                elif not self.burst:
                    for index in range(self.concurrency):
                        if index not in self.children and now >= self._respawn_at[index]:
                            self._spawn(index)
        finally:
            with contextlib.suppress(redis.exceptions.RedisError):
                pubsub.close()
            for child in list(self.children.values()):
                self._kill(child)
            self.ends.stop()
        return self._worked

    def _listen(self, pubsub: Any) -> None:
        try:
            message = pubsub.get_message(timeout=TICK)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            time.sleep(TICK)  # Redis away for a moment: the children wait on it too
            return
        if message is None:
            return
        channel = message["channel"].decode()
        child = next((c for c in self.children.values() if channel.endswith(f":{c.name}")), None)
        try:
            payload = json.loads(message["data"])
        except (TypeError, ValueError):
            return
        command = payload.get("command")
        if command == "shutdown":
            self._on_stop_signal(signal.SIGTERM, None)
        elif child is not None and command in ("stop-job", "kill-horse"):
            self._stop_job(child, command, payload.get("job_id"))

    def _stop_job(self, child: _Child, command: str, wanted: str | None) -> None:
        """A forced stop: an async job is cancelled alone first (see `_enforce_async_stops`); any
        other job is stopped by killing its child."""
        for slot, view in self._in_flight(child):
            if wanted is not None and wanted != view.job_id:
                continue
            if command == "stop-job" and view.concurrent:
                asked = self._async_stops.get(slot)
                if asked is not None and asked.generation == view.generation:
                    return  # asked again (the control path repeats it): the first grace stands
                log.warning("pool %s: stop-job for async job %s: cancelling it", self.name, view.job_id)
                self.slots.ask_stop(slot, view.generation)
                grace = get_settings().async_stop_grace
                self._async_stops[slot] = _AsyncStop(child.index, view.generation, time.monotonic() + grace)
                return
            log.warning(
                "pool %s: %s for job %s: stopping child %s", self.name, command, view.job_id, child.name
            )
            self._kill_running(child, slot, "canceled" if command == "stop-job" else "killed")
            return

    def _enforce_async_stops(self, now: float) -> None:
        """Kill the child of an async job that is still running past its stop's grace."""
        for slot, stop in list(self._async_stops.items()):
            child = self.children.get(stop.child)
            view = self.slots.read(slot)
            if child is None or view.generation != stop.generation or view.job_id is None:
                del self._async_stops[slot]  # it ended (or its child did)
            elif now >= stop.until:
                del self._async_stops[slot]
                log.error(
                    "pool %s: async job %s ignored its cancellation; stopping child %s and its other jobs",
                    self.name,
                    view.job_id,
                    child.name,
                )
                self._kill_running(child, slot, "canceled")

    def _in_flight(self, child: _Child) -> list[tuple[int, SlotView]]:
        """(slot, view) of every job the child runs now."""
        views = ((slot, self.slots.read(slot)) for slot in self.slots.of(child.index))
        return [(slot, view) for slot, view in views if view.job_id is not None]

    def _held(self, child: _Child) -> list[tuple[int | None, SlotView]]:
        """(slot, view) of every job a child that is gone held: those its slots name, and the one
        its last claim took if no slot names it (slot None).

        The claim script records the start, and names the job in the child's RQ worker hash, in
        one step; the child fills a slot only once the script's reply is back. A child that died
        in between leaves a started job that no slot names: without this, nothing would end that
        attempt until the reconciler found its heartbeat gone, a heartbeat TTL later."""
        held: list[tuple[int | None, SlotView]] = list(self._in_flight(child))
        claimed = self._claimed_by(child)
        if claimed is not None and all(view.job_id != claimed.job_id for _, view in held):
            held.append((None, claimed))
        return held

    def _claimed_by(self, child: _Child) -> SlotView | None:
        """The job the child's last claim took, if it is still running that attempt: a job ended,
        retried or taken by another child since names another worker or status."""
        try:
            raw = self.client.hget(Worker.redis_worker_namespace_prefix + child.name, CLAIMED_FIELD)
            if raw is None:
                return None
            job_id = raw.decode()
            head = read_head(self.client, job_id, CLAIM_HEAD)
        except redis.exceptions.RedisError:
            return None  # the reconciler settles it once its heartbeat is gone
        if head.status not in RUNNING or head.worker != child.name:
            return None
        return SlotView(0, job_id, head.attempt or 0, 0.0, 0.0)

    def _kill_running(self, child: _Child, slot: int, cause: str) -> None:
        """Kill a child to stop the job in ``slot`` (recorded as ``cause``); the other jobs it ran
        end as a dead worker's do (retried when their task retries)."""
        self._kill(child)
        for other, view in self._held(child):
            assert view.job_id is not None
            self._settle(view.job_id, view.attempt, cause if other == slot else "bystander")

    # --- children ----------------------------------------------------------------------------------

    def _spawn(self, index: int) -> None:
        self._generations[index] += 1
        name = f"{self.name}.{index}.{self._generations[index]}"
        for slot in self.slots.of(index):
            self.slots.end(slot)
        read, write = new_pipe()
        pid = os.fork()
        if pid == 0:  # the child: it must never return into the supervisor's code
            code = 1
            try:
                die_with_parent()
                os.setpgid(0, 0)  # killing a child takes its own subprocesses with it
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                os.close(read)
                notes = EndNotes(write)
                code = _child_main(index, name, self.queues, self.slots, self.limits, self.burst, notes)
            except BaseException:
                log.exception("child %s failed", name)
            finally:
                os._exit(code)
        os.close(write)  # the child holds the only write end: its exit closes the pipe
        self.ends.add(read)
        self.children[index] = _Child(index, pid, name, born=time.monotonic())

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = next((c for c in self.children.values() if c.pid == pid), None)
            if child is None:
                continue
            del self.children[child.index]
            self._worked = True
            code = os.waitstatus_to_exitcode(status)
            running = self._held(child)
            for _, view in running:  # it died in the middle of its jobs
                assert view.job_id is not None
                log.error(
                    "pool %s: child %s died (status %s) running job %s",
                    self.name,
                    child.name,
                    code,
                    view.job_id,
                )
                self._settle(view.job_id, view.attempt, "died", code=code)
            if running:
                self._register_death(child)
            elif code not in (0, -signal.SIGTERM):
                log.warning("pool %s: child %s exited with status %s", self.name, child.name, code)
                self._register_death(child)
            self._pace_respawn(child, failed=code != 0)

    def _pace_respawn(self, child: _Child, *, failed: bool) -> None:
        """A child that failed within seconds of its start waits longer before each new start."""
        index = child.index
        if failed and time.monotonic() - child.born < 5:
            self._backoff[index] = min(30.0, max(0.5, 2 * self._backoff[index]))
            self._respawn_at[index] = time.monotonic() + self._backoff[index]
        else:
            self._backoff[index] = 0.0

    def _kill(self, child: _Child) -> None:
        """Stop a child now, with its subprocesses; its RQ worker record says it died."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, 0)
        self.children.pop(child.index, None)
        self._register_death(child)

    def _register_death(self, child: _Child) -> None:
        """What a dead child could not say itself: RQ lists it as a worker no more."""
        key = Worker.redis_worker_namespace_prefix + child.name
        with contextlib.suppress(redis.exceptions.RedisError):
            worker = Worker.find_by_key(key, connection=self.client, serializer=SERIALIZER)
            if worker is not None:
                worker.register_death()

    # --- jobs whose child is gone -----------------------------------------------------------------

    def _settle(self, job_id: str, attempt: int, cause: str, *, code: int | None = None) -> None:
        """Record how the attempt of a job whose child was stopped (or died) ended, in Conveyor's
        record and RQ's."""
        try:
            self._settle_now(job_id, attempt, cause, code)
        except redis.exceptions.RedisError:
            log.exception(
                "pool %s: could not record the end of job %s; the reconciler will", self.name, job_id
            )

    def _settle_now(self, job_id: str, attempt: int, cause: str, code: int | None) -> None:
        rq_job = fetch(job_id, self.client)
        if cause == "canceled":
            cancel = pending_cancel(job_id, self.client)
            by, at = cancel if cancel is not None else (None, None)
            result = record_canceled(
                job_id, by=by, requested_at=at, attempt=attempt, forced=True, client=self.client
            )
            if rq_job is not None and result.applied:
                release_abandoned(rq_job, self.client, outcome="canceled")
            return
        if cause == "timeout":
            error = {
                "type": "JobTimeout",
                "detail": "The job ran past its timeout and did not stop; its process was killed.",
            }
        elif cause == "killed":
            error = {"type": "WorkHorseKilled", "detail": "The job's process was killed on request."}
        elif cause == "bystander":
            error = {
                "type": "WorkHorseKilled",
                "detail": "The job's process was killed to stop another job running in it.",
            }
        else:
            error = {
                "type": "WorkHorseKilled",
                "detail": f"The process running the job died unexpectedly (status {code}).",
            }
        delay = retry_in(rq_job) if rq_job is not None else None
        ended = end_failed_attempt(job_id, error, attempt=attempt, retry_in=delay, client=self.client)
        if rq_job is not None and ended.applied:
            release_abandoned(rq_job, self.client, outcome=ended.outcome, detail=error["detail"])

    def _enqueue_due(self) -> None:
        """RQ's scheduler, one pass: delayed jobs and backoff retries that are due go to their queue
        (under RQ's scheduler lock, so one pool at a time does it; see `run_due_scheduled`)."""
        try:
            run_due_scheduled(self.client, self.queues)
        except redis.exceptions.RedisError as exc:
            log.warning("pool %s: could not move due scheduled jobs (%s); next second", self.name, exc)

    # --- heartbeats and deadlines -----------------------------------------------------------------

    def _beat(self) -> None:
        """Every running job's heartbeat and every child's RQ heartbeat, in one round trip; notes
        which jobs are paused (their pause does not count against their deadline)."""
        settings = get_settings()
        now_rq = utcformat(utcnow())
        running = [job for child in self.children.values() for job in self._in_flight(child)]
        try:
            with self.client.pipeline(transaction=False) as pipe:
                keys = [Worker.redis_worker_namespace_prefix + child.name for child in self.children.values()]
                pipe.eval(_WORKER_BEATS, len(keys), *keys, now_rq, WORKER_TTL)
                for _, view in running:
                    assert view.job_id is not None
                    hb = heartbeat_key(view.job_id)
                    pipe.set(hb, max(view.attempt, 1), ex=settings.heartbeat_ttl, xx=True)
                    read_head_in(pipe, view.job_id, BEAT_HEAD)
                replies = pipe.execute()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("pool %s: Redis unreachable for the heartbeats (%s); next tick", self.name, exc)
            return
        answers = replies[1:]
        for (slot, view), beat, reply in zip(running, answers[::2], answers[1::2], strict=True):
            current = decode_head(BEAT_HEAD, reply).status
            if current is None and not beat:  # Redis lost its data while the job runs: say it is alive
                with contextlib.suppress(redis.exceptions.RedisError):
                    self.client.set(heartbeat_key(view.job_id or ""), 1, ex=settings.heartbeat_ttl)
            paused = self._paused.get(slot)
            if paused is None or paused.generation != view.generation:
                paused = self._paused[slot] = _Paused(view.generation)
            if current == JobStatus.PAUSED:
                paused.seconds += settings.heartbeat_interval

    def _enforce_deadlines(self, now: float) -> None:
        for child in list(self.children.values()):
            for slot, view in self._in_flight(child):
                if not view.deadline:
                    continue
                paused = self._paused.get(slot)
                held = paused.seconds if paused is not None and paused.generation == view.generation else 0.0
                if now > view.deadline + held:
                    log.error(
                        "pool %s: job %s ran past its timeout; stopping child %s",
                        self.name,
                        view.job_id,
                        child.name,
                    )
                    self._kill_running(child, slot, "timeout")
                    break

    # --- stopping ---------------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.stopping is None:
            grace = get_settings().shutdown_grace
            log.info("pool %s: stopping; running jobs get %.0fs to finish", self.name, grace)
            self.stopping = _Stopping(since=now, until=now + grace)
            for child in self.children.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
        elif now - self.stopping.since >= 1:  # within a second: the same signal delivered twice
            log.warning("pool %s: stopping now; running jobs go back to their queue", self.name)
            self.stopping.until, self.stopping.forced = now, True

    def _shut_down(self, now: float) -> None:
        assert self.stopping is not None
        if now < self.stopping.until:
            return
        for child in list(self.children.values()):
            self._kill(child)  # before its jobs go back to a queue: it must not take one of them
            requeued = [job_id for _, view in self._held(child) if (job_id := self._requeue(child, view))]
            for job_id in requeued:
                rq_job = fetch(job_id, self.client)
                if rq_job is not None:
                    release_abandoned(rq_job, self.client, outcome="requeue")

    def _requeue(self, child: _Child, view: SlotView) -> str | None:
        """Record a job still running at shutdown, whose child was just stopped, as a new attempt
        to go back to its queue (its id; None if it ended meanwhile). A last write of the old
        attempt that reaches Redis after this is refused as stale; it does not use up a retry."""
        assert self.stopping is not None
        if self.stopping.forced:
            reason = "worker shutdown (forced)"
        else:
            reason = f"worker shutdown: still running after {get_settings().shutdown_grace:.0f}s"
        requeued = record(
            view.job_id or "",
            JobStatus.QUEUED,
            event="requeued",
            new_attempt=True,
            from_statuses=RUNNING,
            expect_attempt=view.attempt,
            patch={"enqueued_at": utcnow(), "eta_seconds": None, "message": "requeued: " + reason},
            data={"reason": reason, "worker": child.name},
            client=self.client,
        )
        if not requeued.applied:
            return None
        log.warning("pool %s: requeued job %s (%s)", self.name, view.job_id, reason)
        return view.job_id


def _child_main(
    index: int, name: str, queues: list[str], slots: Slots, limits: ChildLimits, burst: bool, notes: EndNotes
) -> int:
    """A child's life: its own Redis connection, its worker, until it stops. (The objects it
    inherited stay frozen: its collections leave their pages shared with the supervisor.)"""
    connection = Redis.from_url(redis_url())
    use_redis(connection)
    live_store(connection)
    settings = get_settings()
    child = ConveyorChild(
        [get_queue(q, connection) for q in queues],
        connection=connection,
        serializer=SERIALIZER,
        name=name,
        index=index,
        slots=slots,
        limits=limits,
        notes=notes,
        job_monitoring_interval=max(1, int(settings.heartbeat_interval)),
    )
    child.run(burst=burst)
    return 0


def default_concurrency() -> int:
    """One child per CPU core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
