"""Taskiq: `taskiq worker bench.peer_apps.taskiq_app:broker` (defaults: 2 worker processes, the
README's RedisStreamBroker with acknowledgements, no result backend)."""

from __future__ import annotations

import os

from taskiq_redis import RedisStreamBroker

from bench import peer_mark

broker = RedisStreamBroker(url=os.environ["REDIS_URL"])


@broker.task(task_name="noop")
async def noop() -> None:
    await peer_mark.async_noop()


@broker.task(task_name="sleep")
async def sleep() -> None:
    await peer_mark.async_sleep()
