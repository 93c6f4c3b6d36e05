"""Errors the client raises, and which failures it retries."""

from __future__ import annotations

from typing import Any

import httpx


class ConveyorAPIError(Exception):
    """The API answered with an error status; ``detail`` is its human-readable message."""

    def __init__(self, status_code: int, detail: Any, body: Any = None) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.body = body


class ChannelUnavailable(Exception):
    """A live channel (SSE, long poll) is not served here, e.g. a proxy strips it: use the next."""


# Failures after which a request certainly never reached the server: safe to retry any method.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures after which it may have: retried only for requests that are safe to repeat.
MAYBE_SENT = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadTimeout)
# Statuses a proxy or a briefly unavailable store answers with: worth a retry when safe.
RETRY_STATUSES = frozenset({502, 503, 504})
# Statuses that mean "this channel is not served here", as opposed to an error about the job.
UNSERVED_STATUSES = frozenset({404, 405, 406, 501})


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        body, detail = response.text, response.text or response.reason_phrase
    raise ConveyorAPIError(response.status_code, detail, body)


def is_safe_to_repeat(method: str, headers: httpx.Headers) -> bool:
    """GETs, and writes carrying an Idempotency-Key, may be sent again after an unclear failure."""
    return method.upper() in ("GET", "HEAD", "OPTIONS") or "idempotency-key" in headers
