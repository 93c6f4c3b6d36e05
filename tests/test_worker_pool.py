"""The worker pool (worker/pool.py, worker/child.py): long-lived children, no fork per job.

Real `conveyor worker` processes against real Redis and SQL: children overlap jobs, a forced
stop or a hard timeout ends only its own child's job, a child that dies is replaced and its job
settled at once, children are recycled without losing a job, and RQ reads what the fast path
wrote as its own (`rq info`, its registries, results and worker records).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Worker
from rq.job import Job as RQJob

from jobs.queues.queueing import SERIALIZER, get_queue
from jobs.queues.rq_engine import Claimed, Engine
from tests.conftest import FAST_ENV, Backend, WorkerProcess
from tests.services import wait_until
from tests.test_jobs_e2e import sql_events, submit, wait_status
from worker.pool import Pool, _Child

QUEUE = "isolated"


@pytest.fixture
def pool(env: Backend, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Pools a test starts (append to the list); all are stopped hard afterwards."""
    started: list[WorkerProcess] = []
    yield started
    for proc in started:
        proc.kill_hard()


def start_pool(env: Backend, tmp_path: Path, *, concurrency: int = 2, **settings: str) -> WorkerProcess:
    name = f"pool-{uuid.uuid4().hex[:6]}"
    return WorkerProcess(
        env,
        tmp_path / f"{name}.log",
        name,
        {**FAST_ENV, **settings},
        queues=QUEUE,
        args=("--concurrency", str(concurrency)),
    ).start()


def children(redis_client: Redis, pool_name: str) -> list[Worker]:
    return [w for w in Worker.all(connection=redis_client) if w.name.startswith(f"{pool_name}.")]


def test_children_run_jobs_side_by_side(
    api: TestClient, env: Backend, tmp_path: Path, pool: list, redis_client: Redis
):
    pool.append(proc := start_pool(env, tmp_path, concurrency=3))
    wait_until(lambda: len(children(redis_client, proc.name)) == 3, message="three children")
    started = time.monotonic()
    ids = [submit(api, "sleeper", {"seconds": 1.5}, queue=QUEUE)["job_id"] for _ in range(3)]
    for job_id in ids:
        wait_status(api, job_id, {"finished"}, timeout=15)
    took = time.monotonic() - started
    assert took < 4, f"three 1.5 s jobs on three children took {took:.1f}s: they did not overlap"
    workers = {next(sql_events_eventually(j, "started")).data["worker"] for j in ids}
    assert len(workers) == 3  # one job per child


def test_a_forced_stop_ends_only_its_own_job(
    api: TestClient, env: Backend, tmp_path: Path, pool: list, redis_client: Redis, short_cancel_grace: Any
):
    pool.append(proc := start_pool(env, tmp_path))
    stuck = submit(api, "spin", {"seconds": 120}, queue=QUEUE)["job_id"]
    wait_status(api, stuck, {"started"})
    neighbour = submit(api, "sleeper", {"seconds": 4}, queue=QUEUE)["job_id"]
    wait_status(api, neighbour, {"started"})
    asked = time.monotonic()
    assert api.post(f"/api/v1/jobs/{stuck}/cancel").status_code == 202
    final = wait_status(api, stuck, {"canceled"}, timeout=15)
    assert time.monotonic() - asked < 6
    canceled = next(e for e in sql_events_eventually(stuck, "canceled"))
    assert canceled.data["forced"] is True
    assert final["attempt"] == 1
    # The other child's job was not touched, and the killed child was replaced.
    assert wait_status(api, neighbour, {"finished"}, timeout=15)["attempt"] == 1
    wait_until(lambda: len(children(redis_client, proc.name)) == 2, message="a fresh child in its place")
    rq_job = RQJob.fetch(stuck, connection=redis_client, serializer=SERIALIZER)
    assert rq_job.get_status() == "canceled"
    assert stuck not in get_queue(QUEUE, redis_client).started_job_registry.get_job_ids()


def sql_events_eventually(job_id: str, event: str) -> Iterator[Any]:
    wait_until(lambda: any(e.event == event for e in sql_events(job_id)), message=f"{event} in SQL")
    return (e for e in sql_events(job_id) if e.event == event)


def test_a_job_deaf_to_its_timeout_is_stopped_by_the_pool(
    api: TestClient, env: Backend, tmp_path: Path, pool: list
):
    pool.append(start_pool(env, tmp_path, CONVEYOR_HARD_STOP_AFTER="1"))
    job_id = submit(api, "stubborn", {"seconds": 120}, queue=QUEUE)["job_id"]
    neighbour = submit(api, "sleeper", {"seconds": 3}, queue=QUEUE)["job_id"]
    final = wait_status(api, job_id, {"failed"}, timeout=15)
    assert final["error"]["type"] == "JobTimeout"
    assert wait_status(api, neighbour, {"finished"}, timeout=15)["attempt"] == 1


