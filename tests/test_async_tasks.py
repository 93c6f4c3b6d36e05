"""Async tasks (issue 17): `async def` jobs run side by side on one worker child's event loop.

Real `conveyor worker` processes with one child each (``--concurrency 1``), so every job below
shares one process: they overlap, report progress, obey a cooperative cancel and their own timeout
one by one, and a forced stop cancels just its job, unless that job ignores its cancellation:
then the child is killed and its other jobs end as a dead worker's (retried), as docs/decisions.md says.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from redis import Redis

from jobs.queues.queueing import get_queue
from tests.conftest import Backend
from tests.services import wait_until
from tests.test_jobs_e2e import sql_events, submit, wait_status
from tests.test_worker_pool import QUEUE, children, pool, sql_events_eventually, start_pool

__all__ = ["pool"]  # the fixture, used by name


def started_by(job_id: str) -> str:
    """The child that started the job, from its SQL history (once the recorder has carried it)."""
    event = wait_until(
        lambda: next((e for e in sql_events(job_id) if e.event == "started"), None),
        message=f"job {job_id}'s start in SQL",
    )
    return str(event.data["worker"])


def running_in(redis_client: Redis, job_id: str) -> str:
    """The worker child a running job's live state names."""
    return bytes(redis_client.hget(f"cv:job:{job_id}", "worker") or b"").decode()


def test_async_jobs_overlap_in_one_child(api: TestClient, env: Backend, tmp_path: Path, pool: list):
    pool.append(start_pool(env, tmp_path, concurrency=1))
    ids = [submit(api, "async_sleeper", {"seconds": 0.5}, queue=QUEUE)["job_id"] for _ in range(20)]
    started = time.monotonic()
    for job_id in ids:
        wait_status(api, job_id, {"finished"}, timeout=20)
    took = time.monotonic() - started
    assert took < 5, f"twenty 0.5 s async jobs on one child took {took:.1f}s: they did not overlap"
    assert len({started_by(j) for j in ids}) == 1


def test_progress_from_an_async_task_reaches_the_snapshot(
    api: TestClient, env: Backend, tmp_path: Path, pool: list
):
    pool.append(start_pool(env, tmp_path, concurrency=1))
    job_id = submit(api, "async_steps", {"steps": 30, "step": 0.1, "report": True}, queue=QUEUE)["job_id"]
    midway = wait_until(
        lambda: (
            (s := api.get(f"/api/v1/jobs/{job_id}").json())["status"] == "started"
            and 0 < (s["progress"] or 0) < 100
            and s
        ),
        message="progress under way",
    )
    assert midway["message"].startswith("step ")
    final = wait_status(api, job_id, {"finished"})
    assert final["progress"] == 100.0 and final["result"] == {"steps": 30}


def test_a_cooperative_cancel_of_one_async_job_leaves_the_others_running(
    api: TestClient, env: Backend, tmp_path: Path, pool: list
):
    pool.append(start_pool(env, tmp_path, concurrency=1))
    victim = submit(api, "async_sleeper", {"seconds": 30}, queue=QUEUE)["job_id"]
    others = [submit(api, "async_sleeper", {"seconds": 3}, queue=QUEUE)["job_id"] for _ in range(3)]
    for job_id in [victim, *others]:
        wait_status(api, job_id, {"started"})
    assert api.post(f"/api/v1/jobs/{victim}/cancel").status_code == 202
    wait_status(api, victim, {"canceled"}, timeout=10)
    assert next(sql_events_eventually(victim, "canceled")).data.get("forced") is not True
    for job_id in others:
        assert wait_status(api, job_id, {"finished"}, timeout=15)["attempt"] == 1


def test_an_async_job_past_its_timeout_fails_alone(api: TestClient, env: Backend, tmp_path: Path, pool: list):
    pool.append(start_pool(env, tmp_path, concurrency=1))
    late = submit(api, "async_overruns", {"seconds": 60}, queue=QUEUE)["job_id"]
    others = [submit(api, "async_sleeper", {"seconds": 3}, queue=QUEUE)["job_id"] for _ in range(2)]
    final = wait_status(api, late, {"failed"}, timeout=10)
    assert final["error"]["type"] == "JobTimeout"
    for job_id in others:
        assert wait_status(api, job_id, {"finished"}, timeout=15)["attempt"] == 1


