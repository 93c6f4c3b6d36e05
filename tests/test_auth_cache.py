"""The 30 s cache of verified keys (jobs.access.auth): one cache for both ways of naming a key.

A key revoked in SQL by another process stays trusted here until its entries age out, unless
an open stream's re-check (`revoked_among`) finds it first and drops every entry naming it.
"""

from __future__ import annotations

from tests.conftest import Tenant


def _revoke_in_sql_only(key_id: str) -> None:
    """Revoke as another process would: the row changes, this process's cache does not."""
    from jobs.clock import utcnow
    from jobs.history.db import session_scope
    from jobs.history.models import ApiKey

    with session_scope() as session:
        row = session.get(ApiKey, key_id)
        assert row is not None
        row.revoked_at = utcnow()
        session.add(row)


def test_revoked_among_drops_the_key_from_both_lookups(tenant: Tenant):
    from jobs.access import auth

    assert auth.authenticate(tenant.key) is not None
    assert auth.active_key(tenant.key_id) is not None
    _revoke_in_sql_only(tenant.key_id)
    # Within the TTL the cache answers, without SQL: that is what the cache is for.
    assert auth.cached_principal(tenant.key) is not None
    assert auth.cached_active_key(tenant.key_id) not in (None, (None,))
    assert auth.revoked_among([tenant.key_id]) == {tenant.key_id}
    assert auth.cached_principal(tenant.key) is None
    assert auth.cached_active_key(tenant.key_id) is None
    assert auth.authenticate(tenant.key) is None and auth.active_key(tenant.key_id) is None
