"""No job lost: a worker killed mid-job, Redis restarted empty, workers restarted one by one,
and several reconcilers at once. Real worker processes on the `isolated` queue."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from jobs.clock import utcnow
from jobs.history.db import open_session, session_scope
from jobs.history.models import Job
from jobs.queues.queueing import fetch, get_queue
from jobs.queues.reconciler import EPOCH_KEY, RECOVERING_KEY, Reconciler
from jobs.state.lifecycle import record, write_through_or_log
from jobs.state.live import RUNNING_SET, heartbeat_key, job_key
from jobs.status import JobStatus
from tests.conftest import (
    FAST_ENV,
    Backend,
    PrivateWorld,
    WorkerProcess,
    configure,
    descendants,
    seed_job,
)
from tests.control_tasks import DONE_PREFIX
from tests.services import wait_until
from tests.test_jobs_e2e import sql_events, sql_row, submit, wait_status

QUEUE = "isolated"


def start_worker(env: Backend, tmp_path: Path, label: str, **settings: str) -> WorkerProcess:
    name = f"{label}-{uuid.uuid4().hex[:6]}"
    return WorkerProcess(env, tmp_path / f"{name}.log", name, settings, queues=QUEUE).start()


@pytest.fixture
def workers(env: Backend, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Workers a test starts (append to the list); all are stopped afterwards."""
    started: list[WorkerProcess] = []
    yield started
    for proc in started:
        proc.kill_hard()


def sql_wait(job_id: str, predicate: Any, timeout: float, message: str) -> Job:
    return wait_until(
        lambda: (row := sql_row(job_id)) is not None and predicate(row) and row,
        timeout=timeout,
        interval=0.1,
        message=message,
    )


def test_a_worker_killed_mid_job_has_its_jobs_failed_or_retried_within_30_seconds(
    api: TestClient, env: Backend, tmp_path: Path, workers: list[WorkerProcess], redis_client: Redis
):
    """Default heartbeat and reconciler settings: the figure docs/reliability.md quotes."""
    workers += [start_worker(env, tmp_path, "victim"), start_worker(env, tmp_path, "victim")]
    once = submit(api, "sleeper", {"seconds": 4}, queue=QUEUE)["job_id"]
    retried = submit(api, "retrying_sleeper", {"seconds": 4}, queue=QUEUE)["job_id"]
    for job_id in (once, retried):
        wait_status(api, job_id, {"started"}, timeout=15)
    workers.append(start_worker(env, tmp_path, "survivor"))
    time.sleep(0.5)

    killed_at = time.monotonic()
    for victim in workers[:2]:
        victim.kill_hard()

    failed = sql_wait(once, lambda r: r.status == "failed", 30, "the lost job to fail in SQL")
    failed_after = time.monotonic() - killed_at
    assert failed.error_type == "WorkerLost" and failed.attempt == 1
    row = sql_wait(retried, lambda r: r.attempt == 2, 30, "the lost job to be retried in SQL")
    retried_after = time.monotonic() - killed_at
    print(f"\ndetected after kill -9: failed in {failed_after:.1f}s, retried in {retried_after:.1f}s")
    assert failed_after < 30 and retried_after < 30
    assert row.status in ("queued", "started", "finished")

    final = wait_status(api, retried, {"finished"}, timeout=30)  # the survivor runs attempt 2
    assert final["attempt"] == 2
    retry = next(e for e in sql_events(retried) if e.event == "retry")
    assert retry.data["error"]["type"] == "WorkerLost"
    assert int(redis_client.get(DONE_PREFIX + retried) or 0) == 1
    assert redis_client.get(DONE_PREFIX + once) is None
    rq_job = fetch(once, redis_client)
    assert rq_job is not None and rq_job.get_status() == "failed"  # RQ's record agrees


