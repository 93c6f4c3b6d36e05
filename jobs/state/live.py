"""The live state of jobs in Redis: one hash per job, one snapshot channel, one journal.

Each job's hash holds its public snapshot fields (JSON-encoded), a few private
fields (tenant, owner, worker) and `_doc`, the assembled snapshot document.
Every change goes through :func:`transition`, a Lua script that checks the
status machine, bumps `seq`, stores, publishes the new document on
``CHANNEL`` and appends it to the ``JOURNAL`` stream, all atomically. The
recorder replays the journal into SQL.

This module is the only code that knows the hash's field names and encodings
(as RQ's `Job` owns its own hash): everyone else reads a job through
:class:`JobHead`, by :func:`read_head` (one job), :func:`read_heads` (many, one
round trip), :func:`read_head_async` (the API's pipelined reader), or
:func:`read_head_in` / :func:`decode_head` when the read rides in a pipeline
with other commands, so that no caller pays an extra round trip for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from jobs.clock import utcnow
from jobs.settings import get_settings
from jobs.snapshot import PUBLIC_FIELDS, JobSnapshot, encode
from jobs.status import RUNNING, TERMINAL, JobStatus, allowed_sources
from jobs.storable import storable_json

if TYPE_CHECKING:  # the API declares routes with this module: no Redis client import at that time
    from redis import Redis
    from redis.client import Pipeline
    from redis.commands.core import Script

    from jobs.state.pipelined_redis import PipelinedRedis

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


# --- reading a job's hash ---------------------------------------------------------------------------

HeadField = Literal[
    "tenant",
    "status",
    "attempt",
    "worker",
    "task",
    "control",
    "control_by",
    "control_at",
    "control_deadline",
    "doc",
    "seq",
]


class JobHead(NamedTuple):
    """The fields of one job's hash that callers read, decoded.

    A field is None when the hash lacks it, or when the read did not ask for it: a
    caller names the fields it needs (one HMGET either way), and reads only those.
    A named tuple rather than a frozen dataclass: it is as immutable and builds in a
    third of the time, which the snapshot read (about 16 µs a request) notices.
    """

    tenant: str | None = None
    status: JobStatus | None = None
    attempt: int | None = None
    worker: str | None = None  # the RQ worker running the current attempt
    task: str | None = None
    control: str | None = None  # a pending control request: "cancel" or "pause"
    control_by: str | None = None
    control_at: str | None = None
    control_deadline: float | None = None  # epoch seconds after which a cancel is enforced
    doc: bytes | None = None  # the assembled snapshot document, kept as bytes: it is served as is
    seq: int | None = None


def decode_status(raw: bytes) -> JobStatus:
    """A status as the hash stores it: a JSON string such as ``"started"``, quotes included."""
    return JobStatus(raw.decode().strip('"'))


def _request(raw: bytes) -> str | None:
    """A control request; withdrawing one (a resume) stores it empty."""
    return raw.decode() or None


# Each field's name in the hash and how its stored bytes decode (public snapshot fields are JSON).
# Built-ins where they do (`bytes.decode`, `int`): the snapshot read decodes on every request.
_HASH_FIELDS: dict[str, tuple[str, Callable[[bytes], Any]]] = {
    "tenant": ("tenant", bytes.decode),
    "status": ("status", decode_status),
    "attempt": ("attempt", int),
    "worker": ("worker", bytes.decode),
    "task": ("task", json.loads),
    "control": (CONTROL, _request),
    "control_by": (CONTROL_BY, bytes.decode),
    "control_at": (CONTROL_AT, bytes.decode),
    "control_deadline": (CONTROL_DEADLINE, float),
    "doc": ("_doc", bytes),
    "seq": ("seq", int),
}


_SLOTS = {name: slot for slot, name in enumerate(JobHead._fields)}
_WIDTH = len(_SLOTS)
_new_head = tuple.__new__


@lru_cache(maxsize=64)  # keep: a pure function of the callers' constant field tuples
def _plan(fields: tuple[HeadField, ...]) -> tuple[list[str], list[tuple[int, Callable[[bytes], Any]]]]:
    """The hash names to ask for, and where each reply lands in a JobHead with its decoder."""
    return [_HASH_FIELDS[name][0] for name in fields], [
        (_SLOTS[name], _HASH_FIELDS[name][1]) for name in fields
    ]


def _hash_names(fields: tuple[HeadField, ...]) -> list[str]:
    return _plan(fields)[0]


def decode_head(fields: tuple[HeadField, ...], reply: Sequence[bytes | None]) -> JobHead:
    """The JobHead of an HMGET reply for ``fields`` (one queued by :func:`read_head_in`)."""
    values: list[Any] = [None] * _WIDTH
    for (slot, decode), raw in zip(_plan(fields)[1], reply, strict=True):
        if raw is not None:
            values[slot] = decode(raw)
    return _new_head(JobHead, values)  # JobHead._make without its length check: values has every slot


def read_head(client: Redis, job_id: str, fields: tuple[HeadField, ...]) -> JobHead:
    """Those fields of one job's hash (one round trip)."""
    return decode_head(fields, client.hmget(job_key(job_id), _hash_names(fields)))


