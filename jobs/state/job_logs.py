"""A job's log in Redis: what its task logged, one list per job, appended in batches.

The worker buffers a job's lines in memory (worker/job_log.py) and appends them
with :func:`append_lines`, one script call per job per flush (every ~100 ms and
at the attempt's end): the script enforces the per-job caps on lines and bytes,
across attempts and processes, and writes "log truncated" once when they are
reached. A line's ``seq`` is its position in the list (1-based), the cursor of
the API's pages and the ``id:`` of its stream.

Every append also marks the job in ``DIRTY`` (a sorted set by time); the
recorder process copies the lines SQL has not seen yet into ``job_logs``
(jobs/history/log_records.py) and clears the mark once SQL holds them all, so a job's
log outlives its live state. The list lives ``snapshot_ttl`` after its last
append, as the job's hash does after its end.

This module is the only code that knows these keys and their encodings.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jobs.settings import get_settings

if TYPE_CHECKING:
    from redis import Redis
    from redis.commands.core import Script

    from jobs.state.pipelined_redis import PipelinedRedis

LINES_PREFIX = "cv:log:"
META_PREFIX = "cv:logmeta:"
DIRTY = "cv:logs:dirty"
TRUNCATED = "log truncated: this job reached its log cap ({lines} lines or {bytes} bytes)"


def lines_key(job_id: str) -> str:
    return LINES_PREFIX + job_id


def meta_key(job_id: str) -> str:
    return META_PREFIX + job_id


@dataclass(frozen=True)
class LogLine:
    """One line of a job's log, as every channel serves it."""

    seq: int
    at: str  # ISO 8601 UTC
    level: str
    logger: str
    message: str
    attempt: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "level": self.level,
            "logger": self.logger,
            "message": self.message,
            "attempt": self.attempt,
        }


def encode_line(*, at: datetime, level: str, logger: str, message: str, attempt: int) -> str:
    """A line as stored in the list (its seq is its position, not stored)."""
    iso = at.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return json.dumps([iso, level, logger, message, attempt], separators=(",", ":"), ensure_ascii=False)


def decode_line(seq: int, raw: bytes | str) -> LogLine:
    at, level, logger, message, attempt = json.loads(raw)
    return LogLine(seq=seq, at=at, level=level, logger=logger, message=message, attempt=int(attempt))


# KEYS: lines, meta, dirty. ARGV: job_id, max_lines, max_bytes, ttl, now, note, lines...
# The note takes the cap's last place, so the list never holds more than max_lines.
APPEND_LUA = """
local lines, meta, dirty = KEYS[1], KEYS[2], KEYS[3]
local max_lines, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local n = redis.call('LLEN', lines)
if redis.call('HGET', meta, 'truncated') then return n end
local size = tonumber(redis.call('HGET', meta, 'bytes') or '0')
local batch = {}
for i = 7, #ARGV do
  local line = ARGV[i]
  if n + #batch + 1 >= max_lines or size + #line > max_bytes then
    table.insert(batch, ARGV[6])
    redis.call('HSET', meta, 'truncated', '1')
    break
  end
  table.insert(batch, line)
  size = size + #line
end
if #batch > 0 then
  for i = 1, #batch, 1000 do
    redis.call('RPUSH', lines, unpack(batch, i, math.min(i + 999, #batch)))
  end
end
redis.call('HSET', meta, 'bytes', size)
redis.call('EXPIRE', lines, ttl)
redis.call('EXPIRE', meta, ttl)
redis.call('ZADD', dirty, ARGV[5], ARGV[1])
return n + #batch
"""

# KEYS: lines, meta, dirty. ARGV: job_id, copied. Clears the mark only if nothing came meanwhile.
ACK_LUA = """
redis.call('HSET', KEYS[2], 'copied', ARGV[2])
if redis.call('LLEN', KEYS[1]) <= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 1
end
return 0
"""


@lru_cache(maxsize=8)
def _script(client: Redis, source: str) -> Script:
    return client.register_script(source)


def append_lines(client: Redis, batches: dict[str, list[str]], *, now: float) -> None:
    """Append each job's encoded lines to its log, all in one pipeline (one round trip)."""
    if not batches:
        return
    settings = get_settings()
    note = TRUNCATED.format(lines=settings.job_log_max_lines, bytes=settings.job_log_max_bytes)
    script = _script(client, APPEND_LUA)
    pipe = client.pipeline(transaction=False)
    for job_id, encoded in batches.items():
        note_line = json.loads(encoded[-1])
        note_line[1], note_line[2], note_line[3] = "WARNING", "conveyor.logs", note
        script(
            keys=[lines_key(job_id), meta_key(job_id), DIRTY],
            args=[
                job_id,
                settings.job_log_max_lines,
                settings.job_log_max_bytes,
                settings.snapshot_ttl,
                now,
                json.dumps(note_line, separators=(",", ":")),
                *encoded,
            ],
            client=pipe,
        )
    pipe.execute()


def read_live(client: Redis, job_id: str, *, after: int, limit: int) -> tuple[list[LogLine], bool]:
    """Lines past ``after`` from Redis, and whether Redis holds this job's log at all."""
    pipe = client.pipeline(transaction=False)
    pipe.exists(lines_key(job_id))
    pipe.lrange(lines_key(job_id), after, after + limit - 1)
    exists, raw = pipe.execute()
    return [decode_line(after + i + 1, item) for i, item in enumerate(raw)], bool(exists)


async def read_live_async(
    reader: PipelinedRedis, job_id: str, *, after: int, limit: int
) -> tuple[list[LogLine], bool]:
    """:func:`read_live` through the API's pipelined connection (both commands ride together)."""
    key = lines_key(job_id)
    exists, raw = await asyncio.gather(
        reader.command("EXISTS", key), reader.command("LRANGE", key, str(after), str(after + limit - 1))
    )
    return [decode_line(after + i + 1, item) for i, item in enumerate(raw or [])], bool(exists)


def dirty_jobs(client: Redis, *, limit: int = 100) -> list[str]:
    """Jobs whose log has lines SQL may not hold yet, oldest mark first."""
    return [item.decode() for item in client.zrange(DIRTY, 0, limit - 1)]


def copied_upto(client: Redis, job_id: str) -> int:
    """How many of the job's lines SQL is known to hold."""
    raw = client.hget(meta_key(job_id), "copied")
    return int(raw) if raw else 0


def ack_copied(client: Redis, job_id: str, copied: int) -> bool:
    """Note that SQL holds the first ``copied`` lines; True when the job's mark was cleared."""
    return bool(
        _script(client, ACK_LUA)(keys=[lines_key(job_id), meta_key(job_id), DIRTY], args=[job_id, copied])
    )


def forget(client: Redis, job_ids: list[str]) -> None:
    """Drop the live logs of these jobs (retention)."""
    if job_ids:
        keys = [key for job_id in job_ids for key in (lines_key(job_id), meta_key(job_id))]
        client.delete(*keys)
        client.zrem(DIRTY, *job_ids)
