"""The live state of jobs in Redis: one hash per job, one snapshot channel, one journal.

Each job's hash holds its public snapshot fields (JSON-encoded), a few private
fields (tenant, owner, worker) and `_doc`, the assembled snapshot document.
Every change goes through :func:`transition`, a Lua script that checks the
status machine, bumps `seq`, stores, publishes the new document on
``CHANNEL`` and appends it to the ``JOURNAL`` stream, all atomically. The
recorder replays the journal into SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from jobs.clock import utcnow
from jobs.settings import get_settings
from jobs.snapshot import PUBLIC_FIELDS, JobSnapshot, encode
from jobs.status import JobStatus, allowed_sources
from jobs.storable import storable_json

if TYPE_CHECKING:  # the API declares routes with this module: no Redis client import at that time
    from redis import Redis
    from redis.commands.core import Script

KEY_PREFIX = "cv:job:"
HEARTBEAT_PREFIX = "cv:hb:"
CHANNEL = "cv:snapshots"
JOURNAL = "cv:journal"
RUNNING_SET = "cv:running"  # ids of started/paused jobs, kept by the gate (the reconciler's index)

# Private hash fields of a control request on a running job: the action, who asked, when, and
# (for a cancel) the time after which the work-horse is stopped by force.
CONTROL = "_ctl"
CONTROL_BY = "_ctl_by"
CONTROL_AT = "_ctl_at"
CONTROL_DEADLINE = "_ctl_deadline"

Outcome = Literal["ok", "noop", "refused", "stale", "missing"]


def job_key(job_id: str) -> str:
    return KEY_PREFIX + job_id


def heartbeat_key(job_id: str) -> str:
    return HEARTBEAT_PREFIX + job_id


_FIELDS = ", ".join(f"'{name}'" for name in PUBLIC_FIELDS)
_ASSEMBLE = (
    "\nlocal FIELDS = {"
    + _FIELDS
    + "}"
    + """
local function assemble(key)
  local vals = redis.call('HMGET', key, unpack(FIELDS))
  local parts = {}
  for i, name in ipairs(FIELDS) do
    local v = vals[i]
    if not v or v == '' then v = 'null' end
    parts[i] = '"' .. name .. '":' .. v
  end
  return '{' .. table.concat(parts, ',') .. '}'
end
"""
)

# KEYS[1] job hash, KEYS[2] running set. ARGV[1] ttl (0 = none), ARGV[2] job id, ARGV[3..] field/value pairs.
_SEED = (
    _ASSEMBLE
    + """
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then
  return {'exists', redis.call('HGET', key, '_doc')}
end
redis.call('HSET', key, unpack(ARGV, 3))
local doc = assemble(key)
redis.call('HSET', key, '_doc', doc)
local ttl = tonumber(ARGV[1])
if ttl > 0 then redis.call('EXPIRE', key, ttl) end
local status = cjson.decode(redis.call('HGET', key, 'status'))
if status == 'started' or status == 'paused' then redis.call('SADD', KEYS[2], ARGV[2]) end
return {'ok', doc}
"""
)

# KEYS[1] job hash, KEYS[2] journal stream, KEYS[3] job heartbeat, KEYS[4] running set.
# ARGV: 1 new status ('*' keeps the current one: an annotation), 2 allowed current statuses
# (comma separated), 3 expected attempt (0 = any), 4 open a new attempt (0/1), 5 event name,
# 6 journal it (0/1), 7 ttl (0 = persist), 8 updated_at (JSON), 9 channel, 10 event data
# (JSON or ''), 11 heartbeat ttl, 12 job id, 13.. field/value pairs.
# A started job's heartbeat is refreshed by each change; a job that leaves started/paused
# loses it, leaves the running set, and loses any pending control request (`_ctl*`).
# Replies {outcome, document, control request}.
_TRANSITION = (
    _ASSEMBLE
    + """
local key = KEYS[1]
local cur = redis.call('HMGET', key, 'status', 'attempt')
if not cur[1] then return {'missing', false, false} end
local status = cjson.decode(cur[1])
local keep = ARGV[1] == '*'
local to = ARGV[1]
if keep then to = status end
local expect = tonumber(ARGV[3])
if expect > 0 and expect ~= tonumber(cur[2]) then
  return {'stale', redis.call('HGET', key, '_doc'), redis.call('HGET', key, '_ctl')}
end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do
  if s == status then allowed = true break end
end
if not allowed then
  local outcome = 'refused'
  if (not keep) and status == to then outcome = 'noop' end
  return {outcome, redis.call('HGET', key, '_doc'), redis.call('HGET', key, '_ctl')}
end
if #ARGV > 12 then redis.call('HSET', key, unpack(ARGV, 13)) end
redis.call('HSET', key, 'status', '"' .. to .. '"', 'updated_at', ARGV[8])
if ARGV[4] == '1' then redis.call('HINCRBY', key, 'attempt', 1) end
redis.call('HINCRBY', key, 'seq', 1)
local running = (to == 'started' or to == 'paused')
if not running then redis.call('HDEL', key, '_ctl', '_ctl_by', '_ctl_at', '_ctl_deadline') end
local doc = assemble(key)
redis.call('HSET', key, '_doc', doc)
local ttl = tonumber(ARGV[7])
if ttl > 0 then redis.call('EXPIRE', key, ttl) else redis.call('PERSIST', key) end
if to == 'started' and not keep then
  redis.call('SET', KEYS[3], redis.call('HGET', key, 'attempt'), 'EX', ARGV[11])