def test_jobs_redis_forgot_are_enqueued_again_and_all_finish(
    tmp_path: Path, private_world: PrivateWorld, app: Any
):
    """Redis restarted without persistence while 100 jobs were queued."""
    world = private_world
    private, url = world.backend, world.redis_url
    worker: WorkerProcess | None = None
    try:
        with TestClient(app, headers=world.tenant.headers) as client:
            ids = [
                submit(client, "steps", {"steps": 1, "step": 0}, queue=QUEUE)["job_id"] for _ in range(100)
            ]
            parent = submit(client, "steps", {"steps": 1, "step": 0}, queue=QUEUE, delay=2)["job_id"]
            child = submit(client, "steps", {"steps": 1, "step": 0}, queue=QUEUE, depends_on=[parent])[
                "job_id"
            ]
        assert Redis.from_url(url).llen(get_queue(QUEUE, Redis.from_url(url)).key) == 100

        world.restart_redis_empty()
        assert Redis.from_url(url).dbsize() == 0
        time.sleep(1.2)  # older than the reconciler's grace for waiting jobs

        worker = WorkerProcess(
            private,
            tmp_path / "w.log",
            f"after-{uuid.uuid4().hex[:6]}",
            {**FAST_ENV, "CONVEYOR_RECONCILE_GRACE": "1"},
            QUEUE,
        ).start()

        def finished() -> int:
            with session_scope() as session:
                rows = [session.get(Job, i) for i in [*ids, parent, child]]
            return sum(1 for r in rows if r is not None and r.status == "finished")

        wait_until(lambda: finished() == 102, timeout=60, interval=0.25, message="all 102 jobs to finish")
        requeued = [e for e in sql_events(ids[0]) if e.event == "requeued"]
        assert len(requeued) == 1
        child_row = sql_row(child)
        parent_row = sql_row(parent)
        assert child_row is not None and parent_row is not None
        assert child_row.started_at >= parent_row.ended_at  # type: ignore[operator]
    finally:
        if worker is not None:
            worker.stop()


def test_with_default_settings_jobs_submitted_just_before_redis_lost_everything_run_within_30_seconds(
    tmp_path: Path, private_world: PrivateWorld, app: Any
):
    """No grace to wait out: the sweep a loss triggers takes even the jobs submitted a moment ago,
    and each runs once."""
    world = private_world
    private, url = world.backend, world.redis_url
    worker: WorkerProcess | None = None
    try:
        with TestClient(app, headers=world.tenant.headers) as client:
            ids = [
                submit(client, "steps", {"steps": 1, "step": 0}, queue=QUEUE)["job_id"] for _ in range(100)
            ]
        world.restart_redis_empty()
        assert Redis.from_url(url).dbsize() == 0

        name = f"after-{uuid.uuid4().hex[:6]}"
        worker = WorkerProcess(private, tmp_path / "w.log", name, {}, QUEUE).start()

        def requeued() -> int:
            return sum(1 for job_id in ids if any(e.event == "requeued" for e in sql_events(job_id)))

        wait_until(lambda: requeued() == 100, timeout=60, interval=1, message="all 100 jobs to be requeued")
        seen_at = float(Redis.from_url(url).get(RECOVERING_KEY) or 0)  # when a reconciler saw the loss
        last = max(e.created_at for job_id in ids for e in sql_events(job_id) if e.event == "requeued")
        after_seen = last.timestamp() - seen_at
        print(f"\nall 100 requeued {after_seen:.1f}s after the loss was seen")
        assert 0 < after_seen < 30

        def finished() -> int:
            with session_scope() as session:
                rows = [session.get(Job, i) for i in ids]
            return sum(1 for r in rows if r is not None and r.status == "finished")

        wait_until(lambda: finished() == 100, timeout=30, interval=0.25, message="all 100 jobs to finish")
        for job_id in ids:
            events = [e.event for e in sql_events(job_id)]
            detail = [(e.event, e.created_at.isoformat(), e.data) for e in sql_events(job_id)]
            assert events.count("started") == 1 and events.count("requeued") == 1, (job_id, detail)
    finally:
        if worker is not None:
            worker.stop()


