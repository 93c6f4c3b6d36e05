"""Journal entries that SQL refused, kept aside so that every other entry flows on.

The recorder applies the journal in batches; when a batch fails for a reason
other than the database being unreachable, it applies the entries one by one,
and an entry that still fails is moved here: its raw fields (exactly as the
journal held them) plus why it failed, when, and which job and tenant it
belongs to. It is acknowledged in the journal, so the consumer group moves on.

Kept in Redis, not SQL, on purpose: the entry is one that SQL refused (a value
it cannot store, a constraint it breaks), so SQL is the one place it is known
not to fit, while Redis stores any bytes; and it keeps the journal's own
durability, no less. The stream is capped at `journal_set_aside_max` entries
(the oldest go first) so a flood of bad entries cannot fill Redis; the
lifetime count is a counter in the metrics hash (`set_aside`), exposed as
`conveyor_journal_set_aside_total`, and the number held as a gauge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from jobs.clock import parse_iso

if TYPE_CHECKING:
    from redis import Redis

SET_ASIDE = "cv:journal:set-aside"
SET_ASIDE_COUNTER = "set_aside"  # a field of jobs.reporting.metrics.METRICS_KEY
MAX_REASON = 500

# Fields the recorder adds to the entry's own (`event`, `doc`, `data`).
META_FIELDS = ("journal_id", "job_id", "tenant", "reason", "set_aside_at")


@dataclass(frozen=True)
class SetAside:
    """One entry held aside: where it was in the journal, whose it is, and why SQL refused it."""

    id: str
    journal_id: str
    job_id: str | None
    tenant: str | None
    event: str | None
    reason: str
    set_aside_at: datetime | None
    fields: dict[str, str]  # the entry's own fields, as text (undecodable bytes replaced)


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def job_id_of(fields: dict[bytes, bytes]) -> str | None:
    """The job id of a raw journal entry, if its document can be read that far."""
    try:
        doc = json.loads(fields.get(b"doc") or b"")
        return str(doc["job_id"]) if isinstance(doc, dict) and doc.get("job_id") else None
    except (ValueError, TypeError):
        return None


def _decode(msg_id: bytes | str, raw: dict[Any, Any]) -> SetAside:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    own = {k: v for k, v in fields.items() if k not in META_FIELDS}
    return SetAside(
        id=_text(msg_id),
        journal_id=fields.get("journal_id", ""),
        job_id=fields.get("job_id") or None,
        tenant=fields.get("tenant") or None,
        event=own.get("event") or None,
        reason=fields.get("reason", ""),
        set_aside_at=parse_iso(fields.get("set_aside_at")),
        fields=own,
    )


def held(client: Redis) -> int:
    """How many entries are held aside now."""
    return int(client.xlen(SET_ASIDE))


def latest(client: Redis) -> SetAside | None:
    """The entry set aside last, or None."""
    reply = client.xrevrange(SET_ASIDE, count=1)
    return _decode(*reply[0]) if reply else None


def listing(client: Redis, *, tenant: str | None, limit: int) -> list[SetAside]:
    """Entries held aside, newest first; ``tenant`` narrows them to one tenant's jobs (None: all).

    The stream is bounded (`journal_set_aside_max`), so a tenant filter reads it whole at most.
    """
    if tenant is None:
        return [_decode(i, f) for i, f in client.xrevrange(SET_ASIDE, count=limit)]
    out: list[SetAside] = []
    for msg_id, raw in client.xrevrange(SET_ASIDE):
        item = _decode(msg_id, raw)
        if item.tenant == tenant:
            out.append(item)
            if len(out) >= limit:
                break
    return out


def replay(client: Redis) -> int:
    """Put every entry held aside back into the journal, as it was; returns how many.

    For after the cause is fixed (a migration, a constraint relaxed): the recorder applies
    them like any entry (seq-guarded, so an entry older than the row changes nothing), and
    one SQL still refuses is set aside again. Each move is one transaction: none is lost or doubled.
    """
    from jobs.state.live import JOURNAL

    moved = 0
    while batch := client.xrange(SET_ASIDE, count=100):
        with client.pipeline(transaction=True) as pipe:
            for msg_id, raw in batch:
                own = {k: v for k, v in raw.items() if _text(k) not in META_FIELDS}
                pipe.xadd(JOURNAL, own)
                pipe.xdel(SET_ASIDE, msg_id)
            pipe.execute()
        moved += len(batch)
    return moved