def read_head_in(pipeline: Pipeline, job_id: str, fields: tuple[HeadField, ...]) -> None:
    """Queue the read on ``pipeline`` beside the caller's other commands; :func:`decode_head`
    decodes its reply."""
    pipeline.hmget(job_key(job_id), _hash_names(fields))


def read_heads(client: Redis, job_ids: Sequence[str], fields: tuple[HeadField, ...]) -> list[JobHead]:
    """Those fields of each job's hash, in order, in one round trip."""
    if not job_ids:
        return []
    with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            read_head_in(pipe, job_id, fields)
        replies = pipe.execute()
    return [decode_head(fields, reply) for reply in replies]


def read_public_fields(
    client: Redis, job_ids: Sequence[str], names: Sequence[str]
) -> list[list[bytes | None]]:
    """Public snapshot fields (JSON-encoded, as :data:`PUBLIC_FIELDS` names them) of many jobs in
    one round trip; a job Redis has no live state for reads as all None."""
    unknown = set(names) - set(PUBLIC_FIELDS)
    if unknown:
        raise ValueError(f"not public snapshot fields: {sorted(unknown)}")
    with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(job_key(job_id), list(names))
        return list(pipe.execute())


async def read_head_async(reader: PipelinedRedis, job_id: str, fields: tuple[HeadField, ...]) -> JobHead:
    """Those fields of one job's hash through the event loop's pipelined connection."""
    return decode_head(fields, await reader.command("HMGET", job_key(job_id), *_hash_names(fields)))


def heartbeat_key(job_id: str) -> str:
    return HEARTBEAT_PREFIX + job_id


_FIELDS = ", ".join(f"'{name}'" for name in PUBLIC_FIELDS)
# The snapshot document, assembled in Lua from the hash's public fields (missing ones are null),
# exactly as `jobs.snapshot.assemble` does in Python.
_DOCUMENT = (
    "\nlocal FIELDS = {"
    + _FIELDS
    + "}"
    + """
local FIELD_AT = {}
for i, name in ipairs(FIELDS) do FIELD_AT[name] = i end
local NF = #FIELDS

local function doc_of(vals)
  local parts = {}
  for i, name in ipairs(FIELDS) do
    local v = vals[i]
    if not v or v == '' then v = 'null' end
    parts[i] = '"' .. name .. '":' .. v
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

local function assemble(key)
  return doc_of(redis.call('HMGET', key, unpack(FIELDS)))
end
"""
)