def test_a_job_s_end_is_in_sql_before_its_worker_takes_the_next_job(
    api: TestClient, env: Backend, tmp_path: Path, workers: list[WorkerProcess]
):
    """Without waiting for the recorder (none runs here): Redis losing the journal entry of a job's
    end must not leave SQL calling it waiting, or the loss sweep would run it again."""
    name = f"norec-{uuid.uuid4().hex[:6]}"
    workers.append(
        WorkerProcess(env, tmp_path / "w.log", name, FAST_ENV, QUEUE, args=("--no-recorder",)).start()
    )
    job_id = submit(api, "steps", {"steps": 1, "step": 0}, queue=QUEUE)["job_id"]
    row = sql_wait(job_id, lambda r: r.status == "finished", 20, "the end to reach SQL without a recorder")
    assert row.ended_at is not None and row.progress == 100.0
    # The job's own journal entries, events and all: never the end without the start.
    assert [e.event for e in sql_events(job_id)][:2] == ["queued", "started"]
    assert [e.event for e in sql_events(job_id)][-1] == "finished"


def test_a_job_running_while_redis_lost_everything_finishes_once(
    tmp_path: Path, private_world: PrivateWorld, app: Any
):
    """Its live state comes back from SQL as queued (no recorder carried its start there): the
    attempt records its start again and finishes, and the loss sweep leaves it alone (its worker
    keeps its heartbeat alive) instead of running it a second time."""
    world = private_world
    private, url = world.backend, world.redis_url
    configure({**private.env(), **FAST_ENV})
    worker: WorkerProcess | None = None
    try:
        name = f"lossy-{uuid.uuid4().hex[:6]}"
        worker = WorkerProcess(private, tmp_path / "w.log", name, FAST_ENV, QUEUE, args=("--no-recorder",))
        worker.start()
        with TestClient(app, headers=world.tenant.headers) as client:
            job_id = submit(client, "steps", {"steps": 40, "step": 0.1, "report": True}, queue=QUEUE)[
                "job_id"
            ]
            wait_status(client, job_id, {"started"}, timeout=15)
        world.restart_redis_empty()
        redis = Redis.from_url(url)
        assert redis.dbsize() == 0

        Reconciler(redis, sessions=open_session, use_lock=False).run_pass(
            sweep=True
        )  # `conveyor reconcile` sees the loss
        row = sql_wait(job_id, lambda r: r.status == "finished", 30, "the job to finish")
        assert row.attempt == 1
        assert "requeued" not in [e.event for e in sql_events(job_id)]
        assert job_id not in get_queue(QUEUE, redis).job_ids
        assert "recorded it again" in worker.log()
    finally:
        if worker is not None:
            worker.stop()


def test_a_failover_that_lost_only_the_last_writes_is_caught_by_the_recent_sweep(
    env: Backend, redis_client: Redis
):
    """The loss marker survived (a replica took over), so only the recent sweep can find them."""
    from jobs.queues.requeue import REQUEUE_LOCK

    configure({**env.env(), "CONVEYOR_RECONCILE_GRACE": "0"})
    queue = f"failover-{uuid.uuid4().hex[:6]}"  # no worker takes it, and no other test sees it
    job_id = seed_job(queue=queue)
    try:
        redis_client.set(EPOCH_KEY, "kept")
        for key in (job_key(job_id), f"rq:job:{job_id}", REQUEUE_LOCK + job_id):
            redis_client.delete(key)
        get_queue(queue, redis_client).remove(job_id)
        reconciler = Reconciler(redis_client, sessions=open_session, use_lock=False)
        reconciler._last_sweep = time.monotonic()  # the full sweep is not due: only the recent one runs
        report = reconciler.run_pass()
        assert not report.swept and report.requeued >= 1  # other tests' leftovers may be found too
        assert job_id in get_queue(queue, redis_client).job_ids
        assert [e.event for e in sql_events(job_id)][-1] == "requeued"
    finally:
        canceled = record(job_id, JobStatus.CANCELED, event="canceled", client=redis_client)
        with session_scope() as session:  # so that later sweeps leave it alone
            write_through_or_log(canceled, session=session, event="canceled")
        get_queue(queue, redis_client).remove(job_id)
        configure(env.env())


