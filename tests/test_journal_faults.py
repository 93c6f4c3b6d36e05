"""History never stalls: values SQL cannot store are made storable at the source, and an entry
that still cannot be applied is set aside while every other entry flows on."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from jobs.history.db import session_scope
from jobs.history.models import Job, JobEvent, JobResult
from jobs.history.recorder import Recorder
from jobs.history.set_aside import SET_ASIDE, listing
from jobs.reporting.metrics import read_counters
from jobs.state.lifecycle import record
from jobs.state.live import JOURNAL, job_key
from jobs.status import JobStatus
from jobs.storable import REPLACEMENT, storable, storable_json
from tests.conftest import Backend, Tenant, make_tenant, seed_job
from tests.services import wait_until
from tests.test_jobs_e2e import sql_events, submit, wait_sql_status, wait_status

S = JobStatus
R = REPLACEMENT


def _row(job_id: str) -> Job | None:
    with session_scope() as session:
        return session.get(Job, job_id)


def _wait_row(job_id: str, status: str) -> Job:
    return wait_until(
        lambda: (row := _row(job_id)) is not None and row.status == status and row,
        timeout=10,
        message=f"job {job_id} to be {status} in SQL",
    )


def test_storable_replaces_nul_in_strings_and_keys_only_when_present():
    assert storable({"a\x00": ["x\x00y", 1, None, {"k": "\x00"}]}) == {f"a{R}": [f"x{R}y", 1, None, {"k": R}]}
    assert storable_json({"a": "b"}) == '{"a": "b"}'
    # Text that merely spells the escape is kept as it is.
    assert storable_json({"a": "\\u0000"}) == '{"a": "\\\\u0000"}'


def test_nul_in_result_error_and_message_is_stored_as_replacement(env: Backend, redis_client: Any):
    """On PostgreSQL a NUL used to fail the whole batch, forever; now both databases store U+FFFD."""
    finished, failed = seed_job(), seed_job()
    record(finished, S.STARTED, event="started", patch={"message": "half\x00way"})
    record(
        finished, S.FINISHED, event="finished", patch={"result": {"k\x00": "v\x00"}, "message": "done\x00"}
    )
    record(failed, S.STARTED, event="started")
    record(
        failed,
        S.FAILED,
        event="failed",
        patch={"error": {"type": "Oops\x00", "detail": "bad \x00 byte"}},
        data={"traceback": "line\x00"},
    )
    Recorder(redis_client, consumer="test-nul").drain()
    row = _wait_row(finished, "finished")
    assert (row.result, row.message) == ({f"k{R}": f"v{R}"}, f"done{R}")
    row = _wait_row(failed, "failed")
    assert (row.error_type, row.error_detail) == (f"Oops{R}", f"bad {R} byte")
    with session_scope() as session:
        events = session.exec(select(JobEvent).where(JobEvent.job_id == failed)).all()
        assert any(e.data and e.data.get("traceback") == f"line{R}" for e in events)


def test_a_task_with_nul_output_ends_finished_or_failed_in_sql(api: TestClient, worker: Any):
    ok = submit(api, "nul_bytes", {})["job_id"]
    bad = submit(api, "nul_bytes", {"fail": True})["job_id"]
    assert wait_status(api, ok, {"finished"})["result"] == {"bytes": f"ab{R}cd", f"key{R}": [R]}
    row = wait_sql_status(ok, "finished")
    assert row.result == {"bytes": f"ab{R}cd", f"key{R}": [R]}
    assert f"read{R}half" in [e.message for e in sql_events(ok)]
    row = wait_sql_status(bad, "failed")
    assert row.error_detail == f"libfoo: bad byte {R} at 7"


def test_a_large_result_with_nul_is_stored_by_reference(env: Backend, redis_client: Any):
    from jobs.state.results import result_patch

    job_id = seed_job()
    started = record(job_id, S.STARTED, event="started")
    attempt = started.snapshot.attempt if started.snapshot else 1
    fields = result_patch(job_id, attempt, {"blob": "\x00" * 100_000}, redis_client)
    assert fields["result_ref"] is not None
    record(job_id, S.FINISHED, event="finished", patch=fields)
    Recorder(redis_client, consumer="test-nul-blob").drain()
    _wait_row(job_id, "finished")

    def stored() -> JobResult | None:
        with session_scope() as session:
            return session.get(JobResult, job_id)

    body = wait_until(stored, timeout=10, message="the result to reach SQL").body
    assert "\\u0000" not in body and R in body


# --- an entry SQL refuses is set aside; the rest flows on --------------------------------------


@pytest.fixture
def clean_set_aside(redis_client: Any) -> Iterator[None]:
    """Entries set aside make the health verdict degraded: leave none behind for later tests."""
    redis_client.delete(SET_ASIDE)
    yield
    redis_client.delete(SET_ASIDE)


def _raw_entry(client: Any, job_id: str, **changes: Any) -> str:
    """Journal a hand-made `finished` entry for ``job_id``, bypassing the live store (and its sanitiser)."""
    doc = json.loads(client.hget(job_key(job_id), "_doc"))
    doc.update({"status": "finished", "seq": doc["seq"] + 1, **changes})
    body = json.dumps(doc).replace("@NUL@", "\\u0000")
    return client.xadd(JOURNAL, {"event": "finished", "doc": body, "data": ""}).decode()


def _set_aside_total(client: Any) -> int:
    return read_counters(client).set_aside


def test_an_entry_sql_refuses_is_set_aside_and_the_rest_lands(
    env: Backend, redis_client: Any, clean_set_aside: None, tenant: Tenant
):
    before = _set_aside_total(redis_client)
    first, refused, nul, after = (seed_job(tenant=tenant.name) for _ in range(4))
    record(first, S.STARTED, event="started")
    # NOT NULL violated on both databases: an update with no updated_at.
    bad_id = _raw_entry(redis_client, refused, updated_at=None)
    # A NUL that PostgreSQL cannot store in JSONB (SQLite can: there it simply lands).
    nul_id = _raw_entry(redis_client, nul, message="nul @NUL@ here", result={"v": "@NUL@"})
    record(after, S.STARTED, event="started")
    record(after, S.FINISHED, event="finished", patch={"result": 1})

    Recorder(redis_client, consumer="test-set-aside").drain()  # one batch holds them all
    _wait_row(first, "started")
    assert _wait_row(after, "finished").result == 1
    expected = {bad_id} | ({nul_id} if env.name == "postgres" else set())
    if env.name == "sqlite":
        assert _wait_row(nul, "finished").message == "nul \x00 here"

    def held() -> list[Any]:
        items = listing(redis_client, tenant=None, limit=100)
        return items if {i.journal_id for i in items} == expected else []

    items = {i.journal_id: i for i in wait_until(held, timeout=10, message="the bad entries set aside")}
    assert _row(refused) is not None and _row(refused).status == "queued"  # type: ignore[union-attr]
    assert items[bad_id].job_id == refused and items[bad_id].tenant == tenant.name
    assert items[bad_id].reason.startswith("IntegrityError"), items[bad_id].reason
    assert json.loads(items[bad_id].fields["doc"])["job_id"] == refused
    if env.name == "postgres":
        assert items[nul_id].reason.startswith(("DataError", "StatementError")), items[nul_id].reason
    assert redis_client.xlen(JOURNAL) == 0 or wait_until(
        lambda: redis_client.xlen(JOURNAL) == 0, timeout=10, message="the journal to empty"
    )
    assert _set_aside_total(redis_client) - before == len(expected)

    # A later batch flows as usual.
    later = seed_job(tenant=tenant.name)
    record(later, S.STARTED, event="started")
    Recorder(redis_client, consumer="test-set-aside").drain()
    _wait_row(later, "started")


def test_set_aside_entries_show_in_metrics_health_and_the_admin_route(
    env: Backend, redis_client: Any, clean_set_aside: None, app: Any
):
    from fastapi.testclient import TestClient

    admin, member, operator, other = (
        make_tenant("admin"),
        make_tenant("member"),
        make_tenant("operator"),
        make_tenant("admin"),
    )
    job_id = seed_job(tenant=admin.name)
    bad_id = _raw_entry(redis_client, job_id, updated_at=None)
    Recorder(redis_client, consumer="test-set-aside-views").drain()
    wait_until(lambda: redis_client.xlen(SET_ASIDE) == 1, timeout=10, message="the entry set aside")

    with TestClient(app) as client:
        body = client.get("/metrics", headers=admin.headers).text
        assert "conveyor_journal_set_aside_held 1.0" in body
        assert re.search(r"^conveyor_journal_set_aside_total [1-9]", body, re.M), body

        for who, query, full in ((admin, "", False), (operator, "?tenant=*", True)):
            stats = client.get(f"/api/v1/queue/stats{query}", headers=who.headers).json()
            assert stats["health"]["status"] != "healthy"
            reason = next(r for r in stats["health"]["reasons"] if r["code"] == "journal_set_aside")
            assert "1 journal entries" in reason["message"] and "IntegrityError" in reason["message"]
            assert ("null" in reason["message"].lower()) == full, reason["message"]

        assert client.get("/api/v1/journal/set-aside", headers=member.headers).status_code == 403
        listed = client.get("/api/v1/journal/set-aside", headers=admin.headers).json()
        assert listed["held"] == 1 and listed["total_set_aside"] >= 1
        (item,) = listed["items"]
        assert (item["journal_id"], item["job_id"], item["tenant"]) == (bad_id, job_id, admin.name)
        assert item["reason"].startswith("IntegrityError") and item["set_aside_at"]
        assert item["event"] == "finished" and json.loads(item["fields"]["doc"])["job_id"] == job_id
        # Another tenant's admin does not see it; an operator sees every tenant's.
        assert client.get("/api/v1/journal/set-aside", headers=other.headers).json()["items"] == []
        assert len(client.get("/api/v1/journal/set-aside", headers=operator.headers).json()["items"]) == 1
        assert client.get("/api/v1/journal/set-aside?limit=0", headers=admin.headers).status_code == 422

    redis_client.delete(SET_ASIDE)
    with TestClient(app) as client:
        stats = client.get("/api/v1/queue/stats?tenant=*", headers=operator.headers).json()
        assert all(r["code"] != "journal_set_aside" for r in stats["health"]["reasons"])


def test_connectivity_and_database_state_errors_are_retried_not_set_aside():
    """Connectivity errors retry the whole batch later; they are never blamed on an entry."""
    import sqlalchemy as sa

    from jobs.history.recorder import unreachable

    assert unreachable(sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused")))
    assert unreachable(sa.exc.InterfaceError("SELECT 1", {}, Exception("closed")))
    invalidated = sa.exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert unreachable(invalidated)
    for per_entry in (sa.exc.IntegrityError, sa.exc.DataError, sa.exc.ProgrammingError):
        assert not unreachable(per_entry("UPDATE", {}, Exception("no")))
    assert not unreachable(KeyError("status"))

    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    # A deployment that is not migrated, or a read-only replica, is the database's state, not an entry's.
    assert unreachable(sa.exc.ProgrammingError("UPDATE", {}, PgError("42P01")))
    assert unreachable(sa.exc.InternalError("UPDATE", {}, PgError("25006")))
    assert not unreachable(sa.exc.DataError("UPDATE", {}, PgError("22P05")))  # untranslatable character


def test_a_malformed_entry_is_set_aside_not_dropped(env: Backend, redis_client: Any, clean_set_aside: None):
    job_id = seed_job()
    bad = redis_client.xadd(JOURNAL, {"event": "finished", "doc": "{not json"}).decode()
    record(job_id, S.STARTED, event="started")
    Recorder(redis_client, consumer="test-malformed").drain()
    _wait_row(job_id, "started")
    held = wait_until(
        lambda: [i for i in listing(redis_client, tenant=None, limit=10) if i.journal_id == bad],
        timeout=10,
        message="the malformed entry set aside",
    )
    assert held[0].reason.startswith("malformed journal entry") and held[0].fields["doc"] == "{not json"


def test_replay_puts_set_aside_entries_back_into_the_journal_as_they_were(
    env: Backend, redis_client: Any, clean_set_aside: None
):
    from tests.test_cli import conveyor

    job_id = seed_job()
    _raw_entry(redis_client, job_id, updated_at=None)
    Recorder(redis_client, consumer="test-replay").drain()

    def held() -> list[Any]:
        return listing(redis_client, tenant=None, limit=10)

    (first,) = wait_until(held, timeout=10, message="the entry set aside")
    before = _set_aside_total(redis_client)
    done = conveyor("journal", "replay", env=env.env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 set-aside journal entries put back"), done.stdout
    Recorder(redis_client, consumer="test-replay").drain()  # SQL still refuses it: set aside again
    (again,) = wait_until(
        lambda: [i for i in held() if i.id != first.id], timeout=10, message="set aside again"
    )
    assert again.fields == first.fields and again.journal_id != first.journal_id
    assert _set_aside_total(redis_client) == before + 1 and redis_client.xlen(SET_ASIDE) == 1
