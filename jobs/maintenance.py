"""The maintenance loop of a worker's recorder process: reconciler passes and cron firings.

Both need SQL, which work-horses never open, and both are safe to run in
every worker at once (see `jobs.reconciler` and `jobs.schedules`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis

from jobs.db import open_session
from jobs.reconciler import Reconciler
from jobs.schedules import CronRunner, schedules
from jobs.settings import get_settings

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, client: Redis, *, name: str) -> None:
        settings = get_settings()
        self.client = client
        self.name = name
        self.interval = settings.reconcile_interval
        self.reconciler = Reconciler(client, sessions=open_session, name=name)
        self.declared = schedules() if settings.cron_enabled else []
        self.cron: CronRunner | None = None

    def _start_cron(self) -> CronRunner:
        return CronRunner(self.client, name=f"{self.name}.cron", declared=self.declared)

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set; a failing step is logged and tried again on its next turn."""
        next_pass = time.monotonic()
        try:
            while not stop.is_set():
                now = time.monotonic()
                wait = 1.0
                if self.interval > 0:
                    if now >= next_pass:
                        self._step(self.reconciler.run_pass)
                        next_pass = time.monotonic() + self.interval
                    wait = min(wait, max(0.0, next_pass - time.monotonic()))
                if self.declared and self.cron is None:
                    self.cron = self._step(self._start_cron)  # registers with Redis: retried if down
                if self.cron is not None:
                    until = self._step(self.cron.tick)
                    wait = min(wait, until if isinstance(until, float | int) else 1.0)
                stop.wait(max(0.05, wait))
        finally:
            if self.cron is not None:
                self._step(self.cron.register_death)

    def _step(self, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except Exception:
            log.exception("maintenance: %s failed", getattr(step, "__qualname__", step))
            return None
