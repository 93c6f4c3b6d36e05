"""The read model every channel uses (`jobs.state.reads`): Redis first, SQL after, the tenant
check between."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis import Redis

from jobs.actions.control import pause_job, resume_job
from jobs.errors import JobNotFound
from jobs.history.db import session_scope
from jobs.history.store import get_job, list_jobs
from jobs.state.lifecycle import record
from jobs.state.live import job_key, read_head
from jobs.state.reads import (
    CONTROLLED_HEAD,
    live_page,
    snapshot_for,
    state_for,
    valid_job_id,
    with_live_overlay,
)
from jobs.status import JobStatus
from tests.conftest import Backend, seed_job
from tests.live_support import run_async

S = JobStatus
MISSING = "00000000-0000-4000-8000-000000000000"


def _status(doc: bytes) -> str:
    return str(json.loads(doc)["status"])


def test_a_snapshot_is_its_tenants_alone(env: Backend, redis_client: Any):
    job_id = seed_job(tenant="t-reads-a")
    mine = run_async(snapshot_for(job_id, "t-reads-a"))
    assert mine.doc == read_head(redis_client, job_id, ("doc",)).doc
    assert mine.seq == 1 and not mine.live_unavailable
    assert run_async(snapshot_for(job_id, None)).doc == mine.doc  # an operator reads any tenant's
    for tenant, wanted in (("t-reads-b", job_id), ("t-reads-a", MISSING), ("t-reads-a", "not-a-uuid")):
        with pytest.raises(JobNotFound):
            run_async(snapshot_for(wanted, tenant))


def test_a_job_redis_forgot_is_read_from_sql_with_the_same_tenant_check(env: Backend, redis_client: Any):
    job_id = seed_job(tenant="t-reads-a")
    redis_client.delete(job_key(job_id))
    read = run_async(snapshot_for(job_id, "t-reads-a"))
    assert _status(read.doc) == "queued" and read.seq == 1 and not read.live_unavailable
    with pytest.raises(JobNotFound):
        run_async(snapshot_for(job_id, "t-reads-b"))


def test_a_read_with_the_control_request_sees_a_pending_pause(env: Backend, redis_client: Redis):
    job_id = seed_job(tenant="t-reads-a")
    record(job_id, S.STARTED, event="started")
    with session_scope() as session:
        pause_job(session=session, client=redis_client, job_id=job_id, tenant="t-reads-a", by="k-1")
    read = run_async(snapshot_for(job_id, "t-reads-a", fields=CONTROLLED_HEAD))
    assert read.control == "pause" and _status(read.doc) == "started"
    with session_scope() as session:  # withdraws the request: stored empty
        resume_job(session=session, client=redis_client, job_id=job_id, tenant="t-reads-a", by="k-1")
    assert run_async(snapshot_for(job_id, "t-reads-a", fields=CONTROLLED_HEAD)).control is None


def test_an_action_decides_by_the_live_state_then_sql(env: Backend, redis_client: Any):
    job_id = seed_job(tenant="t-reads-a")
    record(job_id, S.STARTED, event="started")
    with session_scope() as session:
        live = state_for(job_id, "t-reads-a", client=redis_client, session=session)
        assert live.status == S.STARTED
        with pytest.raises(JobNotFound):
            state_for(job_id, "t-reads-b", client=redis_client, session=session)
        redis_client.delete(job_key(job_id))
        row = get_job(session, job_id=job_id, tenant=None)
        assert row is not None
        from_sql = state_for(job_id, "t-reads-a", client=redis_client, session=session)
        assert from_sql.status == JobStatus(row.status) and from_sql.control is None


def test_a_page_shows_each_running_job_as_redis_has_it(env: Backend, redis_client: Any):
    running, waiting = seed_job(tenant="t-reads-page"), seed_job(tenant="t-reads-page")
    record(running, S.STARTED, event="started", patch={"progress": 40.0}, journal=False)  # SQL never hears
    with session_scope() as session:
        page = live_page(list_jobs(session, tenant="t-reads-page"), client=redis_client)
    docs = {json.loads(doc)["job_id"]: doc for doc in page.docs}
    assert list(docs) == [waiting, running]  # newest first
    assert docs[running] == read_head(redis_client, running, ("doc",)).doc
    assert json.loads(docs[running])["progress"] == 40.0
    assert not page.live_unavailable


def test_a_page_while_redis_is_unreachable_is_sqls_and_says_so(env: Backend, redis_client: Any):
    job_id = seed_job(tenant="t-reads-down")
    record(job_id, S.STARTED, event="started", journal=False)
    unreachable = Redis(port=1, socket_connect_timeout=0.2)
    with session_scope() as session:
        row = get_job(session, job_id=job_id, tenant=None)
        assert row is not None
        overlaid = with_live_overlay([row], client=unreachable)
    assert overlaid.live_unavailable and _status(overlaid.docs[0]) == "queued"


def test_the_live_store_decodes_the_hash_for_its_readers(env: Backend, redis_client: Any):
    job_id = seed_job(tenant="t-reads-a", task="long_task")
    record(job_id, S.STARTED, event="started", private={"worker": "w-1"}, journal=False)
    head = read_head(
        redis_client, job_id, ("tenant", "status", "attempt", "worker", "task", "seq", "control")
    )
    assert (head.tenant, head.status, head.attempt) == ("t-reads-a", S.STARTED, 1)
    assert (head.worker, head.task, head.seq) == ("w-1", "long_task", 2)
    assert head.control is None and head.doc is None  # absent, and not asked for
    assert read_head(redis_client, MISSING, ("status", "doc")).status is None


def test_a_job_id_is_a_canonical_uuid():
    lower = "0a1b2c3d-0000-4000-8000-00000000abcd"
    assert valid_job_id(MISSING) and valid_job_id(lower)
    assert not valid_job_id(lower.upper()) and not valid_job_id("x") and not valid_job_id("")
