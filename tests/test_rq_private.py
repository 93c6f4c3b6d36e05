"""RQ's private API as Conveyor uses it (jobs/queues/rq_private.py): each use still works on the installed RQ.

A failure here names what RQ renamed or reshaped: fix jobs/queues/rq_private.py, not its callers.
"""

from __future__ import annotations

import inspect
import uuid
from datetime import UTC, datetime
from typing import Any

import rq
from rq import Worker
from rq.cron import CronJob, CronScheduler
from rq.executions import Execution
from rq.job import Job as RQJob

from jobs.queues import rq_private
from jobs.queues.queueing import RUNNER, SERIALIZER, get_queue
from tests.conftest import Backend


def test_the_installed_rq_is_the_one_the_private_calls_were_checked_against():
    assert rq.__version__ == rq_private.CHECKED_AGAINST, (
        f"RQ is now {rq.__version__}: review every function in jobs/queues/rq_private.py against its "
        "changelog, run tests/test_rq_private.py, then update CHECKED_AGAINST"
    )


def test_enqueue_without_dependency_check_puts_the_job_first_inside_a_multi(env: Backend, redis_client: Any):
    params = inspect.signature(rq.Queue._enqueue_job).parameters
    assert {"job", "pipeline", "at_front"} <= set(params), "Queue._enqueue_job changed its signature"
    queue = get_queue(f"rqp-{uuid.uuid4().hex[:6]}", redis_client)
    first = queue.enqueue_call(RUNNER, kwargs={"task": "x", "payload": {}})
    again = queue.create_job(RUNNER, kwargs={"task": "x", "payload": {}})
    try:
        with redis_client.pipeline() as pipe:
            pipe.multi()
            rq_private.enqueue_without_dependency_check(queue, again, pipeline=pipe)
            pipe.execute()
        assert queue.get_job_ids()[:2] == [again.id, first.id]
    finally:
        queue.empty()


def test_add_cron_jobs_reaches_the_schedulers_job_list(env: Backend, redis_client: Any):
    scheduler = CronScheduler(connection=redis_client, name=f"rqp-{uuid.uuid4().hex[:6]}")
    job = CronJob(queue_name="default", func=print, interval=60)
    rq_private.add_cron_jobs(scheduler, [job])
    assert scheduler.get_jobs() == [job], "CronScheduler no longer keeps its jobs in _cron_jobs"


def test_execution_key_is_where_rq_records_the_worker_of_an_execution(env: Backend, redis_client: Any):
    key = rq_private.execution_key("job-1", "exec-1", redis_client)
    assert key == Execution("exec-1", "job-1", redis_client).key == "rq:execution:job-1:exec-1"
    assert "worker_name" in Execution("exec-1", "job-1", redis_client, worker_name="w").serialize()


def test_the_worker_shutdown_and_horse_state_is_where_rq_keeps_it(env: Backend, redis_client: Any):
    worker = Worker([f"rqp-{uuid.uuid4().hex[:6]}"], connection=redis_client, serializer=SERIALIZER)
    assert rq_private.shutdown_requested_at(worker) is None
    assert rq_private.first_shutdown_signal_at(worker) is None
    now = datetime.now(UTC)
    worker._shutdown_requested_date = now
    assert rq_private.first_shutdown_signal_at(worker) == now
    assert rq_private.shutdown_requested_at(worker) is None  # a date alone is not a stop request
    worker._stop_requested = True
    assert rq_private.shutdown_requested_at(worker) == now
    worker._horse_pid = 4242
    assert worker.horse_pid == 4242, "Worker.horse_pid no longer reads _horse_pid"
    rq_private.forget_work_horse(worker)
    assert worker.horse_pid == 0


def test_rq_key_layouts_the_tests_and_reconciler_rely_on():
    assert RQJob.key_for("j") == "rq:job:j"
    assert Worker.redis_worker_namespace_prefix == "rq:worker:"
