"""A job's start and end in one Redis call each: RQ's bookkeeping and Conveyor's gate, in one script.

RQ's `SimpleWorker` spends about 52 Redis commands and 3 ms of CPU per job in
its own bookkeeping (fetching the job, its execution record, the registries,
the worker's hash, the result), and Conveyor's gate added two more scripts
and their round trips. The worker's children (worker/child.py) instead take a
job with :meth:`Engine.claim` and end a successful one with
:meth:`Engine.finish`: each is one script that writes exactly what RQ's own
worker writes (so ``rq info``, rq-dashboard, RQ's registries, results,
retries and dependencies read it as theirs) together with the gate's change
(``jobs.state.live.GATE_LUA``), atomically. About 36 commands per job in all.

Only the common case takes this path: a Conveyor job with no success callback,
no repeat and no webhook. Anything else, and every failure, goes through RQ's own Python
code (the child is an RQ worker too), which is slower and exactly RQ.

What the scripts write mirrors rq 2.12.0 (``jobs.queues.rq_private.CHECKED_AGAINST``):
`Execution.create`, `Job.prepare_for_execution`, `Worker.prepare_job_execution`,
`Job._handle_success`, `Result.save`, `Job.cleanup`, `cleanup_execution` and
the worker counters. `tests/test_rq_engine.py` reads the result back through
RQ's public API and fails when RQ's layout moves. The key names come from RQ's
own classes. Keys are named inside the scripts (a job id is known only once
popped), which a single Redis or Valkey allows and Redis Cluster would not.
"""

from __future__ import annotations

import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rq.defaults import DEFAULT_WORKER_TTL
from rq.executions import ExecutionRegistry
from rq.job import Job as RQJob
from rq.queue import Queue
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.utils import utcformat
from rq.worker import BaseWorker

from jobs.clock import utcnow
from jobs.queues.queueing import CLAIMED_FIELD, SERIALIZER
from jobs.settings import get_settings
from jobs.snapshot import encode
from jobs.state.live import (
    CHANNEL,
    GATE_LUA,
    HEARTBEAT_PREFIX,
    JOURNAL,
    KEY_PREFIX,
    RUNNING_SET,
    TRANSITION_ARGS,
    TransitionResult,
    decode_gate_reply,
    lua_named_args,
    named_args,
)
from jobs.status import WAITING, JobStatus, allowed_sources
from jobs.storable import storable_json

if TYPE_CHECKING:
    from redis import Redis
    from redis.commands.core import Script

# The start's patch, as the runner has always written it: a new attempt starts clean.
START_PATCH = ("ended_at", "error", "result", "result_ref", "progress", "message", "eta_seconds")


def _template(key_template: str) -> str:
    """An RQ key template ('rq:wip:{0}') as the prefix the scripts append a name to."""
    return key_template.replace("{0}", "")


_RQ_KEYS = f"""
local RQ_QUEUE = '{Queue.redis_queue_namespace_prefix}'
local RQ_JOB = '{RQJob.redis_job_namespace_prefix}'
local RQ_WIP = '{_template(StartedJobRegistry.key_template)}'
local RQ_FINISHED = '{_template(FinishedJobRegistry.key_template)}'
local RQ_EXECUTIONS = '{_template(ExecutionRegistry.key_template)}'
local RQ_EXECUTION = 'rq:execution:'
local RQ_RESULTS = 'rq:results:'
local RQ_WORKER = '{BaseWorker.redis_worker_namespace_prefix}'
local RQ_CLAIMED = '{CLAIMED_FIELD}'
local RQ_DEFAULT_WORKER_TTL = {DEFAULT_WORKER_TTL}
local JOB_PREFIX = '{KEY_PREFIX}'
local HB_PREFIX = '{HEARTBEAT_PREFIX}'
local JOURNAL = '{JOURNAL}'
local RUNNING_SET = '{RUNNING_SET}'
local WAITING = {{{", ".join(f"['{s.value}'] = true" for s in sorted(WAITING))}}}
"""

# Named arguments beyond the gate's own (TRANSITION_ARGS; the gate's job_id is set by the script).
CLAIM_ARGS = (
    "queues",  # the queues to pop from, in order, comma separated
    "popped",  # or: the id a blocking wait already popped ('' = none)
    "popped_from",  # the queue it came from
    "intermediate",  # '1': it sits in that queue's intermediate list (RQ's BLMOVE), to be removed
    "worker",
    "execution_id",
    "now",
    "now_rq",
    "default_timeout",
)
_CLAIM_NAMES = CLAIM_ARGS + tuple(name for name in TRANSITION_ARGS if name != "job_id")