def test_kill_9_of_a_worker_takes_its_rq_scheduler_and_recorder_with_it(env: Backend, tmp_path: Path):
    queue = f"orphans-{uuid.uuid4().hex[:6]}"  # a queue of its own, so this worker holds its scheduler lock
    proc = WorkerProcess(env, tmp_path / "w.log", f"orphans-{uuid.uuid4().hex[:6]}", FAST_ENV, queue).start()
    assert proc.process is not None
    worker_pid = proc.process.pid

    def cmdline(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except FileNotFoundError:
            return ""

    children = wait_until(
        lambda: (found := descendants(worker_pid)) and len(found) >= 2 and found,
        timeout=15,
        message="the worker's scheduler and recorder children",
    )
    assert any("recorder" in cmdline(pid) for pid in children)
    assert any("recorder" not in cmdline(pid) for pid in children)  # RQ's scheduler, a fork of the worker

    os.kill(worker_pid, signal.SIGKILL)  # the worker alone, as the OOM killer would
    proc.process.wait()

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return False
        return state != "Z"

    try:
        wait_until(lambda: not any(alive(pid) for pid in children), timeout=20, message="no orphans")
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_lost_job_whose_task_is_gone_fails_and_the_sweep_goes_on(env: Backend, redis_client: Redis):
    """A deployment removed a task while jobs of it waited: the sweep must not stop at them."""
    from jobs.queues.requeue import requeue_lost

    configure({**env.env(), "CONVEYOR_RECONCILE_GRACE": "0"})
    queue = f"gone-{uuid.uuid4().hex[:6]}"
    orphan = seed_job(task="a_task_since_removed", queue=queue)
    lost = seed_job(queue=queue)
    try:
        for job_id in (orphan, lost):
            redis_client.delete(job_key(job_id))
        requeue_lost(redis_client, sessions=open_session, by="test")
        row = sql_row(orphan)
        assert row is not None and row.status == "failed" and row.error_type == "UnknownTask"
        assert lost in get_queue(queue, redis_client).job_ids
    finally:
        canceled = record(lost, JobStatus.CANCELED, event="canceled", client=redis_client)
        with session_scope() as session:
            write_through_or_log(canceled, session=session, event="canceled")
        get_queue(queue, redis_client).remove(lost)
        configure(env.env())


def test_a_rolling_restart_loses_nothing(
    api: TestClient, env: Backend, tmp_path: Path, workers: list[WorkerProcess], redis_client: Redis
):
    # First worker: SIGTERM while a short job runs; it finishes the job, then exits, taking no
    # other job. One child, so that the jobs queued behind the short one wait for the SIGTERM.
    first = start_worker(
        env, tmp_path, "first", **FAST_ENV, CONVEYOR_SHUTDOWN_GRACE="10", CONVEYOR_WORKER_CONCURRENCY="1"
    )
    workers.append(first)
    short = submit(api, "sleeper", {"seconds": 1.5}, queue=QUEUE)["job_id"]
    wait_status(api, short, {"started"})
    waiting = [submit(api, "sleeper", {"seconds": 0.1}, queue=QUEUE)["job_id"] for _ in range(5)]
    assert first.process is not None
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=15) == 0
    assert wait_status(api, short, {"finished"})["attempt"] == 1
    assert {api.get(f"/api/v1/jobs/{j}").json()["status"] for j in waiting} == {"queued"}

    # Second worker: SIGTERM while a long job runs; after its grace it requeues the job and exits.
    second = start_worker(env, tmp_path, "second", **FAST_ENV, CONVEYOR_SHUTDOWN_GRACE="1")
    workers.append(second)
    for job_id in waiting:
        wait_status(api, job_id, {"finished"})
    long = submit(api, "sleeper", {"seconds": 30}, queue=QUEUE)["job_id"]
    wait_status(api, long, {"started"})
    assert second.process is not None
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(timeout=15) == 0
    requeued = api.get(f"/api/v1/jobs/{long}").json()
    assert requeued["status"] == "queued" and requeued["attempt"] == 2
    assert long in get_queue(QUEUE, redis_client).get_job_ids()

    # Third worker: runs the requeued attempt to the end.
    workers.append(start_worker(env, tmp_path, "third", **FAST_ENV))
    assert wait_status(api, long, {"started"}, timeout=15)["attempt"] == 2
    api.post(f"/api/v1/jobs/{long}/cancel")  # no need to wait 30 s: a cancel proves it runs again
    final = wait_status(api, long, {"canceled"}, timeout=15)
    assert final["attempt"] == 2
    sql_wait(long, lambda r: r.status == "canceled", 10, "SQL to record the cancel")
    names = [e.event for e in sql_events(long)]
    assert names.count("started") == 2 and "requeued" in names and "failed" not in names


