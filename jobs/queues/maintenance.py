"""The maintenance loop of a worker's recorder process: reconciler passes and cron firings,
with the webhook sender in a thread beside it.

All need SQL, which work-horses never open, and all are safe to run in
every worker at once (see `jobs.queues.reconciler`, `jobs.queues.schedules` and `jobs.webhooks.sender`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis

from jobs.history.db import open_session
from jobs.queues.reconciler import Reconciler
from jobs.queues.schedules import CronRunner, schedules
from jobs.settings import get_settings
from jobs.webhooks.sender import WebhookSender

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
        sender = self._start_sender(stop)
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
            if sender is not None:
                sender.join(timeout=get_settings().webhook_timeout + 1)

    def _start_sender(self, stop: threading.Event) -> threading.Thread | None:
        """The webhook sender's thread (its own, so a slow endpoint never delays a reconciler pass)."""
        if get_settings().webhook_senders <= 0:
            return None
        sender = WebhookSender(self.client, name=self.name)
        thread = threading.Thread(target=sender.run, args=(stop,), name="webhooks", daemon=True)
        thread.start()
        return thread

    def _step(self, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except Exception:
            log.exception("maintenance: %s failed", getattr(step, "__qualname__", step))
            return None