def test_a_forced_stop_cancels_only_its_async_job(
    api: TestClient, env: Backend, tmp_path: Path, pool: list, redis_client: Redis, short_cancel_grace: Any
):
    pool.append(proc := start_pool(env, tmp_path, concurrency=1))
    # A 10 s await without a checkpoint: the cooperative cancel is not seen, the forced stop
    # (asyncio cancellation of this job alone) ends it.
    deaf_to_checkpoints = submit(api, "async_steps", {"steps": 1, "step": 10}, queue=QUEUE)["job_id"]
    others = [submit(api, "async_sleeper", {"seconds": 6}, queue=QUEUE)["job_id"] for _ in range(2)]
    for job_id in [deaf_to_checkpoints, *others]:
        wait_status(api, job_id, {"started"})
    child = running_in(redis_client, deaf_to_checkpoints)
    asked = time.monotonic()
    assert api.post(f"/api/v1/jobs/{deaf_to_checkpoints}/cancel").status_code == 202
    wait_status(api, deaf_to_checkpoints, {"canceled"}, timeout=10)
    assert time.monotonic() - asked < 6
    assert next(sql_events_eventually(deaf_to_checkpoints, "canceled")).data["forced"] is True
    for job_id in others:
        assert wait_status(api, job_id, {"finished"}, timeout=15)["attempt"] == 1
    assert [w.name for w in children(redis_client, proc.name)] == [child]  # the child lived on


def test_an_async_job_deaf_to_cancellation_takes_its_child_and_the_others_are_retried(
    api: TestClient, env: Backend, tmp_path: Path, pool: list, redis_client: Redis, short_cancel_grace: Any
):
    pool.append(proc := start_pool(env, tmp_path, concurrency=1, CONVEYOR_ASYNC_STOP_GRACE="1"))
    deaf = submit(api, "async_deaf", {"seconds": 120}, queue=QUEUE)["job_id"]
    others = [submit(api, "async_sleeper", {"seconds": 8}, queue=QUEUE)["job_id"] for _ in range(2)]
    for job_id in [deaf, *others]:
        wait_status(api, job_id, {"started"})
    child = running_in(redis_client, deaf)
    assert api.post(f"/api/v1/jobs/{deaf}/cancel").status_code == 202
    wait_status(api, deaf, {"canceled"}, timeout=15)
    assert next(sql_events_eventually(deaf, "canceled")).data["forced"] is True
    for job_id in others:  # ended as a dead worker's jobs: a failed attempt, retried (once) at once
        retry = next(sql_events_eventually(job_id, "retry"))
        assert retry.data["error"]["type"] == "WorkHorseKilled"
        assert wait_status(api, job_id, {"finished"}, timeout=20)["attempt"] == 2
    wait_until(
        lambda: [w.name for w in children(redis_client, proc.name)] not in ([], [child]),
        message="a fresh child in its place",
    )


def test_async_jobs_still_running_at_shutdown_are_requeued(
    api: TestClient, env: Backend, tmp_path: Path, pool: list, redis_client: Redis
):
    pool.append(proc := start_pool(env, tmp_path, concurrency=1, CONVEYOR_SHUTDOWN_GRACE="1"))
    ids = [submit(api, "async_sleeper", {"seconds": 30}, queue=QUEUE)["job_id"] for _ in range(3)]
    for job_id in ids:
        wait_status(api, job_id, {"started"})
    assert proc.process is not None
    proc.process.send_signal(signal.SIGTERM)
    assert proc.process.wait(timeout=15) == 0
    for job_id in ids:
        snap = api.get(f"/api/v1/jobs/{job_id}").json()
        assert snap["status"] == "queued" and snap["attempt"] == 2
    assert sorted(get_queue(QUEUE, redis_client).get_job_ids()) == sorted(ids)
    for job_id in ids:
        get_queue(QUEUE, redis_client).remove(job_id)
        api.post(f"/api/v1/jobs/{job_id}/cancel")


def test_an_async_job_deaf_to_its_timeout_is_stopped_by_the_pool_with_its_child(
    api: TestClient, env: Backend, tmp_path: Path, pool: list
):
    pool.append(start_pool(env, tmp_path, concurrency=1, CONVEYOR_HARD_STOP_AFTER="1"))
    deaf = submit(api, "async_deaf", {"seconds": 60}, queue=QUEUE, timeout=1)["job_id"]
    other = submit(api, "async_sleeper", {"seconds": 6}, queue=QUEUE)["job_id"]
    wait_status(api, other, {"started"})
    final = wait_status(api, deaf, {"failed"}, timeout=15)
    assert final["error"]["type"] == "JobTimeout"
    retry = next(sql_events_eventually(other, "retry"))
    assert retry.data["error"]["type"] == "WorkHorseKilled"
    assert wait_status(api, other, {"finished"}, timeout=20)["attempt"] == 2