# Replies {'empty'} | {'gone', id, queue} | {'rq', id, queue} (RQ's path takes it; the id is back
# where RQ's dequeue would have left it: see hand_to_rq) |
# {'ok', id, queue, data, timeout, meta, result_ttl, dependency_ids, document, journal entry}.
_CLAIM = (
    GATE_LUA
    + _RQ_KEYS
    + lua_named_args(_CLAIM_NAMES)
    + """
-- A job RQ's own code will run sits where RQ's dequeue would have left it: in the queue's
-- intermediate list for a worker of one queue (RQ's BLMOVE), nowhere for several (RQ's BLPOP,
-- whose job RQ's own code never takes out of an intermediate list).
local function hand_to_rq(id, qname)
  if not string.find(A.queues, ',', 1, true) then
    redis.call('RPUSH', RQ_QUEUE .. qname .. ':intermediate', id)
  end
end

-- A paused queue (jobs/queues/queue_control.py) starts nothing: skipped, and a job a blocking wait took
-- from it goes back to its head.
local id, qname = false, false
if A.popped ~= '' then
  id = A.popped
  qname = A.popped_from
  if A.intermediate == '1' then redis.call('LREM', RQ_QUEUE .. qname .. ':intermediate', 1, id) end
  if redis.call('SISMEMBER', 'cv:queues:paused', qname) == 1 then
    redis.call('LPUSH', RQ_QUEUE .. qname, id)
    return {'empty'}
  end
else
  for name in string.gmatch(A.queues, '[^,]+') do
    if redis.call('SISMEMBER', 'cv:queues:paused', name) == 0 then
      id = redis.call('LPOP', RQ_QUEUE .. name)
      if id then qname = name break end
    end
  end
end
if not id then return {'empty'} end
local rqkey = RQ_JOB .. id
local job = redis.call('HMGET', rqkey, 'data', 'timeout', 'meta', 'result_ttl', 'dependency_ids',
  'success_callback_name', 'repeats_left', 'webhooks')
if not job[1] then return {'gone', id, qname} end
if (job[6] and job[6] ~= '') or job[7] or job[8] then
  hand_to_rq(id, qname)
  return {'rq', id, qname}
end
A.job_id = id
local reply = gate(JOB_PREFIX .. id, JOURNAL, HB_PREFIX .. id, RUNNING_SET, A, ARGV, FIELDS_AT, #ARGV)
if reply[1] ~= 'ok' then
  hand_to_rq(id, qname)
  return {'rq', id, qname}
end
local timeout = tonumber(job[2]) or tonumber(A.default_timeout)
local ttl = RQ_DEFAULT_WORKER_TTL
if timeout ~= -1 then ttl = timeout + 60 end
local now = tonumber(A.now)
local exec = A.execution_id
redis.call('HSET', rqkey, 'status', 'started', 'started_at', A.now_rq, 'last_heartbeat', A.now_rq,
  'worker_name', A.worker)
local ekey = RQ_EXECUTION .. id .. ':' .. exec
redis.call('HSET', ekey, 'id', exec, 'created_at', A.now, 'last_heartbeat', A.now, 'worker_name', A.worker)
redis.call('EXPIRE', ekey, ttl)
redis.call('ZADD', RQ_EXECUTIONS .. id, now + ttl + 60, exec)
redis.call('EXPIRE', RQ_EXECUTIONS .. id, ttl + 60)
redis.call('ZADD', RQ_WIP .. qname, now + ttl, id .. ':' .. exec)
redis.call('HSET', RQ_WORKER .. A.worker, 'state', 'busy', 'current_job', id,
  'current_job_working_time', 0, 'last_heartbeat', A.now_rq, RQ_CLAIMED, id)
return {'ok', id, qname, job[1], job[2] or false, job[3] or false, job[4] or false, job[5] or false,
  reply[2], reply[4]}
"""
)

FINISH_ARGS = (
    "queue",
    "worker",
    "execution_id",
    "now",
    "now_rq",
    "result_ttl",
    "working_time",
    "result_pairs",  # how many of the trailing field/value pairs are RQ's result entry
    "had_dependencies",  # '1': the job waited on others (RQ expires that set with the job)
)
_FINISH_NAMES = FINISH_ARGS + TRANSITION_ARGS

