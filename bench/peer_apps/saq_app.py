"""SAQ: `saq bench.peer_apps.saq_app.settings` (defaults: concurrency 10, job records kept)."""

from __future__ import annotations

import os
from typing import Any

from saq import Queue

from bench import peer_mark

queue = Queue.from_url(os.environ["REDIS_URL"])


async def noop(ctx: dict[str, Any]) -> None:
    await peer_mark.async_noop()


async def sleep(ctx: dict[str, Any]) -> None:
    await peer_mark.async_sleep()


settings = {"queue": queue, "functions": [noop, sleep]}