# The scripts' arguments are named: ARGV[1] says how many name/value pairs follow, and the
# job's own field/value pairs (to store in its hash) come after them. Each script refuses a call
# with another count of names; tests/test_live_store.py ties the names the Lua reads to these lists
# (checking each name per call would cost the gate about a tenth more).
SEED_ARGS = ("ttl", "job_id")
TRANSITION_ARGS = (
    "to",  # the new status; '*' keeps the current one (an annotation)
    "allowed",  # the statuses the job may be in now, comma separated
    "expect_attempt",  # refuse ("stale") unless the job is in this attempt (0 = any)
    "new_attempt",  # '1': this change opens attempt + 1
    "event",  # the event name journaled with the change
    "journal",  # '1': append the change to the journal
    "ttl",  # seconds the hash lives on (0 = persist)
    "updated_at",  # JSON-encoded time of the change
    "channel",  # where the new document is published
    "data",  # JSON event data for the history ('' = none)
    "heartbeat_ttl",  # seconds a started job's heartbeat lives
    "job_id",
)


def lua_named_args(names: tuple[str, ...]) -> str:
    """Lua that decodes the named arguments into ``A`` and sets ``FIELDS_AT``, the first field index."""
    return f"""
local A = {{}}
local FIELDS_AT = 2 * tonumber(ARGV[1]) + 2
for i = 2, FIELDS_AT - 1, 2 do A[ARGV[i]] = ARGV[i + 1] end
if tonumber(ARGV[1]) ~= {len(names)} then
  return redis.error_reply('gate: takes {len(names)} named arguments, got ' .. ARGV[1])
end
"""


def named_args(named: dict[str, Any], fields: Iterable[tuple[str, Any]] = ()) -> list[Any]:
    """ARGV for a gate script: the count of named pairs, the pairs, then the hash's field/value pairs."""
    args: list[Any] = [len(named)]
    for name, value in named.items():
        args += [name, value]
    for name, value in fields:
        args += [name, value]
    return args


# The status table's knowledge the scripts need, written into them from jobs.status.
_LUA_STATUSES = (
    f"\nlocal STARTED = '{JobStatus.STARTED.value}'"
    + "\nlocal RUNNING = {"
    + ", ".join(f"['{status.value}'] = true" for status in sorted(RUNNING))
    + "}"
    + "\nlocal TERMINAL = {"
    + ", ".join(f"['{status.value}'] = true" for status in sorted(TERMINAL))
    + "}"
    + "\nlocal CONTROL_FIELDS = {"
    + ", ".join(f"'{name}'" for name in (CONTROL, CONTROL_BY, CONTROL_AT, CONTROL_DEADLINE))
    + "}\n"
)

# KEYS[1] job hash, KEYS[2] running set. Named arguments: SEED_ARGS.
_SEED = (
    _DOCUMENT
    + _LUA_STATUSES
    + lua_named_args(SEED_ARGS)
    + """
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then
  return {'exists', redis.call('HGET', key, '_doc')}
end
redis.call('HSET', key, unpack(ARGV, FIELDS_AT))
local doc = assemble(key)
redis.call('HSET', key, '_doc', doc)
local ttl = tonumber(A.ttl)
if ttl > 0 then redis.call('EXPIRE', key, ttl) end
local status = cjson.decode(redis.call('HGET', key, 'status'))
if RUNNING[status] then redis.call('SADD', KEYS[2], A.job_id) end
return {'ok', doc}
"""
)

