"""The recorder: replays the live journal (a Redis stream) into SQL, in batches.

Work-horses never open SQL connections (a fresh Postgres connection per job
would cost more than the job): they journal each state change in Redis, and
a recorder child process beside every worker (started by `worker.main`, see
docs/decisions.md section 3) writes batches to SQL through one pooled connection.
Recorders share a consumer group, so any number may run; entries a dead
recorder had claimed are reclaimed after ``claim_idle``.
Applied entries are acknowledged and deleted, so the stream holds only what
SQL has not seen yet. Under load, a recorder lingers ``linger`` seconds after a
partial batch so that one transaction carries many changes; SQL trails the
live state by about that much (readers get the live state from Redis).

One entry never stalls the rest: a batch that fails while SQL is reachable is
applied entry by entry, and an entry SQL still refuses (or that cannot be
read) is set aside with its reason (jobs/history/set_aside.py) and acknowledged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis.exceptions
import sqlalchemy as sa
from redis import Redis

from jobs.access.redaction import redact_text
from jobs.clock import isoformat, utcnow
from jobs.history.db import session_scope
from jobs.history.set_aside import MAX_REASON, SET_ASIDE, SET_ASIDE_COUNTER, job_id_of
from jobs.history.store import JournalEntry, apply_journal
from jobs.reporting.metrics import METRICS_KEY, Tally
from jobs.settings import get_settings
from jobs.state.live import JOURNAL, live_store, read_heads
from jobs.state.results import blob_key, fetch_blobs
from jobs.status import JobStatus

log = logging.getLogger(__name__)

GROUP = "recorder"


def _parse(fields: dict[bytes, bytes]) -> JournalEntry | str:
    """The entry, or why it cannot be read (such an entry is set aside, not retried)."""
    try:
        raw_data = fields.get(b"data") or b""
        entry = JournalEntry(
            event=fields[b"event"].decode(),
            doc=json.loads(fields[b"doc"]),
            data=json.loads(raw_data) if raw_data else {},
        )
        entry.job_id, entry.seq  # noqa: B018  (both are read by every apply: fail here, not there)
        return entry
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        return f"malformed journal entry: {type(exc).__name__}: {exc}"


# PostgreSQL errors that say the database cannot take writes now, whatever the entry: connection,
# resources, operator intervention, system errors; no privilege, a missing table or column (a
# deployment not migrated yet), a read-only replica, a serialization failure. Entries stay in the
# journal for them, as for an outage, instead of being set aside one after another.
_UNAVAILABLE_CLASSES = frozenset({"08", "53", "57", "58"})
_UNAVAILABLE_STATES = frozenset({"42501", "42P01", "42703", "25006", "40001", "40P01"})


def unreachable(exc: BaseException) -> bool:
    """Whether a failure means SQL (or Redis) cannot be reached now, as opposed to refusing one entry.

    Unreachable: retry the whole batch later (nothing is acknowledged). Anything
    else (IntegrityError, DataError, ProgrammingError, a bad value in a document)
    belongs to some entry of the batch, which is then found by applying them one by one.
    """
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    state = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if isinstance(state, str) and (state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES):
        return True
    return isinstance(
        exc,
        sa.exc.OperationalError
        | sa.exc.InterfaceError
        | sa.exc.DisconnectionError
        | sa.exc.TimeoutError
        | redis.exceptions.RedisError
        | OSError,
    )


def failure_reason(exc: BaseException) -> str:
    """A short, redacted reason: the error's type and the first line of the database's message."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {text[0] if text else ''}".strip()
    return redact_text(reason)[:MAX_REASON]


def _referenced_result(entry: JournalEntry) -> tuple[str, int] | None:
    """(job_id, attempt) of a large result this entry refers to, if any."""
    if entry.doc.get("status") == "finished" and entry.doc.get("result_ref"):
        return entry.job_id, int(entry.doc.get("attempt") or 1)
    return None