# Replies {outcome, document, control, journal entry, has dependents}. RQ's record is settled
# unless the gate found the job missing or waiting (Redis lost the start): the caller then
# records the start again and calls this once more.
_FINISH = (
    GATE_LUA
    + _RQ_KEYS
    + lua_named_args(_FINISH_NAMES)
    + """
local id = A.job_id
local last = #ARGV - 2 * tonumber(A.result_pairs)
local reply = gate(JOB_PREFIX .. id, JOURNAL, HB_PREFIX .. id, RUNNING_SET, A, ARGV, FIELDS_AT, last)
local outcome = reply[1]
if outcome == 'missing' then return {outcome, false, false, false, 0} end
if outcome == 'refused' and WAITING[cjson.decode(reply[2]).status] then
  return {outcome, reply[2], reply[3], false, 0}
end
local rqkey = RQ_JOB .. id
local now = tonumber(A.now)
local ttl = tonumber(A.result_ttl)
redis.call('HSET', rqkey, 'status', 'finished', 'ended_at', A.now_rq)
local rkey = RQ_RESULTS .. id
redis.call('XADD', rkey, 'MAXLEN', 10, '*', unpack(ARGV, last + 1))
if ttl == -1 then
  redis.call('PERSIST', rkey)
  redis.call('ZADD', RQ_FINISHED .. A.queue, '+inf', id)
else
  redis.call('EXPIRE', rkey, ttl)
  redis.call('ZADD', RQ_FINISHED .. A.queue, now + ttl, id)
  redis.call('EXPIRE', rqkey, ttl)
end
local dependents = redis.call('EXISTS', rqkey .. ':dependents')
if ttl ~= -1 then
  if dependents == 1 then redis.call('EXPIRE', rqkey .. ':dependents', ttl) end
  if A.had_dependencies == '1' then redis.call('EXPIRE', rqkey .. ':dependencies', ttl) end
end
local exec = A.execution_id
redis.call('DEL', RQ_EXECUTION .. id .. ':' .. exec)
redis.call('ZREM', RQ_WIP .. A.queue, id .. ':' .. exec)
redis.call('ZREM', RQ_EXECUTIONS .. id, exec)
local wkey = RQ_WORKER .. A.worker
redis.call('HDEL', wkey, 'current_job')
redis.call('HINCRBY', wkey, 'successful_job_count', 1)
redis.call('HINCRBYFLOAT', wkey, 'total_working_time', A.working_time)
return {outcome, reply[2], reply[3], reply[4], dependents}
"""
)


@dataclass(frozen=True)
class Claimed:
    """A job taken off its queue and started, in RQ's record and in Conveyor's."""

    job_id: str
    queue: str
    execution_id: str
    func_name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    timeout: int | None
    meta: dict[str, Any]
    result_ttl: int | None
    had_dependencies: bool
    started: TransitionResult
    started_at: datetime
    started_mono: float


@dataclass(frozen=True)
class Passed:
    """The claim found a job this path does not run: RQ's own code takes it (``job_id`` None:
    the job hash was gone, RQ's dequeue skips such ids too)."""

    job_id: str | None
    queue: str


@dataclass(frozen=True)
class Finished:
    """What the finish did: the gate's answer, and whether the job has dependents to release."""

    result: TransitionResult
    has_dependents: bool


def _named_gate(
    to: JobStatus,
    *,
    event: str,
    allowed: frozenset[JobStatus],
    expect_attempt: int,
    ttl: int,
    data: dict[str, Any] | None,
) -> dict[str, Any]:
    settings = get_settings()
    return {
        "to": to.value,
        "allowed": ",".join(sorted(allowed)),
        "expect_attempt": expect_attempt,
        "new_attempt": 0,
        "event": event,
        "journal": 1,
        "ttl": ttl,
        "updated_at": encode(utcnow()),
        "channel": CHANNEL,
        "data": storable_json(data, separators=(",", ":"), default=str) if data else "",
        "heartbeat_ttl": settings.heartbeat_ttl,
    }


