"""The recorder process's life: replay the journal into SQL, with the maintenance loop beside it.

Its entry point is worker/recorder.py (`python -m worker.recorder`, which the worker starts);
`conveyor recorder` runs the same function. Kept apart from worker/main.py so the worker
itself imports no SQL library.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from redis import Redis

from jobs.history.log_records import run_copier
from jobs.history.recorder import Recorder
from jobs.queues.maintenance import Maintenance
from jobs.settings import get_settings
from jobs.state.redis_conn import redis_url, use_redis
from jobs.tasks import load_tasks
from worker.main import configure_logging, worker_name


def run_recorder(
    name: str | None = None, *, maintenance: bool = True, stop: threading.Event | None = None
) -> None:
    """Replay the journal into SQL until SIGTERM/SIGINT (or ``stop``); then drain what is left.

    Beside it, a thread runs the maintenance loop: the reconciler and the
    recurring (cron) jobs, both of which need SQL, which the pool's processes never open;
    another copies jobs' logs from Redis into SQL (jobs/history/log_records.py).
    """
    configure_logging()
    if stop is None:
        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            assert stop is not None
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    settings = get_settings()
    consumer = name or f"{worker_name()}.recorder"
    client = Redis.from_url(redis_url(), socket_timeout=30)
    use_redis(client)
    thread = None
    if maintenance:
        load_tasks()
        loop = Maintenance(client, name=consumer)
        thread = threading.Thread(target=loop.run, args=(stop,), name="maintenance", daemon=True)
        thread.start()
    copier = threading.Thread(target=run_copier, args=(client, stop), name="log-copier", daemon=True)
    copier.start()
    recorder = Recorder(client, consumer=consumer, claim_idle=settings.recorder_claim_idle)
    recorder.run(stop, block=0.5)
    recorder.drain()
    copier.join(timeout=10)
    if thread is not None:
        thread.join(timeout=10)
