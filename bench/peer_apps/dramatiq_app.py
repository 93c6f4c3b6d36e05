"""Dramatiq: `dramatiq bench.peer_apps.dramatiq_app` (defaults: one process per core, 8 threads
each, no results middleware)."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench import peer_mark

dramatiq.set_broker(RedisBroker(url=os.environ["REDIS_URL"]))


@dramatiq.actor(actor_name="noop")
def noop() -> None:
    peer_mark.noop()


@dramatiq.actor(actor_name="sleep")
def sleep() -> None:
    peer_mark.sleep()