class Recorder:
    """One consumer of the journal."""

    def __init__(
        self, client: Redis, consumer: str, *, batch: int = 500, claim_idle: float = 30.0, linger: float = 0.2
    ) -> None:
        self.client = client
        self.consumer = consumer
        self.batch = batch
        self.linger = linger
        self.claim_idle_ms = int(claim_idle * 1000)
        self._group_ready = False
        self._last_claim = 0.0

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self.client.xgroup_create(JOURNAL, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _read(self, block_ms: int | None, start: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        self._ensure_group()
        try:
            reply = self.client.xreadgroup(
                GROUP, self.consumer, {JOURNAL: start}, count=self.batch, block=block_ms
            )
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost the stream: make the group again
                self._group_ready = False
                return []
            raise
        return list(reply[0][1]) if reply else []

    def _apply(self, messages: list[tuple[bytes, Any]]) -> int:
        if not messages:
            return 0
        ids = [msg_id for msg_id, _ in messages]
        parsed: list[tuple[bytes, dict[bytes, bytes], JournalEntry]] = []
        refused: list[tuple[bytes, dict[bytes, bytes], str]] = []
        for msg_id, fields in messages:
            if not fields:  # deleted while it was pending: nothing left to apply
                continue
            entry = _parse(fields)
            if isinstance(entry, str):
                refused.append((msg_id, fields, entry))
            else:
                parsed.append((msg_id, fields, entry))
        entries = [entry for _, _, entry in parsed]
        blobs = fetch_blobs(self.client, [pair for e in entries if (pair := _referenced_result(e))])
        try:
            with session_scope() as session:
                apply_journal(session, entries, blobs=blobs)
        except Exception as exc:
            if unreachable(exc):
                raise
            log.warning(
                "recorder: a batch of %d entries failed (%s); applying them one by one",
                len(entries),
                failure_reason(exc),
            )
            refused += self._apply_one_by_one(parsed, blobs)
        # One transaction: the entries' metrics are counted if and only if they are acknowledged,
        # and an entry set aside is kept if and only if it leaves the journal.
        tenants = self._tenants([job_id_of(fields) for _, fields, _ in refused]) if refused else []
        settings = get_settings()
        tally = Tally()
        for entry in entries:
            try:
                tally.observe(entry.event, entry.doc)
            except (KeyError, TypeError, ValueError):  # a count is never worth a stuck journal
                log.exception("recorder: not counting job %s seq %s", entry.job_id, entry.seq)
        with self.client.pipeline(transaction=True) as pipe:
            tally.send(pipe)
            for (msg_id, fields, reason), tenant in zip(refused, tenants, strict=True):
                kept: dict[Any, Any] = {
                    **fields,
                    "journal_id": msg_id,
                    "job_id": job_id_of(fields) or "",
                    "tenant": tenant,
                    "reason": reason,
                    "set_aside_at": isoformat(utcnow()),
                }
                pipe.xadd(SET_ASIDE, kept, maxlen=settings.journal_set_aside_max, approximate=False)
                pipe.hincrby(METRICS_KEY, SET_ASIDE_COUNTER, 1)
            pipe.xack(JOURNAL, GROUP, *ids)
            pipe.xdel(JOURNAL, *ids)
            if blobs:  # now in SQL (or obsolete): the Redis copies have done their job
                pipe.delete(*(blob_key(job_id, attempt) for job_id, attempt in blobs))
            pipe.execute()
        return len(ids)

    def _apply_one_by_one(
        self,
        parsed: list[tuple[bytes, dict[bytes, bytes], JournalEntry]],
        blobs: dict[tuple[str, int], bytes],
    ) -> list[tuple[bytes, dict[bytes, bytes], str]]:
        """Apply each entry in its own transaction; returns those SQL still refuses, with why.

        An unreachable database stops it (raised): the batch is retried whole later, and the
        entries applied meanwhile replay as no-ops.
        """
        refused: list[tuple[bytes, dict[bytes, bytes], str]] = []
        for msg_id, fields, entry in parsed:
            pair = _referenced_result(entry)
            own = {pair: blobs[pair]} if pair in blobs else {}
            try:
                with session_scope() as session:
                    apply_journal(session, [entry], blobs=own)
            except Exception as exc:
                if unreachable(exc):
                    raise
                reason = failure_reason(exc)
                log.error(
                    "recorder: setting aside journal entry %s (job %s seq %s): %s",
                    msg_id.decode(errors="replace"),
                    entry.job_id,
                    entry.seq,
                    reason,
                )
                refused.append((msg_id, fields, reason))
        return refused

    def _tenants(self, job_ids: list[str | None]) -> list[str]:
        """The tenant of each job, from its live state (empty when Redis no longer has it)."""
        heads = read_heads(self.client, [job_id or "-" for job_id in job_ids], ("tenant",))
        return [head.tenant or "" for head in heads]

    def _claim_abandoned(self) -> int:
        now = time.monotonic()
        if now - self._last_claim < self.claim_idle_ms / 2000:
            return 0
        self._last_claim = now
        self._ensure_group()
        reply = self.client.xautoclaim(
            JOURNAL, GROUP, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0-0", count=self.batch
        )
        return self._apply(list(reply[1]))

    def drain(self) -> int:
        """Apply everything waiting now (own pending entries first); returns how many were applied."""
        total = self._apply(self._read(None, "0"))
        while True:
            applied = self._apply(self._read(None, ">"))
            total += applied
            if applied < self.batch:
                return total

    def run(self, stop: threading.Event, *, block: float = 1.0) -> None:
        """Apply entries as they arrive until ``stop`` is set; survives Redis and SQL outages."""
        backoff = 0.5
        pending_first = True
        while not stop.is_set():
            try:
                if pending_first:
                    self._apply(self._read(None, "0"))
                    pending_first = False
                self._claim_abandoned()
                applied = self._apply(self._read(int(block * 1000), ">"))
                backoff = 0.5
                if 0 < applied < self.batch:
                    # Let a few more changes gather: one transaction for many beats one for each.
                    stop.wait(self.linger)
            except (redis.exceptions.RedisError, sa.exc.SQLAlchemyError, OSError) as exc:
                log.warning("recorder: %s; retrying in %.1fs", exc, backoff)
                pending_first = True
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)


def record_end_now(client: Redis, job_id: str, *, tail: int = 50) -> bool:
    """Apply a job's journal entries to SQL now, ahead of the recorders; True if SQL has its end.

    A worker calls this when a job ends, before taking the next one: the recorders apply the
    entries a linger later, and if Redis lost its data meanwhile they would go with it, SQL
    would still call the job waiting, and the loss sweep would run it again. The job's entries
    are looked for among the journal's newest ``tail`` (they were written moments ago) and
    applied together, so SQL never holds the end without the start; it is the same idempotent
    write the recorder makes later. The end not found there (the recorder was quicker, or the
    journal is busy): the row alone is moved forward from the live state.
    """
    needle = job_id.encode()
    entries = [
        entry
        for _, fields in reversed(client.xrevrange(JOURNAL, count=tail))
        if needle in fields.get(b"doc", b"")
        and isinstance(entry := _parse(fields), JournalEntry)  # a malformed one: the recorder sets it aside
        and entry.job_id == job_id
    ]
    if any(JobStatus(e.doc["status"]).is_terminal for e in entries):
        blobs = fetch_blobs(client, [pair for e in entries if (pair := _referenced_result(e))])
        with session_scope() as session:
            apply_journal(session, entries, blobs=blobs)
        return True
    found = live_store(client).read(job_id)
    if found is None:
        return False
    doc = json.loads(found[1])
    if not JobStatus(doc["status"]).is_terminal:
        return False
    with session_scope() as session:
        apply_journal(session, [JournalEntry(event=doc["status"], doc=doc, data={})], events=False)
    return True


def record_ends_now(client: Redis, ended: list[list[JournalEntry]]) -> int:
    """Apply, in one transaction, the start and end entries of jobs that just ended (each list is
    one job's, as its worker saw them written); returns how many rows moved forward.

    The same idempotent write the recorders make later (they also count the metrics), done by
    the worker as soon as the jobs end, so that SQL holds their ends even if Redis loses the
    journal before a recorder reads it (see `record_end_now`).
    """
    entries = [entry for entries in ended for entry in entries]
    blobs = fetch_blobs(client, [pair for e in entries if (pair := _referenced_result(e))])
    with session_scope() as session:
        moved = apply_journal(session, entries, blobs=blobs)
    if blobs:  # in SQL now: the Redis copies have done their job (a recorder may never see these ends)
        client.delete(*(blob_key(job_id, attempt) for job_id, attempt in blobs))
    return moved


# Takes entries a worker applied out of the journal, and counts them, in one step: only those no
# recorder was handed yet (their ids are past the group's last-delivered id), so that each entry
# is counted once, by whoever removes it. A missing journal (Redis lost it) has nothing to take.
# One XDEL for all of them and one HINCRBY per distinct field, as the recorder's own batches do.
# KEYS: journal, metrics hash. ARGV[1]: the recorders' group; then, per entry: its id, a count n
# and n triples (metrics field, "i" or "f", amount).
_TAKE_LUA = """
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return {} end
local last = '0-0'
for _, group in ipairs(groups) do
  local name, delivered
  for i = 1, #group, 2 do
    if group[i] == 'name' then name = group[i + 1] end
    if group[i] == 'last-delivered-id' then delivered = group[i + 1] end
  end
  if name == ARGV[1] then last = delivered end
end
local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local last_ms, last_seq = parts(last)
local taken, counts, sums = {}, {}, {}
local i = 2
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local ms, seq = parts(id)
  if ms and (ms > last_ms or (ms == last_ms and seq > last_seq)) then
    taken[#taken + 1] = id
    for j = 0, n - 1 do
      local at = i + 2 + 3 * j
      local into = ARGV[at + 1] == 'f' and sums or counts
      into[ARGV[at]] = (into[ARGV[at]] or 0) + tonumber(ARGV[at + 2])
    end
  end
  i = i + 2 + 3 * n
end
if #taken == 0 then return taken end
-- Nothing else deletes an entry no recorder was handed, and a script runs whole: an id already
-- gone means this hand-over was taken before (all of it), so it is not counted again.
if redis.call('XDEL', KEYS[1], unpack(taken)) < #taken then return {} end
for field, amount in pairs(counts) do redis.call('HINCRBY', KEYS[2], field, amount) end
for field, amount in pairs(sums) do redis.call('HINCRBYFLOAT', KEYS[2], field, amount) end
return taken
"""


def take_applied(client: Redis, entries: list[JournalEntry], ids: list[bytes]) -> list[bytes]:
    """Remove from the journal the entries (``ids[i]`` is ``entries[i]``'s id, b"" if unknown) a
    worker has just applied to SQL, counting them in the metrics; returns the ids taken.

    Only entries no recorder has been handed are taken: one a recorder holds may be in a batch it
    is applying right now, and it acknowledges, deletes and counts that one itself. Sent in
    chunks of ``TAKE_CHUNK`` entries (a script unpacks its ids onto Lua's stack).
    """
    script = client.register_script(_TAKE_LUA)
    known = [(entry, entry_id) for entry, entry_id in zip(entries, ids, strict=True) if entry_id]
    taken: list[bytes] = []
    for start in range(0, len(known), TAKE_CHUNK):
        args: list[Any] = [GROUP]
        for entry, entry_id in known[start : start + TAKE_CHUNK]:
            args += [entry_id, *_counted(entry)]
        taken += script(keys=[JOURNAL, METRICS_KEY], args=args)
    return taken


TAKE_CHUNK = 1000


def _counted(entry: JournalEntry) -> list[Any]:
    """What the entry adds to the metrics, as the take script reads it: n, then n triples."""
    tally = Tally()
    try:
        tally.observe(entry.event, entry.doc)
    except (KeyError, TypeError, ValueError):  # a count is never worth a stuck journal
        log.exception("recorder: not counting job %s seq %s", entry.job_id, entry.seq)
    counted: list[Any] = [len(tally.counts) + len(tally.sums)]
    for name, count in tally.counts.items():
        counted += [name, "i", count]
    for name, total in tally.sums.items():
        counted += [name, "f", repr(total)]
    return counted