def test_a_child_killed_mid_job_is_replaced_and_its_job_retried_at_once(
    api: TestClient, env: Backend, tmp_path: Path, pool: list, redis_client: Redis
):
    pool.append(proc := start_pool(env, tmp_path, CONVEYOR_HEARTBEAT_TTL="30", CONVEYOR_RECONCILE_GRACE="60"))
    job_id = submit(api, "retrying_sleeper", {"seconds": 30}, queue=QUEUE)["job_id"]
    wait_status(api, job_id, {"started"})
    worker_name = redis_client.hget(f"cv:job:{job_id}", "worker").decode()
    victim = Worker.find_by_key(Worker.redis_worker_namespace_prefix + worker_name, connection=redis_client)
    assert victim is not None
    killed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    # Settled by the pool as it reaps the child, not by the reconciler (heartbeats last 30 s here).
    retried = wait_until(
        lambda: (e := [x for x in sql_events(job_id) if x.event == "retry"]) and e[0],
        timeout=10,
        message="the retry",
    )
    assert time.monotonic() - killed_at < 5
    assert retried.data["error"]["type"] == "WorkHorseKilled"
    assert wait_status(api, job_id, {"started"}, timeout=10)["attempt"] == 2
    wait_until(lambda: len(children(redis_client, proc.name)) == 2, message="a fresh child in its place")
    assert worker_name not in {w.name for w in children(redis_client, proc.name)}
    api.post(f"/api/v1/jobs/{job_id}/cancel")


def test_a_child_killed_between_its_claim_and_its_slot_has_its_job_retried_at_once(
    api: TestClient, env: Backend, redis_client: Redis
):
    """The claim script records the start before the child's slot names the job: a child killed
    in that moment (its claim done, its reply not yet read) has its attempt ended by the pool as
    it reaps the child, not by the reconciler a heartbeat TTL later."""
    job_id = submit(api, "retrying_sleeper", {"seconds": 30}, queue=QUEUE)["job_id"]
    supervisor = Pool([QUEUE], name=f"pool-{uuid.uuid4().hex[:6]}", concurrency=1)
    # A process of this test's own stands for the child: the claim below is the one it made.
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    name = f"{supervisor.name}.0.1"
    supervisor.children[0] = _Child(0, victim.pid, name)
    try:
        claimed = Engine(redis_client, name).claim([QUEUE])
        assert isinstance(claimed, Claimed) and claimed.job_id == job_id
        assert all(supervisor.slots.read(slot).job_id is None for slot in supervisor.slots.of(0))
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: supervisor._reap() or not supervisor.children, timeout=5, message="the reap")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim.pid, signal.SIGKILL)
        supervisor.slots.close()
    snap = wait_status(api, job_id, {"queued"}, timeout=5)
    assert snap["attempt"] == 2
    assert snap["error"]["type"] == "WorkHorseKilled"
    assert job_id in get_queue(QUEUE, redis_client).get_job_ids()  # back in its queue, to run again
    api.post(f"/api/v1/jobs/{job_id}/cancel")


def test_children_are_recycled_after_their_job_limit_without_losing_a_job(
    api: TestClient, env: Backend, tmp_path: Path, pool: list
):
    pool.append(start_pool(env, tmp_path, concurrency=1, CONVEYOR_CHILD_MAX_JOBS="3"))
    ids = [submit(api, "quick", {}, queue=QUEUE)["job_id"] for _ in range(10)]
    for job_id in ids:
        wait_status(api, job_id, {"finished"}, timeout=20)
    starts = [sql_events_eventually(j, "started") for j in ids]
    workers = [next(events).data["worker"] for events in starts]
    assert len(set(workers)) == 4  # 3 + 3 + 3 + 1
    assert all(workers.count(w) <= 3 for w in workers)


def test_rq_reads_the_fast_path_s_records_as_its_own(
    api: TestClient, env: Backend, tmp_path: Path, pool: list, redis_client: Redis
):
    pool.append(proc := start_pool(env, tmp_path))
    job_id = submit(api, "quick", {}, queue=QUEUE)["job_id"]
    snap = wait_status(api, job_id, {"finished"})
    assert snap["result"] == {"rq_job": job_id, "queue": QUEUE}  # rq.get_current_job() inside the task

    rq_job = RQJob.fetch(job_id, connection=redis_client, serializer=SERIALIZER)
    assert rq_job.get_status() == "finished"
    assert rq_job.return_value() == {"rq_job": job_id, "queue": QUEUE}
    assert rq_job.worker_name.startswith(f"{proc.name}.") and rq_job.started_at and rq_job.ended_at
    queue = get_queue(QUEUE, redis_client)
    assert job_id in queue.finished_job_registry.get_job_ids()
    assert job_id not in queue.started_job_registry.get_job_ids()
    assert redis_client.ttl(rq_job.key) > 0  # RQ's result TTL applies to the job's hash
    worker = Worker.find_by_key(
        Worker.redis_worker_namespace_prefix + rq_job.worker_name, connection=redis_client
    )
    assert worker is not None and worker.successful_job_count >= 1 and worker.get_current_job_id() is None

    info = subprocess.run(
        [sys.executable, "-m", "rq.cli", "info", "--url", env.redis_url, QUEUE],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert f"{proc.name}.0.1" in info and f"{proc.name}.1.1" in info
    assert QUEUE in info