def test_a_second_sigterm_requeues_the_running_job_at_once(
    api: TestClient, env: Backend, tmp_path: Path, workers: list[WorkerProcess], redis_client: Redis
):
    first = start_worker(env, tmp_path, "impatient", **FAST_ENV)  # default 20 s shutdown grace
    workers.append(first)
    job_id = submit(api, "sleeper", {"seconds": 60}, queue=QUEUE)["job_id"]
    wait_status(api, job_id, {"started"})
    assert first.process is not None
    first.process.send_signal(signal.SIGTERM)
    time.sleep(1.5)  # RQ ignores a repeat within a second
    assert first.process.poll() is None, "the first SIGTERM lets the job go on"
    first.process.send_signal(signal.SIGTERM)
    first.process.wait(timeout=10)
    snap = api.get(f"/api/v1/jobs/{job_id}").json()
    assert snap["status"] == "queued" and snap["attempt"] == 2
    assert get_queue(QUEUE, redis_client).get_job_ids() == [job_id]
    requeued = [e for e in sql_events(job_id) if e.event == "requeued"]
    assert requeued and "forced" in requeued[0].data["reason"]
    get_queue(QUEUE, redis_client).remove(job_id)
    api.post(f"/api/v1/jobs/{job_id}/cancel")


# --- several reconcilers at once -------------------------------------------------------------------


