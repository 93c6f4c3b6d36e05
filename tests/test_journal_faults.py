"""History never stalls: values SQL cannot store are made storable at the source, and an entry
that still cannot be applied is set aside while every other entry flows on."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import select

from jobs.db import session_scope
from jobs.lifecycle import record
from jobs.models import Job, JobEvent, JobResult
from jobs.recorder import Recorder
from jobs.status import JobStatus
from jobs.storable import REPLACEMENT, storable, storable_json
from tests.conftest import Backend, seed_job
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
    from jobs.results import result_patch

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