# The gate as a Lua function, so that the worker's claim and finish scripts (jobs/queues/rq_engine.py)
# make the very same change in the same script as RQ's bookkeeping. ``argv[first..last]`` are
# the field/value pairs to store; ``A`` the named arguments (TRANSITION_ARGS).
# It reads the hash once and writes it once: the new document is assembled from what it read
# with the change laid over it. A started job's heartbeat is set by its start; a job that leaves
# started/paused loses it, leaves the running set, and loses any pending control request (`_ctl*`).
# Returns {outcome, document, control request, journal entry id}.
GATE_LUA = (
    _DOCUMENT
    + _LUA_STATUSES
    + """
local function gate(key, journal, hb, running_set, A, argv, first, last)
  local read = redis.call('HMGET', key, '_ctl', unpack(FIELDS))
  local ctl = read[1]
  local cur = {}
  for i = 1, NF do cur[i] = read[i + 1] end
  if not cur[FIELD_AT.status] then return {'missing', false, false, false} end
  local status = cjson.decode(cur[FIELD_AT.status])
  local attempt = tonumber(cur[FIELD_AT.attempt]) or 0
  local keep = A.to == '*'
  local to = A.to
  if keep then to = status end
  local expect = tonumber(A.expect_attempt)
  if expect > 0 and expect ~= attempt then return {'stale', doc_of(cur), ctl, false} end
  local allowed = false
  for s in string.gmatch(A.allowed, '[^,]+') do
    if s == status then allowed = true break end
  end
  if not allowed then
    local outcome = 'refused'
    if (not keep) and status == to then outcome = 'noop' end
    return {outcome, doc_of(cur), ctl, false}
  end
  local set = {}
  for i = first, last, 2 do
    local name, value = argv[i], argv[i + 1]
    set[#set + 1] = name
    set[#set + 1] = value
    local at = FIELD_AT[name]
    if at then cur[at] = value end
    if name == '_ctl' then ctl = value end
  end
  if A.new_attempt == '1' then attempt = attempt + 1 end
  cur[FIELD_AT.status] = '"' .. to .. '"'
  cur[FIELD_AT.updated_at] = A.updated_at
  cur[FIELD_AT.attempt] = tostring(attempt)
  cur[FIELD_AT.seq] = tostring((tonumber(cur[FIELD_AT.seq]) or 0) + 1)
  local doc = doc_of(cur)
  for _, name in ipairs({'status', 'updated_at', 'attempt', 'seq'}) do
    set[#set + 1] = name
    set[#set + 1] = cur[FIELD_AT[name]]
  end
  set[#set + 1] = '_doc'
  set[#set + 1] = doc
  redis.call('HSET', key, unpack(set))
  local was_running = RUNNING[status] == true
  local running = RUNNING[to] == true
  if not running and ctl then
    redis.call('HDEL', key, unpack(CONTROL_FIELDS))
    ctl = false
  end
  local ttl = tonumber(A.ttl)
  if ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  elseif TERMINAL[status] then
    redis.call('PERSIST', key)
  end
  if to == STARTED and not keep then
    redis.call('SET', hb, tostring(attempt), 'EX', A.heartbeat_ttl)
  elseif was_running and not running then
    redis.call('DEL', hb)
  end
  if running and not was_running then
    redis.call('SADD', running_set, A.job_id)
  elseif was_running and not running then
    redis.call('SREM', running_set, A.job_id)
  end
  redis.call('PUBLISH', A.channel, doc)
  local entry = false
  if A.journal == '1' then
    entry = redis.call('XADD', journal, '*', 'event', A.event, 'doc', doc, 'data', A.data)
  end
  return {'ok', doc, ctl, entry}
end
"""
)

# KEYS[1] job hash, KEYS[2] journal stream, KEYS[3] job heartbeat, KEYS[4] running set.
# Named arguments: TRANSITION_ARGS. Replies as `gate` does.
_TRANSITION = (
    GATE_LUA
    + lua_named_args(TRANSITION_ARGS)
    + "\nreturn gate(KEYS[1], KEYS[2], KEYS[3], KEYS[4], A, ARGV, FIELDS_AT, #ARGV)\n"
)


@dataclass(frozen=True)
class TransitionResult:
    """What the live store did with a requested change, and the job's document after it."""

    outcome: Outcome
    doc: bytes | None
    control: str | None = None  # a pending control request for a running job ("cancel", "pause")
    entry_id: bytes | None = None  # the change's journal entry, when it was journaled

    @property
    def applied(self) -> bool:
        return self.outcome == "ok"

    @cached_property
    def snapshot(self) -> JobSnapshot | None:
        return JobSnapshot.model_validate_json(self.doc) if self.doc else None

    @cached_property
    def current_status(self) -> JobStatus | None:
        return self.snapshot.status if self.snapshot else None


def decode_gate_reply(reply: list[Any]) -> TransitionResult:
    """The gate's {outcome, document, control request, journal entry id} as a TransitionResult."""
    outcome, doc, control, entry_id = reply
    return TransitionResult(
        outcome.decode(), doc or None, control.decode() if control else None, entry_id or None
    )


