"""Results: small ones travel inline in the snapshot; large ones by reference.

A result whose JSON is larger than `result_inline_max_bytes` must not ride in
the snapshot (it is copied into Redis, every pub/sub message, the journal, the
jobs row, list pages and Lambda responses, which stop at 6 MB). Where it goes:

1. The work-horse (which never opens SQL) stores the JSON text in Redis under
   ``cv:result:<job_id>:<attempt>`` with a TTL (`result_blob_ttl`: a safety
   net, not the store), and records the job finished with ``result: null`` and
   ``result_ref: {"url", "size_bytes", "sha256"}``.
2. The recorder, applying that `finished` entry, copies the text into the
   `job_results` table in the same transaction as the jobs row, then deletes
   the Redis key. A crash before the commit leaves the entry unacknowledged
   (replayed later, key still there); a crash after leaves the key to its TTL.
3. `GET /api/v1/jobs/{id}/result` serves the text from SQL, or from the Redis
   key in the moment before the recorder has moved it.

Results above `result_max_bytes` fail the job (`ResultTooLarge`): keep big
outputs in object storage and return their address.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from redis import Redis

from jobs.settings import get_settings
from jobs.storable import storable_json

BLOB_PREFIX = "cv:result:"


class ResultTooLarge(Exception):
    """A task returned more than `result_max_bytes` of JSON."""


def blob_key(job_id: str, attempt: int) -> str:
    return f"{BLOB_PREFIX}{job_id}:{attempt}"


def result_url(job_id: str) -> str:
    return f"/api/v1/jobs/{job_id}/result"


def encode_result(result: Any) -> bytes:
    """The result's JSON text, NUL-free like every journaled value (TypeError when it is not JSON data)."""
    return storable_json(result, separators=(",", ":"), ensure_ascii=False).encode()


def result_patch(job_id: str, attempt: int, result: Any, client: Redis) -> dict[str, Any]:
    """The snapshot fields that carry ``result``: inline, or stashed in Redis and referenced.

    Raises ResultTooLarge above the hard limit and TypeError for data JSON cannot hold.
    """
    settings = get_settings()
    body = encode_result(result)
    size = len(body)
    if size > settings.result_max_bytes:
        raise ResultTooLarge(
            f"The task's result is {size:,} bytes of JSON; the limit is {settings.result_max_bytes:,} "
            "(CONVEYOR_RESULT_MAX_BYTES). Store large outputs elsewhere and return their address."
        )
    if size <= settings.result_inline_max_bytes:
        return {"result": result, "result_ref": None}
    client.set(blob_key(job_id, attempt), body, ex=settings.result_blob_ttl)
    ref = {"url": result_url(job_id), "size_bytes": size, "sha256": hashlib.sha256(body).hexdigest()}
    return {"result": None, "result_ref": ref}


def discard_blob(job_id: str, attempt: int, client: Redis) -> None:
    """Drop a stashed result whose `finished` write was refused (the job ended otherwise)."""
    client.delete(blob_key(job_id, attempt))


def fetch_blobs(client: Redis, wanted: Iterable[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
    """The stashed results for (job_id, attempt) pairs that have one, in one round trip."""
    keys = list(dict.fromkeys(wanted))
    if not keys:
        return {}
    values = client.mget([blob_key(job_id, attempt) for job_id, attempt in keys])
    return {key: value for key, value in zip(keys, values, strict=True) if value is not None}