class Engine:
    """The claim and finish scripts over one Redis client (one per worker child)."""

    def __init__(self, client: Redis, worker_name: str) -> None:
        self.client = client
        self.worker = worker_name
        self._claim: Script = client.register_script(_CLAIM)
        self._finish: Script = client.register_script(_FINISH)
        self.start_data = storable_json({"worker": worker_name}, separators=(",", ":"))

    def claim(
        self, queues: list[str], *, popped: tuple[str, str] | None = None, intermediate: bool = False
    ) -> Claimed | Passed | None:
        """Take the next job of ``queues`` and record its start; None when all are empty.

        ``popped`` is (job id, queue) of a job a blocking wait already took: with
        ``intermediate`` it was moved to that queue's intermediate list (RQ's BLMOVE), else
        popped outright (RQ's BLPOP over several queues).
        """
        started_at = utcnow()
        execution_id = uuid.uuid4().hex
        named = {
            "queues": ",".join(queues),
            "popped": popped[0] if popped else "",
            "popped_from": popped[1] if popped else "",
            "intermediate": 1 if intermediate else 0,
            "worker": self.worker,
            "execution_id": execution_id,
            "now": repr(started_at.timestamp()),
            "now_rq": utcformat(started_at),
            "default_timeout": get_settings().job_timeout,
            **_named_gate(
                JobStatus.STARTED,
                event="started",
                allowed=allowed_sources(JobStatus.STARTED) & WAITING,
                expect_attempt=0,
                ttl=0,
                data=None,
            ),
            "data": self.start_data,
        }
        started = encode(started_at)
        fields = [("started_at", started), *((name, "null") for name in START_PATCH), ("worker", self.worker)]
        reply = self._claim(args=named_args(named, fields))
        kind = reply[0]
        if kind == b"empty":
            return None
        if kind != b"ok":
            return Passed(reply[1].decode() if kind == b"rq" else None, reply[2].decode())
        _, job_id, queue, data, timeout, meta, result_ttl, dependency_ids, doc, entry = reply
        func_name, _instance, args, kwargs = SERIALIZER.loads(zlib.decompress(data))
        return Claimed(
            job_id=job_id.decode(),
            queue=queue.decode(),
            execution_id=execution_id,
            func_name=func_name,
            args=tuple(args or ()),
            kwargs=kwargs or {},
            timeout=int(timeout) if timeout else None,
            meta=SERIALIZER.loads(meta) if meta else {},
            result_ttl=int(result_ttl) if result_ttl is not None else None,
            had_dependencies=bool(dependency_ids) and dependency_ids not in (b"[]", b""),
            started=TransitionResult("ok", doc, None, entry),
            started_at=started_at,
            started_mono=time.monotonic(),
        )

    def finish(self, claimed: Claimed, patch: dict[str, Any], *, attempt: int, rq_result: Any) -> Finished:
        """Record a successful attempt's end (``patch`` the public fields) and RQ's success, at once.

        ``rq_result`` is what RQ keeps as the job's return value (its results stream).
        """
        settings = get_settings()
        ended_at = utcnow()
        result_ttl = claimed.result_ttl if claimed.result_ttl is not None else settings.result_ttl
        result = Result(
            job_id=claimed.job_id,
            type=Result.Type.SUCCESSFUL,
            connection=self.client,
            return_value=rq_result,
            worker_name=self.worker,
            serializer=SERIALIZER,
            execution_id=claimed.execution_id,
            execution_started_at=claimed.started_at.replace(tzinfo=UTC),
            execution_ended_at=ended_at,
        ).serialize()
        named = {
            "queue": claimed.queue,
            "worker": self.worker,
            "execution_id": claimed.execution_id,
            "now": repr(ended_at.timestamp()),
            "now_rq": utcformat(ended_at),
            "result_ttl": result_ttl,
            "working_time": repr(max(0.0, time.monotonic() - claimed.started_mono)),
            "result_pairs": len(result),
            "had_dependencies": 1 if claimed.had_dependencies else 0,
            **_named_gate(
                JobStatus.FINISHED,
                event="finished",
                allowed=allowed_sources(JobStatus.FINISHED),
                expect_attempt=attempt,
                ttl=settings.snapshot_ttl,
                data=None,
            ),
            "job_id": claimed.job_id,
        }
        fields = [(name, encode(value)) for name, value in patch.items()]
        reply = self._finish(args=named_args(named, [*fields, *result.items()]))
        outcome, doc, control, entry, dependents = reply
        return Finished(decode_gate_reply([outcome, doc, control, entry]), bool(dependents))
