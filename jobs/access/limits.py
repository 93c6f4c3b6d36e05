"""Each tenant's limits (issue 13): the settings' defaults, overridden per tenant in SQL.

A tenant's row in `tenant_limits` holds only what an operator set (a null column means the
setting's default applies), so changing a default in the settings reaches every tenant that
did not override it. Reads go through two brief caches: this process's (for
``CONVEYOR_LIMITS_CACHE_SECONDS``) and Redis's (``cv:limits:<tenant>``, the row's overrides
as JSON, for a minute), so a submit costs no SQL read for its limits. A change is written to
SQL, then to Redis, so every API process sees it within the process cache's time.

The API imports this module to declare its routes, so Redis's and SQL's clients are
imported inside the functions that use them (the Lambda cold start). `jobs.access.admission`
enforces these at submit time; ``max_running`` (and a task's) is stored and served here for
the worker's scheduler to enforce.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from jobs.clock import isoformat, utcnow
from jobs.errors import InvalidRequest
from jobs.settings import TASK_CAPS, get_settings

if TYPE_CHECKING:
    from redis import Redis
    from sqlmodel import Session

    from jobs.tasks import TaskSpec

REDIS_TTL = 60
MAX_CACHED_TENANTS = 10_000

# Each limit a tenant has: the setting that is its default, and the values it accepts (0: none).
SETTING_OF = {
    "submits_per_minute": "tenant_submits_per_minute",
    "submit_burst": "tenant_submit_burst",
    "key_submits_per_minute": "key_submits_per_minute",
    "key_submit_burst": "key_submit_burst",
    "max_waiting": "tenant_max_waiting",
    "max_running": "tenant_max_running",
    "max_timeout_seconds": "max_timeout_seconds",
}
BOUNDS = {
    "submits_per_minute": (0, 1_000_000),
    "submit_burst": (1, 1_000_000),
    "key_submits_per_minute": (0, 1_000_000),
    "key_submit_burst": (1, 1_000_000),
    "max_waiting": (0, 100_000_000),
    "max_running": (0, 1_000_000),
    "max_timeout_seconds": (1, 7 * 86400),  # the most a submission's `timeout` may be at all
}
LIMIT_NAMES = tuple(SETTING_OF)


def redis_key(tenant: str) -> str:
    return f"cv:limits:{tenant}"


@dataclass(frozen=True)
class Limits:
    """A tenant's limits in force: its overrides over the settings' defaults (0 means no limit)."""

    tenant: str
    submits_per_minute: int
    submit_burst: int
    key_submits_per_minute: int
    key_submit_burst: int
    max_waiting: int
    max_running: int
    max_timeout_seconds: int
    overridden: tuple[str, ...] = ()
    updated_at: str | None = None
    updated_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The API's shape: one field per limit, which of them the tenant overrides, the defaults."""
        return {**asdict(self), "overridden": list(self.overridden), "defaults": default_limits()}


def defaults_for(tenant: str) -> Limits:
    """The settings' limits alone (when SQL cannot say what the tenant's are)."""
    return _effective(tenant, {})


def default_limits() -> dict[str, int]:
    settings = get_settings()
    return {name: int(getattr(settings, setting)) for name, setting in SETTING_OF.items()}


def _effective(tenant: str, stored: dict[str, Any]) -> Limits:
    values = default_limits()
    overrides = {name: stored[name] for name in LIMIT_NAMES if stored.get(name) is not None}
    values.update(overrides)
    return Limits(
        tenant=tenant,
        overridden=tuple(overrides),
        updated_at=stored.get("updated_at"),
        updated_by=stored.get("updated_by"),
        **values,
    )


def validate_changes(changes: dict[str, Any]) -> dict[str, int | None]:
    """``changes`` checked against each limit's bounds (None: back to the default); 422 otherwise."""
    if not changes:
        raise InvalidRequest(f"Name at least one limit to change: {', '.join(LIMIT_NAMES)}.")
    unknown = sorted(set(changes) - set(LIMIT_NAMES))
    if unknown:
        raise InvalidRequest(f"Unknown limits {unknown}: use {', '.join(LIMIT_NAMES)}.", unknown=unknown)
    for name, value in changes.items():
        low, high = BOUNDS[name]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(
                f"{name} must be a whole number from {low} to {high}, or null for the default."
            )
        if not low <= value <= high:
            none = " (0: no limit)" if low == 0 else ""
            raise InvalidRequest(f"{name} must be from {low} to {high}{none}; got {value}.", limit=name)
    return dict(changes)


