"""AWS Lambda entry point for the reconciler, on a schedule (e.g. every minute).

Each invocation runs one pass. A warm container sweeps SQL for jobs Redis
lost every `CONVEYOR_RECONCILE_SWEEP_INTERVAL`, a cold one at once, and any
pass sweeps when Redis has lost its data (see `jobs.queues.reconciler`).

It also publishes `BacklogPerWorker` (jobs waiting in RQ's queues per live
worker) to CloudWatch under `CONVEYOR_METRICS_NAMESPACE`: the ECS worker
service in infra/template.yaml scales on it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from redis import Redis
from rq import Worker

from jobs.history.db import open_session
from jobs.queues.queueing import get_queue
from jobs.queues.reconciler import Reconciler
from jobs.settings import get_settings
from jobs.state.redis_conn import get_redis
from jobs.tasks import load_tasks

log = logging.getLogger(__name__)

_reconciler: Reconciler | None = None


def backlog_per_worker(client: Redis) -> tuple[int, int, float]:
    """(jobs waiting in the configured queues, live workers, waiting jobs per worker).

    With no worker alive the backlog itself is returned, so any waiting job asks for capacity.
    """
    waiting = sum(get_queue(name, client).count for name in get_settings().queues)
    workers = int(Worker.count(connection=client))
    return waiting, workers, float(waiting) / max(1, workers)


def publish_backlog(value: float) -> bool:
    """Put the metric to CloudWatch (only inside Lambda, where boto3 and credentials exist)."""
    if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return False
    try:
        import boto3  # the Lambda runtime ships it; imported here to keep it off every other path

        boto3.client("cloudwatch").put_metric_data(
            Namespace=get_settings().metrics_namespace,
            MetricData=[{"MetricName": "BacklogPerWorker", "Value": value, "Unit": "Count"}],
        )
        return True
    except Exception:  # a metric must never fail the reconciler's pass
        log.warning("could not publish BacklogPerWorker", exc_info=True)
        return False


def handler(event: Any, context: Any) -> dict[str, Any]:
    global _reconciler
    client = get_redis()
    if _reconciler is None or _reconciler.client is not client:
        load_tasks()
        _reconciler = Reconciler(client, sessions=open_session, name="lambda")
    report = _reconciler.run_pass().as_dict()
    waiting, workers, per_worker = backlog_per_worker(client)
    report["backlog"] = {
        "waiting": waiting,
        "workers": workers,
        "per_worker": per_worker,
        "published": publish_backlog(per_worker),
    }
    return report
