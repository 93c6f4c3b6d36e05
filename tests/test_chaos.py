"""Chaos, bounded and on loopback: many short jobs while workers are SIGKILLed and replaced at random.

Afterwards every job is terminal, no attempt ran to completion twice (a job
may complete again only in a later attempt, after its worker died), and SQL,
the live state and RQ agree on every job. Size it with CONVEYOR_CHAOS_JOBS
(default 500) and CONVEYOR_CHAOS_KILLS (default 8).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from redis import Redis
from sqlmodel import col, select

from jobs.history.db import session_scope
from jobs.history.models import Job
from jobs.queues.queueing import RQ_WAITING, statuses
from jobs.state.live import job_key
from jobs.status import TERMINAL
from tests.conftest import FAST_ENV, Backend, WorkerProcess
from tests.control_tasks import DONE_PREFIX
from tests.services import wait_until

QUEUE = "isolated"
JOBS = int(os.environ.get("CONVEYOR_CHAOS_JOBS", "500"))
KILLS = int(os.environ.get("CONVEYOR_CHAOS_KILLS", "8"))
WORKERS = 3


def live_states(client: Redis, ids: list[str]) -> dict[str, tuple[str, int, int]]:
    """(status, attempt, seq) of each job's live state."""
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(job_key(job_id), ["status", "attempt", "seq"])
        replies = pipe.execute()
    return {
        job_id: (status.decode().strip('"'), int(attempt), int(seq))
        for job_id, (status, attempt, seq) in zip(ids, replies, strict=True)
        if status is not None
    }


def sql_states(ids: list[str]) -> dict[str, tuple[str, int, int]]:
    with session_scope() as session:
        rows = session.exec(
            select(Job.job_id, Job.status, Job.attempt, Job.seq).where(col(Job.job_id).in_(ids))
        )
        return {job_id: (status, attempt, seq) for job_id, status, attempt, seq in rows}


def describe(client: Redis, job_ids: list[str]) -> str:
    """Where Conveyor and RQ stand on each job, for a failure message."""
    from jobs.queues.queueing import fetch, get_queue

    lines = []
    queue = get_queue(QUEUE, client)
    for job_id in job_ids[:10]:
        rq_job = fetch(job_id, client)
        lines.append(
            f"{job_id}: live={client.hmget(job_key(job_id), ['status', 'attempt', 'seq', 'worker'])} "
            f"rq={rq_job.get_status() if rq_job else None} in_queue={job_id in queue.get_job_ids()} "
            f"intermediate={job_id in queue.intermediate_queue.get_job_ids()} "
            f"started={job_id in queue.started_job_registry.get_job_ids(cleanup=False)} "
            f"worker={rq_job.worker_name if rq_job else None}"
        )
    return "\n".join(lines)


def test_chaos_no_job_is_lost_or_completed_twice(
    api: TestClient, env: Backend, tmp_path: Path, redis_client: Redis
):
    rng = random.Random(int(os.environ.get("CONVEYOR_CHAOS_SEED", "4")))
    workers: list[WorkerProcess] = []

    def spawn() -> None:
        name = f"chaos-{uuid.uuid4().hex[:6]}"
        workers.append(WorkerProcess(env, tmp_path / f"{name}.log", name, FAST_ENV, QUEUE).start())

    try:
        for _ in range(WORKERS):
            spawn()
        ids = [
            api.post(
                "/api/v1/jobs",
                json={"task": "chaos_step", "payload": {"seconds": rng.uniform(0.005, 0.03)}, "queue": QUEUE},
            ).json()["job_id"]
            for _ in range(JOBS)
        ]

        def all_terminal() -> bool:
            live = live_states(redis_client, ids)
            return len(live) == len(ids) and all(s in TERMINAL for s, _, _ in live.values())

        kills = 0
        deadline = time.monotonic() + 90
        while not all_terminal():
            if time.monotonic() > deadline:
                stuck = [i for i, (s, _, _) in live_states(redis_client, ids).items() if s not in TERMINAL]
                raise AssertionError(
                    "jobs still not terminal after the chaos:\n" + describe(redis_client, stuck)
                )
            time.sleep(rng.uniform(0.3, 1.2))
            if kills < KILLS:
                alive = [w for w in workers if w.process is not None and w.process.poll() is None]
                victim = rng.choice(alive)
                victim.kill_hard()
                kills += 1
                spawn()

        # SQL catches up (recorders of killed workers leave entries another recorder reclaims).
        def agreed() -> bool:
            return sql_states(ids) == live_states(redis_client, ids)

        wait_until(agreed, timeout=30, interval=0.5, message="SQL to agree with the live state")
    finally:
        for worker in workers:
            worker.kill_hard()

    live = live_states(redis_client, ids)
    by_status: dict[str, int] = {}
    for status, _, _ in live.values():
        by_status[status] = by_status.get(status, 0) + 1
    retried = [job_id for job_id, (_, attempt, _) in live.items() if attempt > 1]
    print(f"\nchaos: {JOBS} jobs, {kills} kills: {by_status}, {len(retried)} retried")

    done = dict(zip(ids, redis_client.mget([DONE_PREFIX + i for i in ids]), strict=True))
    for job_id, (status, attempt, _) in live.items():
        completions = int(done[job_id] or 0)
        assert completions <= attempt, f"job {job_id}: {completions} completions in {attempt} attempts"
        if attempt == 1:
            assert completions <= 1
        if status == "finished":
            assert completions >= 1
    rq = statuses(ids, redis_client)
    disagree = {
        job_id: (status, rq[job_id]) for job_id, (status, _, _) in live.items() if rq[job_id] != status
    }
    print(f"chaos: RQ's record differs for {len(disagree)} jobs: {sorted(set(disagree.values()))}")
    for job_id, (status, _, _) in live.items():
        assert status in ("finished", "failed"), (job_id, status)
        assert rq[job_id] not in RQ_WAITING, f"RQ would run {status} job {job_id} again"
    assert by_status.get("finished", 0) >= JOBS * 0.95, by_status