# This process's cache: tenant -> (monotonic expiry, limits). Routes run in a thread pool.
_cache: dict[str, tuple[float, Limits]] = {}
_cache_lock = threading.Lock()


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def limits_for(tenant: str, *, session: Session, client: Redis) -> Limits:
    """The limits in force for ``tenant``: this process's cache, else Redis's, else SQL.

    Redis is only a cache here: unreachable or refusing writes, SQL answers.
    """
    import redis.exceptions

    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(tenant)
    if hit is not None and hit[0] > now:
        return hit[1]
    try:
        raw = client.get(redis_key(tenant))
    except redis.exceptions.RedisError:
        raw, redis_up = None, False
    else:
        redis_up = True
    stored = _decoded(raw)
    if stored is None:
        stored = _stored(session, tenant)
        if redis_up:
            with contextlib.suppress(redis.exceptions.RedisError):  # read-only, out of memory...
                client.set(redis_key(tenant), json.dumps(stored), ex=REDIS_TTL)
    limits = _effective(tenant, stored)
    _remember(limits, now)
    return limits


def _decoded(raw: bytes | str | None) -> dict[str, Any] | None:
    """Redis's copy of a tenant's overrides, or None when missing or not ours (then SQL answers)."""
    if raw is None:
        return None
    try:
        stored = json.loads(raw)
    except ValueError:
        return None
    return stored if isinstance(stored, dict) else None


def stored_limits(tenant: str, *, session: Session) -> Limits:
    """The limits in force for ``tenant`` as SQL has them now (no cache: for reading them back)."""
    return _effective(tenant, _stored(session, tenant))


def _remember(limits: Limits, now: float) -> None:
    ttl = get_settings().limits_cache_seconds
    if ttl <= 0:
        return
    with _cache_lock:
        if len(_cache) >= MAX_CACHED_TENANTS:
            _cache.clear()
        _cache[limits.tenant] = (now + ttl, limits)


def _stored(session: Session, tenant: str) -> dict[str, Any]:
    """The tenant's row as JSON-ready overrides ({} when it has none)."""
    from jobs.history.models import TenantLimits

    row = session.get(TenantLimits, tenant)
    if row is None:
        return {}
    stored: dict[str, Any] = {name: getattr(row, name) for name in LIMIT_NAMES}
    stored["updated_at"] = isoformat(row.updated_at)
    stored["updated_by"] = row.updated_by
    return stored


def set_limits(
    tenant: str, changes: dict[str, Any], *, session: Session, client: Redis, by: str | None
) -> Limits:
    """Change ``tenant``'s limits (None puts one back to its default); the limits now in force.

    SQL first (the source of truth), then Redis's copy is replaced, so other API processes see
    the change once their own brief cache expires.
    """
    from jobs.access.auth import validate_tenant
    from jobs.history.models import TenantLimits

    validate_tenant(tenant)
    checked = validate_changes(changes)
    row = session.get(TenantLimits, tenant) or TenantLimits(tenant=tenant, updated_at=utcnow())
    for name, value in checked.items():
        setattr(row, name, value)
    row.updated_at = utcnow()
    row.updated_by = by
    session.add(row)
    session.commit()
    stored = _stored(session, tenant)
    client.set(redis_key(tenant), json.dumps(stored), ex=REDIS_TTL)
    with _cache_lock:
        _cache.pop(tenant, None)
    return _effective(tenant, stored)


@dataclass(frozen=True)
class TaskCaps:
    """A task's caps in force (0: none): what `@task` declares, under CONVEYOR_TASK_LIMITS."""

    task: str
    max_timeout_seconds: int = 0
    max_running: int = 0


def task_caps(spec: TaskSpec) -> TaskCaps:
    configured = get_settings().task_limits.get(spec.name, {})
    declared = {"max_timeout_seconds": spec.max_timeout or 0, "max_running": spec.max_running or 0}
    values = {name: configured.get(name, declared[name]) for name in TASK_CAPS}
    return TaskCaps(task=spec.name, **values)
