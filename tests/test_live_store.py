"""The Lua gate in Redis: every change checked against the status machine, atomically versioned,
published and journaled."""

from __future__ import annotations

import json
from typing import Any

from jobs.state.lifecycle import record
from jobs.state.live import CHANNEL, JOURNAL, job_key, live_store
from jobs.status import JobStatus
from tests.conftest import Backend, seed_job

S = JobStatus


def test_a_legal_change_bumps_seq_and_is_published_and_journaled(env: Backend, redis_client: Any):
    job_id = seed_job()
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    pubsub.get_message(timeout=0.5)
    before = redis_client.xlen(JOURNAL)

    result = record(job_id, S.STARTED, event="started", patch={"progress": 0.0})
    assert result.applied
    snap = result.snapshot
    assert snap is not None and snap.status == S.STARTED and snap.seq == 2

    message = None
    for _ in range(50):
        message = pubsub.get_message(timeout=0.1)
        if message and json.loads(message["data"])["job_id"] == job_id:
            break
    assert message is not None and json.loads(message["data"])["seq"] == 2
    assert redis_client.xlen(JOURNAL) >= before  # the recorder may already have consumed it
    pubsub.close()


def test_an_illegal_change_is_refused_and_changes_nothing(env: Backend):
    job_id = seed_job()
    refused = record(job_id, S.FINISHED, event="finished")
    assert refused.outcome == "refused"
    assert refused.current_status == S.QUEUED
    assert refused.snapshot is not None and refused.snapshot.seq == 1


def test_a_late_progress_never_drags_a_finished_job_back(env: Backend):
    job_id = seed_job()
    record(job_id, S.STARTED, event="started")
    record(job_id, S.FINISHED, event="finished", patch={"result": {"ok": True}})
    late = record(job_id, S.STARTED, event="progress", from_statuses=(S.STARTED,), patch={"progress": 10.0})
    assert late.outcome == "refused"
    assert late.snapshot is not None and late.snapshot.status == S.FINISHED
    assert late.snapshot.result == {"ok": True}


def test_a_repeated_terminal_write_is_a_noop(env: Backend):
    job_id = seed_job()
    record(job_id, S.STARTED, event="started")
    first = record(job_id, S.FAILED, event="failed", patch={"error": {"type": "E", "detail": "d"}})
    again = record(job_id, S.FAILED, event="failed", patch={"error": {"type": "X", "detail": "y"}})
    assert first.applied and again.outcome == "noop"
    assert again.snapshot is not None and again.snapshot.seq == first.snapshot.seq  # type: ignore[union-attr]
    assert again.snapshot.error is not None and again.snapshot.error.type == "E"


def test_a_write_from_an_older_attempt_is_stale(env: Backend):
    job_id = seed_job()
    record(job_id, S.STARTED, event="started")
    retry = record(job_id, S.QUEUED, event="retry", new_attempt=True)
    assert retry.applied and retry.snapshot is not None and retry.snapshot.attempt == 2
    stale = record(job_id, S.STARTED, event="progress", expect_attempt=1)
    assert stale.outcome == "stale"


def test_terminal_snapshots_expire_and_live_ones_do_not(env: Backend, redis_client: Any):
    job_id = seed_job()
    record(job_id, S.STARTED, event="started")
    assert redis_client.ttl(job_key(job_id)) == -1
    record(job_id, S.FINISHED, event="finished")
    assert redis_client.ttl(job_key(job_id)) > 0


def test_lost_live_state_is_reseeded_from_sql_before_a_change(env: Backend, redis_client: Any):
    job_id = seed_job()
    redis_client.delete(job_key(job_id))
    result = record(job_id, S.STARTED, event="started")
    assert result.applied and result.snapshot is not None and result.snapshot.seq == 2


def test_documents_keep_json_exactly(env: Backend):
    """Lua never parses user data: big integers, empty lists and unicode survive byte for byte."""
    job_id = seed_job()
    record(job_id, S.STARTED, event="started")
    result = {"big": 12345678901234567890, "empty": [], "obj": {}, "text": 'héllo "quoted" </script>'}
    done = record(job_id, S.FINISHED, event="finished", patch={"result": result})
    assert json.loads(done.doc or b"")["result"] == result


def test_read_returns_tenant_and_document(env: Backend):
    job_id = seed_job(tenant="acme")
    store = live_store(__import__("jobs.state.redis_conn", fromlist=["get_redis"]).get_redis())
    tenant, doc = store.read(job_id) or ("", b"")
    assert tenant == "acme"
    assert json.loads(doc)["job_id"] == job_id
    assert store.read("00000000-0000-4000-8000-000000000000") is None


def test_an_annotation_keeps_the_status_and_is_versioned_and_journaled(env: Backend, redis_client: Any):
    from jobs.state.lifecycle import annotate
    from jobs.state.live import CONTROL, RUNNING_SET

    job_id = seed_job()
    record(job_id, S.STARTED, event="started")
    assert redis_client.sismember(RUNNING_SET, job_id)
    noted = annotate(
        job_id, event="cancel_requested", when=(S.STARTED, S.PAUSED), private={CONTROL: "cancel"}
    )
    assert noted.applied and noted.control == "cancel"
    assert noted.snapshot is not None and noted.snapshot.status == S.STARTED and noted.snapshot.seq == 3
    progress = record(
        job_id, S.STARTED, event="progress", from_statuses=(S.STARTED,), patch={"progress": 5.0}
    )
    assert progress.control == "cancel"  # every write hands the pending request back

    done = record(job_id, S.CANCELED, event="canceled")
    assert done.applied and done.control is None  # leaving `started` drops the request
    assert not redis_client.sismember(RUNNING_SET, job_id)
    refused = annotate(job_id, event="cancel_requested", when=(S.STARTED, S.PAUSED))
    assert refused.outcome == "refused"


def test_an_annotation_names_live_statuses_only(env: Backend):
    import pytest

    from jobs.state.lifecycle import annotate

    job_id = seed_job()
    with pytest.raises(ValueError):
        annotate(job_id, event="x", when=(S.FINISHED,))


def test_the_gate_scripts_read_exactly_the_named_arguments_they_declare():
    import re

    from jobs.state import live

    for script, names in ((live._TRANSITION, live.TRANSITION_ARGS), (live._SEED, live.SEED_ARGS)):
        assert set(re.findall(r"\bA\.(\w+)", script)) == set(names)
    # The status table's knowledge comes from jobs.status, not from the script's text.
    assert "'started' or" not in live._TRANSITION and "== 'paused'" not in live._SEED


def test_the_gate_sends_every_declared_name_and_refuses_another_count(env: Backend, redis_client: Any):
    import pytest
    import redis.exceptions

    from jobs.state import live

    store = live_store(redis_client)
    sent: list[list[Any]] = []
    script = store._transition

    def capture(*, keys: list[str], args: list[Any]) -> Any:
        sent.append(args)
        return script(keys=keys, args=args)

    job_id = seed_job()
    store._transition = capture  # type: ignore[assignment]
    try:
        assert record(job_id, S.STARTED, event="started", client=redis_client).applied
    finally:
        store._transition = script
    count = sent[0][0]
    assert count == len(live.TRANSITION_ARGS)
    assert sent[0][1 : 2 * count + 1 : 2] == list(live.TRANSITION_ARGS)

    short = live.named_args({"to": "finished"})
    keys = [job_key(job_id), JOURNAL, live.heartbeat_key(job_id), live.RUNNING_SET]
    with pytest.raises(redis.exceptions.ResponseError, match="named arguments"):
        script(keys=keys, args=short)
