"""The naive pattern the fan-out benchmark compares against (seed 001's): every SSE client gets
its own Redis pub/sub subscription, opened when it connects and closed when it leaves.

Fair to it: async Redis (the seed's own advice), the same channel and documents as Conveyor,
no authentication cost, served by uvicorn with one worker like Conveyor's API.

    uvicorn bench.naive_sse:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

CHANNEL = "cv:snapshots"
client = aioredis.Redis.from_url(os.environ["REDIS_URL"], max_connections=1_000_000)


async def stream(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    prefix = b'{"job_id":"' + job_id.encode() + b'"'

    async def events() -> AsyncIterator[bytes]:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(CHANNEL)
        try:
            doc = await client.hget(f"cv:job:{job_id}", "_doc")
            if doc:
                yield b"data: " + doc + b"\n\n"
            async for message in pubsub.listen():
                data = message["data"]
                if data.startswith(prefix):
                    yield b"data: " + data + b"\n\n"
                    if b'"status":"finished"' in data or b'"status":"failed"' in data:
                        return
        finally:
            await pubsub.aclose()

    return StreamingResponse(events(), media_type="text/event-stream")


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/jobs/{job_id}/stream", stream), Route("/healthz", healthz)])
