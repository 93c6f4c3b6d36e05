"""Whether a submission may go in (issue 13): timeout caps, submit rate limits, the waiting quota.

`admit_submission` is called once, first thing, by `jobs.actions.submit.submit_job`, so every channel
(REST, the seeds' routes, the web form) is limited alike. In order, cheapest first:

1. the `timeout` asked for, under the tenant's ``max_timeout_seconds`` and the task's cap
   (422 naming the cap; nothing is counted against the rate);
2. the submit rate: a token bucket for the tenant and one for the calling key, taken together
   by one Lua script, so several API processes share them and a refusal takes from neither
   (429 with ``Retry-After`` and ``RateLimit-*`` headers);
3. the tenant's ``max_waiting`` jobs (queued, scheduled or deferred), counted in SQL (429
   naming the quota) when the last count could be near the quota (see `_surely_under_quota`).

A batch takes its ``n`` tokens and quota places at once with ``admit_submission(..., count=n)``,
then submits each job inside ``admitted_batch()``, where only the per-job caps are checked.

What each key used is counted in the Redis hash ``cv:limits:used`` (in the same script for the
rate), which `GET /metrics` reads. Redis and SQL outages fail open: the limits are skipped
(a submit cannot complete then anyway, and says so in its own words). Declared schedules
(owner ``cron``) are the operator's own: a refused firing would be lost, so they are not rate
limited or held to the quota.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.exceptions
import sqlalchemy as sa

from jobs.access.limits import Limits, defaults_for, limits_for, task_caps
from jobs.errors import InvalidRequest, TooManyRequests
from jobs.status import WAITING
from jobs.tasks import get_task

if TYPE_CHECKING:
    from redis import Redis
    from sqlmodel import Session

log = logging.getLogger(__name__)

USAGE_KEY = "cv:limits:used"
UNLIMITED_OWNERS = frozenset({"cron"})
NO_KEY = "-"
RECOUNT_SECONDS = 2.0

# KEYS: the usage hash, then one hash per bucket ({t: tokens, ts: seconds}).
# ARGV: cost, the usage field suffix ("tenant|key"), then per bucket its rate (tokens/s) and burst.
# Every bucket must hold ``cost`` tokens, or none is taken from. Returns
# {allowed, wait_ms, then per bucket: tokens left (milli), ms until full}.
_BUCKETS = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local cost = tonumber(ARGV[1])
local levels = {}
local wait = 0
for i = 2, #KEYS do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', KEYS[i], 't', 'ts')
  local level = tonumber(state[1])
  if level == nil then
    level = burst
  else
    level = math.min(burst, level + math.max(0, now - tonumber(state[2])) * rate)
  end
  levels[i] = level
  if level < cost then wait = math.max(wait, (cost - level) / rate) end
end
local allowed = wait == 0
local out = {allowed and 1 or 0, math.ceil(wait * 1000)}
for i = 2, #KEYS do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local level = levels[i]
  if allowed then
    level = level - cost
    redis.call('HSET', KEYS[i], 't', tostring(level), 'ts', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((burst - level) / rate * 1000) + 1000)
  end
  table.insert(out, math.floor(level * 1000))
  table.insert(out, math.ceil((burst - level) / rate * 1000))
end
if allowed then
  redis.call('HINCRBY', KEYS[1], 'submits|' .. ARGV[2], cost)
else
  redis.call('HINCRBY', KEYS[1], 'rate_limited|' .. ARGV[2], 1)
end
return out
"""

_batch_admitted: ContextVar[bool] = ContextVar("conveyor_batch_admitted", default=False)
# The headers of this context's last admitted submit, for the route to send with its 201.
_admitted_headers: ContextVar[dict[str, str] | None] = ContextVar("conveyor_rate_headers", default=None)


@dataclass(frozen=True)
class Bucket:
    """One token bucket: ``per_minute`` tokens a minute, holding at most ``burst``."""

    name: str  # "tenant" or "key": which limit a refusal names
    key: str
    per_minute: int
    burst: int


@dataclass(frozen=True)
class RateDecision:
    """The answer of the buckets, reported by the tightest one (its IETF `RateLimit-*` fields)."""

    allowed: bool
    retry_after: float
    bucket: str
    limit: int
    remaining: int
    reset: int

    def headers(self) -> dict[str, str]:
        """`RateLimit-Limit/-Remaining/-Reset` (draft-ietf-httpapi-ratelimit-headers, the
        three-field form) and, when refused, `Retry-After` (whole seconds, at least 1)."""
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return out


