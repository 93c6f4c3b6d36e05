"""A Python client for Conveyor's API. It needs only httpx (no server code).

from conveyor_client import Client

with Client("http://127.0.0.1:8000", api_key="cvk_...") as conveyor:
    job = conveyor.submit("long_task", {"n": 50})
    print(conveyor.get(job.job_id).status)
"""

from conveyor_client.client import Client, ConveyorAPIError, Page, Snapshot

__all__ = ["Client", "ConveyorAPIError", "Page", "Snapshot"]