elseif not running then
  redis.call('DEL', KEYS[3])
end
if running then redis.call('SADD', KEYS[4], ARGV[12]) else redis.call('SREM', KEYS[4], ARGV[12]) end
redis.call('PUBLISH', ARGV[9], doc)
if ARGV[6] == '1' then
  redis.call('XADD', KEYS[2], '*', 'event', ARGV[5], 'doc', doc, 'data', ARGV[10])
end
return {'ok', doc, redis.call('HGET', key, '_ctl')}
"""
)


@dataclass(frozen=True)
class TransitionResult:
    """What the live store did with a requested change, and the job's document after it."""

    outcome: Outcome
    doc: bytes | None
    control: str | None = None  # a pending control request for a running job ("cancel", "pause")

    @property
    def applied(self) -> bool:
        return self.outcome == "ok"

    @cached_property
    def snapshot(self) -> JobSnapshot | None:
        return JobSnapshot.model_validate_json(self.doc) if self.doc else None

    @cached_property
    def current_status(self) -> JobStatus | None:
        return self.snapshot.status if self.snapshot else None


class LiveStore:
    """The live-state operations over one Redis client."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._seed: Script = client.register_script(_SEED)
        self._transition: Script = client.register_script(_TRANSITION)

    def seed(self, fields: dict[str, str], *, tenant: str, owner: str | None = None) -> TransitionResult:
        """Create a job's hash unless it exists. ``fields`` are JSON-encoded public fields."""
        status = JobStatus(json.loads(fields["status"]))
        ttl = get_settings().snapshot_ttl if status.is_terminal else 0
        args: list[Any] = [ttl, "tenant", tenant, "owner", owner or ""]
        for name, value in fields.items():
            args += [name, value]
        job_id = json.loads(fields["job_id"])
        args[1:1] = [job_id]
        outcome, doc = self._seed(keys=[job_key(job_id), RUNNING_SET], args=args)
        return TransitionResult("ok" if outcome == b"ok" else "noop", doc or None)

    def transition(
        self,
        job_id: str,
        to: JobStatus | None,
        *,
        event: str,
        patch: dict[str, Any] | None = None,
        private: dict[str, str] | None = None,
        new_attempt: bool = False,
        from_statuses: Iterable[JobStatus] | None = None,
        expect_attempt: int = 0,
        journal: bool = True,
        data: dict[str, Any] | None = None,
    ) -> TransitionResult:
        """Move a job to ``to`` if the status machine allows it, atomically.

        ``patch`` holds public fields (encoded here); ``private`` raw private
        fields; ``data`` travels with the journal entry into the event row.
        ``from_statuses`` narrows the legal sources further (a progress write
        only applies to a started job, never resuming a paused one).
        ``expect_attempt`` refuses a write from an older attempt ("stale").
        ``to=None`` keeps the status: an annotation (a control request, a
        requeue) that is versioned, published and journaled like any change,
        and applies only when the job is in one of ``from_statuses``.
        """
        settings = get_settings()
        if to is None:
            if from_statuses is None or new_attempt:
                raise ValueError("an annotation names the statuses it applies to and opens no attempt")
            sources = frozenset(from_statuses)
            if any(s.is_terminal for s in sources):
                raise ValueError("a terminal job cannot be annotated")
        else:
            sources = allowed_sources(to, new_attempt=new_attempt)
            if from_statuses is not None:
                sources = sources & frozenset(from_statuses)
        allowed = ",".join(sorted(sources))
        args: list[Any] = [
            "*" if to is None else to.value,
            allowed,
            expect_attempt,
            1 if new_attempt else 0,
            event,
            1 if journal else 0,
            settings.snapshot_ttl if to is not None and to.is_terminal else 0,
            encode(utcnow()),
            CHANNEL,
            storable_json(data, separators=(",", ":"), default=str) if data else "",
            settings.heartbeat_ttl,
            job_id,
        ]
        for name, value in (patch or {}).items():
            args += [name, encode(value)]
        for name, raw in (private or {}).items():
            args += [name, raw]
        keys = [job_key(job_id), JOURNAL, heartbeat_key(job_id), RUNNING_SET]
        outcome, doc, control = self._transition(keys=keys, args=args)
        return TransitionResult(outcome.decode(), doc or None, control.decode() if control else None)

    def read(self, job_id: str) -> tuple[str, bytes] | None:
        """(tenant, snapshot document) of a job, or None when Redis has no live state for it."""
        tenant, doc = self.client.hmget(job_key(job_id), ["tenant", "_doc"])
        if doc is None:
            return None
        return (tenant or b"").decode(), doc

    def read_many(self, job_ids: list[str]) -> dict[str, bytes]:
        """Snapshot documents of those jobs that have live state, in one round trip."""
        if not job_ids:
            return {}
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(job_key(job_id), "_doc")
            docs = pipe.execute()
        return {job_id: doc for job_id, doc in zip(job_ids, docs, strict=True) if doc is not None}


_stores: dict[int, LiveStore] = {}


def live_store(client: Redis) -> LiveStore:
    """The LiveStore bound to ``client`` (scripts are registered once per client)."""
    store = _stores.get(id(client))
    if store is None or store.client is not client:
        store = _stores[id(client)] = LiveStore(client)
    return store
