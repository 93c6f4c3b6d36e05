"""arq: `arq bench.peer_apps.arq_app.WorkerSettings` (defaults: max_jobs 10, results kept 1 h)."""

from __future__ import annotations

import os
from typing import Any

from arq.connections import RedisSettings

from bench import peer_mark


async def noop(ctx: dict[str, Any]) -> None:
    await peer_mark.async_noop()


async def sleep(ctx: dict[str, Any]) -> None:
    await peer_mark.async_sleep()


class WorkerSettings:
    functions = [noop, sleep]
    redis_settings = RedisSettings.from_dsn(os.environ["REDIS_URL"])
