"""A Python client for Conveyor's API. It needs only httpx (no server code).

    from conveyor_client import Client

    with Client("http://127.0.0.1:8000", api_key="cvk_...") as conveyor:
        job = conveyor.submit("long_task", {"n": 50})
        for snap in conveyor.updates(job.job_id):      # live: SSE, else long poll, else polling
            print(snap.status, snap.progress, snap.message)

`AsyncClient` offers the same calls for asyncio (`async for snap in client.updates(...)`).
"""

from conveyor_client.aio import AsyncClient
from conveyor_client.client import CHANNELS, Client
from conveyor_client.errors import ConveyorAPIError
from conveyor_client.log_lines import LogLine, LogPage
from conveyor_client.snapshot import TERMINAL, BatchCreated, BatchSnapshot, Page, Snapshot

__all__ = [
    "CHANNELS",
    "TERMINAL",
    "AsyncClient",
    "BatchCreated",
    "BatchSnapshot",
    "Client",
    "ConveyorAPIError",
    "LogLine",
    "LogPage",
    "Page",
    "Snapshot",
]