class LiveStore:
    """The live-state operations over one Redis client."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._seed: Script = client.register_script(_SEED)
        self._transition: Script = client.register_script(_TRANSITION)

    def seed(self, fields: dict[str, str], *, tenant: str, owner: str | None = None) -> TransitionResult:
        """Create a job's hash unless it exists. ``fields`` are JSON-encoded public fields."""
        keys, args = self._seed_call(fields, tenant=tenant, owner=owner)
        outcome, doc = self._seed(keys=keys, args=args)
        return TransitionResult("ok" if outcome == b"ok" else "noop", doc or None)

    def seed_in(
        self, pipeline: Pipeline, fields: dict[str, str], *, tenant: str, owner: str | None = None
    ) -> None:
        """Queue the seed on ``pipeline``, inside the transaction that enqueues the job in RQ.

        It is sent as EVAL (the script text), not EVALSHA: inside MULTI a script Redis no longer
        knows fails only at EXEC, after RQ's half of the transaction has run; and redis-py's way
        round that costs a SCRIPT EXISTS round trip per submission.
        """
        keys, args = self._seed_call(fields, tenant=tenant, owner=owner)
        pipeline.eval(_SEED, len(keys), *keys, *args)

    def seed_many_in(
        self, pipeline: Pipeline, seeds: Iterable[tuple[dict[str, str], str, str | None]]
    ) -> None:
        """Queue the seeds of many jobs, ``(fields, tenant, owner)``, on ``pipeline`` by EVALSHA.

        Unlike :meth:`seed_in`, the script's text is not sent with every job: redis-py loads it
        once when the pipeline executes (one SCRIPT EXISTS for the whole batch), so a batch of
        thousands sends kilobytes where one EVAL per job would send megabytes.
        """
        for fields, tenant, owner in seeds:
            present = {name: value for name, value in fields.items() if value != "null"}  # absent reads null
            keys, args = self._seed_call(present, tenant=tenant, owner=owner)
            self._seed(keys=keys, args=args, client=pipeline)

    @staticmethod
    def _seed_call(fields: dict[str, str], *, tenant: str, owner: str | None) -> tuple[list[str], list[Any]]:
        status = JobStatus(json.loads(fields["status"]))
        job_id = json.loads(fields["job_id"])
        ttl = get_settings().snapshot_ttl if status.is_terminal else 0
        private = [("tenant", tenant), ("owner", owner or "")]
        args = named_args({"ttl": ttl, "job_id": job_id}, [*private, *fields.items()])
        return [job_key(job_id), RUNNING_SET], args

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
        named = {
            "to": "*" if to is None else to.value,
            "allowed": ",".join(sorted(sources)),
            "expect_attempt": expect_attempt,
            "new_attempt": 1 if new_attempt else 0,
            "event": event,
            "journal": 1 if journal else 0,
            "ttl": settings.snapshot_ttl if to is not None and to.is_terminal else 0,
            "updated_at": encode(utcnow()),
            "channel": CHANNEL,
            "data": storable_json(data, separators=(",", ":"), default=str) if data else "",
            "heartbeat_ttl": settings.heartbeat_ttl,
            "job_id": job_id,
        }
        fields = [(name, encode(value)) for name, value in (patch or {}).items()]
        args = named_args(named, [*fields, *(private or {}).items()])
        keys = [job_key(job_id), JOURNAL, heartbeat_key(job_id), RUNNING_SET]
        return decode_gate_reply(self._transition(keys=keys, args=args))

    def read(self, job_id: str) -> tuple[str, bytes] | None:
        """(tenant, snapshot document) of a job, or None when Redis has no live state for it."""
        head = read_head(self.client, job_id, ("tenant", "doc"))
        if head.doc is None:
            return None
        return head.tenant or "", head.doc


_stores: dict[int, LiveStore] = {}


def live_store(client: Redis) -> LiveStore:
    """The LiveStore bound to ``client`` (scripts are registered once per client)."""
    store = _stores.get(id(client))
    if store is None or store.client is not client:
        store = _stores[id(client)] = LiveStore(client)
    return store
