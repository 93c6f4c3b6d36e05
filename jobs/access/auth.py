"""API keys: created once and shown once, stored as SHA-256, scoped to a tenant and a role.

Keys carry 256 bits of randomness, so a plain SHA-256 (not a slow password
hash) is the right digest: lookups stay one indexed query.

The API imports this module to declare its routes, so the SQL layer is
imported inside the functions that use it (the Lambda cold start stays light).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from cachetools import TTLCache

from jobs.clock import utcnow
from jobs.errors import InvalidRequest

KEY_PREFIX = "cvk"
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CACHE_SECONDS = 30.0

if TYPE_CHECKING:
    from sqlmodel import Session

    from jobs.history.models import ApiKey


class Role(StrEnum):
    """What a key may do; the README's roles table says the same.

    member: its own tenant's jobs. admin: its own tenant's jobs, plus the administrative routes
    (metrics, RQ details). operator: every tenant's jobs, on every channel, and what admin has.
    """

    ADMIN = "admin"
    MEMBER = "member"
    OPERATOR = "operator"


def job_scope(role: str, tenant: str) -> str | None:
    """The one rule for by-id reads and control: which tenant's jobs a caller reaches.

    ``None`` means every tenant (operators only). Every channel (GET, list, record, result,
    events, long poll, WebSocket, pages, control, compat routes) asks this, so a role means
    the same thing on each.
    """
    return None if role == Role.OPERATOR else tenant


def may_reach(scope: str | None, job_tenant: str) -> bool:
    """Whether a caller with :func:`job_scope` ``scope`` may see and steer a job of ``job_tenant``."""
    return scope is None or scope == job_tenant


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, its tenant and its role."""

    key_id: str
    tenant: str
    role: Role
    # A digest of the key's stored hash: web sessions carry it, so the signing secret alone
    # cannot mint a session (the hash is in SQL only), and a replaced key's sessions die.
    binding: str = field(default="", compare=False, repr=False)

    @property
    def is_admin(self) -> bool:
        """Administrative routes (metrics, RQ details): admins and operators."""
        return self.role in (Role.ADMIN, Role.OPERATOR)

    @property
    def scope(self) -> str | None:
        """The tenant whose jobs this caller reaches by id, or None for every tenant."""
        return job_scope(self.role, self.tenant)


def session_binding(key_hash: str) -> str:
    """What a web session must carry for the key whose stored hash is ``key_hash``."""
    return hashlib.sha256(f"conveyor session binding|{key_hash}".encode()).hexdigest()[:32]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def validate_tenant(tenant: str) -> str:
    if not TENANT_PATTERN.match(tenant):
        raise InvalidRequest(
            f"Invalid tenant name {tenant!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return tenant


def create_key(session: Session, *, tenant: str, role: Role | str, name: str = "") -> tuple[ApiKey, str]:
    """Create and stage a key; returns the row and the plaintext key (never stored)."""
    from jobs.history.models import ApiKey

    validate_tenant(tenant)
    try:
        role = Role(role)
    except ValueError:
        raise InvalidRequest(f"Invalid role {role!r}: use 'member', 'admin' or 'operator'.") from None
    key_id = secrets.token_hex(6)
    plaintext = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        id=key_id,
        name=name or f"{tenant}-{role.value}",
        tenant=tenant,
        role=role.value,
        key_hash=hash_key(plaintext),
        created_at=utcnow(),
    )
    session.add(row)
    return row, plaintext


# One cache for both ways of naming a key: ("hash", digest) for holders of the key itself,
# ("id", key_id) for holders of its id (web sessions; None there caches "unknown or revoked").
# Entries live CACHE_SECONDS, so a revocation in another process lands within that time.
# TTLCache is not thread-safe (routes run in a thread pool): every access holds the lock.
_cache: TTLCache[tuple[str, str], Principal | None] = TTLCache(
    maxsize=20_000, ttl=CACHE_SECONDS, timer=time.monotonic
)
_cache_lock = threading.Lock()


_MISSING = object()


def _cache_get(entry: tuple[str, str]) -> tuple[Principal | None] | None:
    with _cache_lock:
        hit = _cache.get(entry, _MISSING)
    return None if hit is _MISSING else (hit,)  # type: ignore[return-value]


def _cache_put(entry: tuple[str, str], principal: Principal | None) -> None:
    with _cache_lock:
        _cache[entry] = principal


def cached_principal(key: str) -> Principal | None:
    """The principal for a key verified in the last 30 s, without touching SQL."""
    hit = _cache_get(("hash", hash_key(key)))
    return None if hit is None else hit[0]


def authenticate(key: str) -> Principal | None:
    """The principal for a presented key, or None. Verified keys are cached for 30 s,
    so revoking a key takes effect within that time."""
    principal = cached_principal(key)
    if principal is not None:
        return principal
    digest = hash_key(key)
    from sqlmodel import select

    from jobs.history.db import session_scope
    from jobs.history.models import ApiKey

    with session_scope() as session:
        row = session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
        if row is None or row.revoked_at is not None:
            return None
        principal = Principal(
            key_id=row.id, tenant=row.tenant, role=Role(row.role), binding=session_binding(row.key_hash)
        )
    _cache_put(("hash", digest), principal)
    return principal


def cached_active_key(key_id: str) -> tuple[Principal | None] | None:
    """:func:`active_key`'s cached answer (in a 1-tuple), or None when it must ask SQL."""
    return _cache_get(("id", key_id))


def active_key(key_id: str) -> Principal | None:
    """The principal of the key with this id, or None when it is unknown or revoked.

    For holders of a key's id rather than the key itself (the web UI's session
    cookie): the answer is cached for 30 s, like :func:`authenticate`'s, so a
    revocation reaches them within the same time.
    """
    hit = cached_active_key(key_id)
    if hit is not None:
        return hit[0]
    from jobs.history.db import session_scope
    from jobs.history.models import ApiKey

    with session_scope() as session:
        row = session.get(ApiKey, key_id)
        principal = None
        if row is not None and row.revoked_at is None:
            principal = Principal(
                key_id=row.id, tenant=row.tenant, role=Role(row.role), binding=session_binding(row.key_hash)
            )
    _cache_put(("id", key_id), principal)
    return principal


def revoke_key(session: Session, *, key_id: str) -> bool:
    from jobs.history.models import ApiKey

    row = session.get(ApiKey, key_id)
    if row is None:
        return False
    row.revoked_at = utcnow()
    session.add(row)
    clear_cache()
    return True


def revoked_among(key_ids: Collection[str]) -> set[str]:
    """Which of ``key_ids`` are revoked (or gone) now, asking SQL itself, never the caches.

    For the API's open streams, which re-check their keys every few seconds: one indexed
    query for all of a process's keys, however many streams each holds. The revoked keys are
    also dropped from this process's caches, so their next request is refused at once.
    """
    ids = sorted(set(key_ids))
    if not ids:
        return set()
    from sqlmodel import col, select

    from jobs.history.db import session_scope
    from jobs.history.models import ApiKey

    active: set[str] = set()
    with session_scope() as session:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = select(ApiKey.id).where(col(ApiKey.id).in_(chunk), col(ApiKey.revoked_at).is_(None))
            active.update(session.exec(query).all())
    revoked = set(ids) - active
    if revoked:
        with _cache_lock:
            for entry, principal in list(_cache.items()):
                if (entry[0] == "id" and entry[1] in revoked) or (
                    principal is not None and principal.key_id in revoked
                ):
                    _cache.pop(entry, None)
    return revoked


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