def _together(passes: int, action: Any) -> None:
    barrier = threading.Barrier(passes)

    def run() -> None:
        barrier.wait()
        action()

    threads = [threading.Thread(target=run) for _ in range(passes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_concurrent_reconcilers_end_an_abandoned_job_once(env: Backend, redis_client: Redis):
    job_id = seed_job(queue=QUEUE)
    assert record(job_id, JobStatus.STARTED, event="started", private={"worker": "gone"}).applied
    redis_client.delete(heartbeat_key(job_id))  # its worker died long ago

    _together(
        4, lambda: Reconciler(redis_client, sessions=open_session, use_lock=False).run_pass(sweep=False)
    )
    events = [e.event for e in sql_events(job_id)]
    assert events.count("failed") == 1, events
    row = sql_row(job_id)
    assert row is not None and row.status == "failed" and row.error_type == "WorkerLost"
    assert not redis_client.sismember(RUNNING_SET, job_id)


def test_concurrent_reconcilers_enqueue_a_lost_job_once(env: Backend, redis_client: Redis):
    job_id = seed_job(queue=QUEUE)  # in SQL and in the live state, but RQ has no record of it
    with session_scope() as session:
        row = session.get(Job, job_id)
        assert row is not None
        row.updated_at = row.created_at = utcnow().replace(year=2000)
        session.add(row)
    _together(4, lambda: Reconciler(redis_client, sessions=open_session, use_lock=False).run_pass(sweep=True))
    assert get_queue(QUEUE, redis_client).get_job_ids().count(job_id) == 1
    assert [e.event for e in sql_events(job_id)].count("requeued") == 1
    get_queue(QUEUE, redis_client).remove(job_id)


def test_the_reconciler_never_moves_a_job_backwards(env: Backend, redis_client: Redis):
    job_id = seed_job(queue=QUEUE)
    record(job_id, JobStatus.STARTED, event="started")
    record(job_id, JobStatus.FINISHED, event="finished", patch={"result": 1})
    redis_client.sadd(RUNNING_SET, job_id)  # a stale index entry
    before = redis_client.hget(job_key(job_id), "seq")
    Reconciler(redis_client, sessions=open_session, use_lock=False).run_pass(sweep=True)
    assert redis_client.hget(job_key(job_id), "seq") == before
    assert not redis_client.sismember(RUNNING_SET, job_id)


def test_a_live_worker_is_not_mistaken_for_a_dead_one(env: Backend, redis_client: Redis):
    """rq#2424: RQ's own view is checked before anything is failed. A job whose heartbeat key is gone
    but whose worker is alive and says it runs the job gets its heartbeat back, nothing else."""
    job_id = seed_job(queue=QUEUE)
    record(job_id, JobStatus.STARTED, event="started", private={"worker": "alive-worker"})
    redis_client.delete(heartbeat_key(job_id))
    redis_client.hset(
        "rq:worker:alive-worker",
        mapping={
            "current_job": job_id,
            "last_heartbeat": utcnow().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "conveyor_heartbeat_interval": "2",
        },
    )
    try:
        report = Reconciler(redis_client, sessions=open_session, use_lock=False).run_pass(sweep=False)
        assert report.failed == report.retried == 0
        assert redis_client.exists(heartbeat_key(job_id))
        assert redis_client.hget(job_key(job_id), "status") == b'"started"'
    finally:
        redis_client.delete("rq:worker:alive-worker")
        record(job_id, JobStatus.FAILED, event="failed")


def test_reconcile_command_prints_what_it_did(env: Backend):
    import json

    from tests.test_cli import conveyor

    for _ in range(10):  # the workers' own reconcilers may hold the pass lock for a moment
        done = conveyor("reconcile", env=env.env())
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout.strip().splitlines()[-1])
        if report["ran"]:
            break
    assert report["swept"] is True and "retried" in report


def test_the_lambda_handler_runs_a_pass(env: Backend, redis_client: Redis):
    from worker.lambda_reconcile import handler

    report = wait_until(lambda: (r := handler({"source": "aws.events"}, None))["ran"] and r, timeout=10)
    assert set(report) >= {"retried", "failed", "requeued", "seconds"}


def test_the_lambda_reports_the_backlog_the_workers_scale_on(env: Backend, redis_client: Redis):
    from jobs.queues.queueing import get_queue
    from worker.lambda_reconcile import backlog_per_worker, handler

    before, workers, _ = backlog_per_worker(redis_client)
    queue = get_queue("other", redis_client)  # no worker serves it in the tests: its jobs wait
    for _ in range(3):
        queue.enqueue_call("bench.bare_tasks.bare_noop")
    waiting, workers, per_worker = backlog_per_worker(redis_client)
    assert waiting == before + 3
    assert per_worker == waiting / max(1, workers)
    report = handler({"source": "aws.events"}, None)
    assert report["backlog"]["waiting"] >= 3
    assert report["backlog"]["published"] is False  # only inside Lambda
    queue.empty()