def buckets_for(limits: Limits, key_id: str | None) -> list[Bucket]:
    """The buckets a submit of ``key_id`` draws on (a rate of 0 means that one is not limited)."""
    buckets = []
    if limits.submits_per_minute:
        buckets.append(
            Bucket("tenant", f"cv:rate:t:{limits.tenant}", limits.submits_per_minute, limits.submit_burst)
        )
    if key_id and limits.key_submits_per_minute:
        buckets.append(
            Bucket("key", f"cv:rate:k:{key_id}", limits.key_submits_per_minute, limits.key_submit_burst)
        )
    return buckets


def take_submits(client: Redis, *, limits: Limits, key_id: str | None, n: int = 1) -> RateDecision | None:
    """Take ``n`` submits from the tenant's and the key's buckets at once, or from neither.

    None when no bucket applies. A batch larger than a bucket could ever hold is a 422 (no
    wait would help); a refusal is returned, not raised (see :func:`admit_submission`).
    """
    buckets = buckets_for(limits, key_id)
    too_big = [b for b in buckets if n > b.burst]
    if too_big:
        b = too_big[0]
        raise InvalidRequest(
            f"{n} jobs at once are more than the {b.name} submit burst of {b.burst}: "
            "send them in smaller batches.",
            limit=f"{'key_' if b.name == 'key' else ''}submit_burst",
        )
    args: list[str | int | float] = [n, f"{limits.tenant}|{key_id or NO_KEY}"]
    for b in buckets:
        args += [b.per_minute / 60.0, b.burst]
    reply = client.register_script(_BUCKETS)(keys=[USAGE_KEY, *(b.key for b in buckets)], args=args)
    if not buckets:
        return None
    allowed, wait_ms = bool(reply[0]), int(reply[1])
    states = [(int(reply[2 + 2 * i]) / 1000, int(reply[3 + 2 * i])) for i in range(len(buckets))]
    # The tightest bucket speaks for all: the one with the fewest submits left.
    index = min(range(len(buckets)), key=lambda i: states[i][0])
    if not allowed:
        index = max(range(len(buckets)), key=lambda i: (n - states[i][0]) / buckets[i].per_minute)
    tokens, full_ms = states[index]
    return RateDecision(
        allowed=allowed,
        retry_after=wait_ms / 1000,
        bucket=buckets[index].name,
        limit=buckets[index].burst,
        remaining=max(0, math.floor(tokens)),
        reset=math.ceil(full_ms / 1000),
    )


