"""The recorder: replays the live journal (a Redis stream) into SQL, in batches.

Work-horses never open SQL connections (a fresh Postgres connection per job
would cost more than the job): they journal each state change in Redis, and
a recorder thread in every worker process writes batches to SQL through one
pooled connection. Recorders share a consumer group, so any number may run;
entries a dead recorder had claimed are reclaimed after ``claim_idle``.
Applied entries are acknowledged and deleted, so the stream holds only what
SQL has not seen yet. Under load, a recorder lingers ``linger`` seconds after a
partial batch so that one transaction carries many changes; SQL trails the
live state by about that much (readers get the live state from Redis).
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

from jobs.db import session_scope
from jobs.live import JOURNAL, live_store
from jobs.metrics import observe
from jobs.results import blob_key, fetch_blobs
from jobs.status import JobStatus
from jobs.store import JournalEntry, apply_journal

log = logging.getLogger(__name__)

GROUP = "recorder"


def _parse(fields: dict[bytes, bytes]) -> JournalEntry | None:
    try:
        raw_data = fields.get(b"data") or b""
        return JournalEntry(
            event=fields[b"event"].decode(),
            doc=json.loads(fields[b"doc"]),
            data=json.loads(raw_data) if raw_data else {},
        )
    except (KeyError, ValueError):
        log.error("recorder: dropping a malformed journal entry: %r", fields)
        return None


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
        entries = [e for _, fields in messages if fields and (e := _parse(fields)) is not None]
        ids = [msg_id for msg_id, _ in messages]
        blobs = fetch_blobs(self.client, [pair for e in entries if (pair := _referenced_result(e))])
        try:
            with session_scope() as session:
                apply_journal(session, entries, blobs=blobs)
        except sa.exc.IntegrityError:
            log.exception("recorder: a batch failed; applying its entries one by one")
            for entry in entries:
                try:
                    with session_scope() as session:
                        apply_journal(session, [entry], blobs=blobs)
                except sa.exc.IntegrityError:
                    log.exception("recorder: dropping entry for job %s seq %s", entry.job_id, entry.seq)
        # One transaction: the entries' metrics are counted if and only if they are acknowledged,
        # so a recorder that dies before this point leaves both to the next one.
        with self.client.pipeline(transaction=True) as pipe:
            for entry in entries:
                try:
                    observe(pipe, entry.event, entry.doc)
                except (KeyError, TypeError, ValueError):  # a count is never worth a stuck journal
                    log.exception("recorder: not counting job %s seq %s", entry.job_id, entry.seq)
            pipe.xack(JOURNAL, GROUP, *ids)
            pipe.xdel(JOURNAL, *ids)
            if blobs:  # now in SQL (or obsolete): the Redis copies have done their job
                pipe.delete(*(blob_key(job_id, attempt) for job_id, attempt in blobs))
            pipe.execute()
        return len(ids)

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
        and (entry := _parse(fields)) is not None
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
