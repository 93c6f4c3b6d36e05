"""AWS Lambda entry point for the reconciler, on a schedule (e.g. every minute).

Each invocation runs one pass. A warm container sweeps SQL for jobs Redis
lost every `CONVEYOR_RECONCILE_SWEEP_INTERVAL`, a cold one at once, and any
pass sweeps when Redis has lost its data (see `jobs.reconciler`).
"""

from __future__ import annotations

from typing import Any

from jobs.reconciler import Reconciler
from jobs.redis_conn import get_redis
from jobs.tasks import load_tasks

_reconciler: Reconciler | None = None


def handler(event: Any, context: Any) -> dict[str, Any]:
    global _reconciler
    if _reconciler is None or _reconciler.client is not get_redis():
        load_tasks()
        _reconciler = Reconciler(get_redis(), name="lambda")
    return _reconciler.run_pass().as_dict()