def count_refusal(client: Redis, *, tenant: str, key_id: str | None, limit: str) -> None:
    with contextlib.suppress(redis.exceptions.RedisError):  # the refusal stands without its count
        client.hincrby(USAGE_KEY, f"refused|{tenant}|{key_id or NO_KEY}|{limit}", 1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def count_waiting(session: Session, *, tenant: str) -> int:
    """Jobs of ``tenant`` waiting now (queued, scheduled, deferred): one indexed count in SQL."""
    import sqlalchemy as sa

    from jobs.history.models import Job

    query = sa.select(sa.func.count()).where(
        Job.tenant == tenant,  # type: ignore[arg-type]
        Job.status.in_([s.value for s in WAITING]),  # type: ignore[attr-defined]
    )
    return int(session.execute(query).scalar_one())


def admit_submission(
    *,
    session: Session,
    client: Redis,
    tenant: str,
    owner: str | None,
    task: str,
    timeout: int | None,
    count: int = 1,
) -> None:
    """Refuse a submission over a limit (422 for a cap, 429 for a rate or a quota), else return.

    ``count`` jobs are admitted at once (a batch); inside :func:`admitted_batch` only the
    per-job caps are checked, the batch having taken its rate and quota already.
    """
    try:
        limits = limits_for(tenant, session=session, client=client)
    except sa.exc.SQLAlchemyError as exc:
        session.rollback()
        log.warning("limits: SQL unavailable, the defaults apply to %s: %s", tenant, _first_line(exc))
        limits = defaults_for(tenant)
    _check_timeout(client, limits, task=task, timeout=timeout, key_id=owner)
    if _batch_admitted.get() or owner in UNLIMITED_OWNERS:
        return
    try:
        decision = take_submits(client, limits=limits, key_id=owner, n=count)
    except redis.exceptions.RedisError as exc:
        log.warning("limits: Redis unavailable, submit rate not limited: %s", _first_line(exc))
        decision = None
    if decision is not None and not decision.allowed:
        per = "this API key" if decision.bucket == "key" else f"tenant {tenant!r}"
        name = "key_submits_per_minute" if decision.bucket == "key" else "submits_per_minute"
        rate = limits.key_submits_per_minute if decision.bucket == "key" else limits.submits_per_minute
        raise TooManyRequests(
            f"Too many submissions: {per} is limited to {rate} a minute ({name}, bursts of "
            f"{decision.limit}). Retry after {decision.headers()['Retry-After']} s.",
            headers=decision.headers(),
            limit=name,
        )
    _check_waiting(session, client, limits, key_id=owner, count=count)
    if decision is not None:
        _admitted_headers.set(decision.headers())


def rate_headers() -> dict[str, str]:
    """The `RateLimit-*` headers of the last submit admitted in this context ({} if none was)."""
    return dict(_admitted_headers.get() or {})


def _check_timeout(
    client: Redis, limits: Limits, *, task: str, timeout: int | None, key_id: str | None
) -> None:
    """A `timeout` asked for over the tenant's or the task's cap is a 422 naming the cap."""
    if timeout is None:
        return
    caps = task_caps(get_task(task))
    for cap, name, whose in (
        (limits.max_timeout_seconds, "max_timeout_seconds", f"tenant {limits.tenant!r}"),
        (caps.max_timeout_seconds, "max_timeout_seconds", f"task {task!r}"),
    ):
        if cap and timeout > cap:
            count_refusal(client, tenant=limits.tenant, key_id=key_id, limit=name)
            raise InvalidRequest(
                f"timeout {timeout} s is over {whose}'s cap of {cap} s ({name}). Ask for at most "
                f"{cap} s, or have an operator raise the cap.",
                limit=name,
                cap=cap,
            )


# tenant -> (monotonic time, jobs waiting then), this process's last count of each tenant's.
_waiting_seen: dict[str, tuple[float, int]] = {}
_waiting_lock = threading.Lock()


def _surely_under_quota(limits: Limits, count: int) -> bool:
    """Whether ``count`` more jobs fit under ``max_waiting`` without counting again in SQL.

    Since this process last counted, all processes together can have admitted at most what the
    tenant's bucket held then and refilled since (its burst, plus its rate times the time gone),
    so while the last count plus that bound plus ``count`` fits, the quota cannot be exceeded.
    A tenant far from its quota is counted every RECOUNT_SECONDS, one near it on every submit.
    """
    if not limits.submits_per_minute:
        return False  # no bucket bounds what other processes admitted meanwhile
    with _waiting_lock:
        seen = _waiting_seen.get(limits.tenant)
    if seen is None:
        return False
    age = time.monotonic() - seen[0]
    if age > RECOUNT_SECONDS:
        return False
    most_since = limits.submit_burst + limits.submits_per_minute / 60 * age
    return seen[1] + most_since + count <= limits.max_waiting


def _check_waiting(
    session: Session, client: Redis, limits: Limits, *, key_id: str | None, count: int
) -> None:
    if not limits.max_waiting or _surely_under_quota(limits, count):
        return
    try:
        waiting = count_waiting(session, tenant=limits.tenant)
    except sa.exc.SQLAlchemyError as exc:
        session.rollback()
        log.warning("limits: SQL unavailable, max_waiting not checked: %s", _first_line(exc))
        return
    with _waiting_lock:
        if len(_waiting_seen) >= 10_000:
            _waiting_seen.clear()
        _waiting_seen[limits.tenant] = (time.monotonic(), waiting)
    if waiting + count <= limits.max_waiting:
        return
    count_refusal(client, tenant=limits.tenant, key_id=key_id, limit="max_waiting")
    raise TooManyRequests(
        f"Quota max_waiting reached: tenant {limits.tenant!r} has {waiting} jobs waiting (queued, "
        f"scheduled or deferred) and may have at most {limits.max_waiting}. Submit again once some "
        "have started, or cancel some.",
        quota="max_waiting",
        limit=limits.max_waiting,
        waiting=waiting,
    )


@contextmanager
def admitted_batch() -> Iterator[None]:
    """Submits made inside this were admitted as a batch: only their per-job caps are checked."""
    token = _batch_admitted.set(True)
    try:
        yield
    finally:
        _batch_admitted.reset(token)


@dataclass
class Usage:
    """What each key used, from ``cv:limits:used`` (key ``-``: submits made without a key)."""

    submits: dict[tuple[str, str], int]  # (tenant, key) -> jobs admitted past the rate limit
    rate_limited: dict[tuple[str, str], int]  # (tenant, key) -> submits refused 429 by the rate
    refused: dict[tuple[str, str, str], int]  # (tenant, key, limit) -> refused for a quota or cap


def read_usage(client: Redis) -> Usage:
    usage = Usage(submits={}, rate_limited={}, refused={})
    for raw_name, raw_value in client.hgetall(USAGE_KEY).items():
        name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        parts, value = name.split("|"), int(raw_value)
        if parts[0] == "submits" and len(parts) == 3:
            usage.submits[(parts[1], parts[2])] = value
        elif parts[0] == "rate_limited" and len(parts) == 3:
            usage.rate_limited[(parts[1], parts[2])] = value
        elif parts[0] == "refused" and len(parts) == 4:
            usage.refused[(parts[1], parts[2], parts[3])] = value
    return usage
