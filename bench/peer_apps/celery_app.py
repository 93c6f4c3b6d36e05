"""Celery: `celery -A bench.peer_apps.celery_app worker` (defaults: prefork, one child per core,
no result backend, so results are not kept)."""

from __future__ import annotations

import os

from celery import Celery

from bench import peer_mark

app = Celery("bench", broker=os.environ["REDIS_URL"])


@app.task(name="noop")
def noop() -> None:
    peer_mark.noop()


@app.task(name="sleep")
def sleep() -> None:
    peer_mark.sleep()
