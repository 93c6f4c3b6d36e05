"""How `conveyor api` runs uvicorn: its HTTP protocol with a deadline for request headers.

uvicorn times out an idle keep-alive connection, but not one that is still sending a request:
a client that connects and sends nothing, or half a request line, holds its socket (a file
descriptor) for as long as it likes, and a few hundred of them exhaust the process's files.
These protocols give each request's line and headers ``CONVEYOR_HEADER_TIMEOUT`` seconds,
counted from the connection (for its first request) or from the request's first byte (after
that, an idle keep-alive connection is uvicorn's to close); past it the connection is closed.
Once the headers are in, nothing changes: a stream, a long poll or a WebSocket is as long
as its route makes it.

Select with ``uvicorn --http api.server:HeaderDeadlineProtocol`` (what `conveyor api`, and so
`conveyor dev` and the Docker image, pass).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from jobs.settings import get_settings

log = logging.getLogger(__name__)

PROTOCOL = "api.server:HeaderDeadlineProtocol"


class HeaderDeadline:
    """The header deadline of one connection (its protocol calls in at each step)."""

    __slots__ = ("protocol", "timer")

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.timer: asyncio.TimerHandle | None = None

    def between_requests(self) -> bool:
        cycle = self.protocol.cycle
        return cycle is None or bool(cycle.response_complete)

    def arm(self) -> None:
        if self.timer is None:
            self.timer = self.protocol.loop.call_later(get_settings().header_timeout, self.expire)

    def arm_if_between_requests(self) -> None:
        """On data: the first byte of a new request starts its deadline."""
        if self.timer is None and self.between_requests():
            self.arm()

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def expire(self) -> None:
        self.timer = None
        transport = self.protocol.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_protocol() is not self.protocol or not self.between_requests():
            return  # upgraded to a WebSocket, or a request is being served
        client = self.protocol.client
        log.info(
            "closed a connection from %s: no complete request headers within %.1f s",
            f"{client[0]}:{client[1]}" if client else "?",
            get_settings().header_timeout,
        )
        transport.close()


class _DeadlineWiring:
    """What both protocols share: arm the deadline on connect and between requests, drop it on
    close. Each protocol says for itself when the headers are in."""

    deadline: HeaderDeadline

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = HeaderDeadline(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self.deadline.arm()

    def data_received(self, data: bytes) -> None:
        self.deadline.arm_if_between_requests()
        super().data_received(data)  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline.disarm()
        super().connection_lost(exc)  # type: ignore[misc]


class H11HeaderDeadline(_DeadlineWiring, H11Protocol):
    """uvicorn's h11 protocol with a header deadline."""

    def handle_events(self) -> None:
        super().handle_events()
        if not self.deadline.between_requests() or self.transport.get_protocol() is not self:
            self.deadline.disarm()  # the headers are in (a request is being served, or upgraded)


HeaderDeadlineProtocol: type[asyncio.Protocol]

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional in uvicorn; h11 always comes with it
    HeaderDeadlineProtocol = H11HeaderDeadline
else:

    class HttpToolsHeaderDeadline(_DeadlineWiring, HttpToolsProtocol):
        """uvicorn's httptools protocol (its default when httptools is installed) with a header deadline."""

        def on_headers_complete(self) -> None:
            self.deadline.disarm()
            super().on_headers_complete()

    HeaderDeadlineProtocol = HttpToolsHeaderDeadline


def uvicorn_options() -> dict[str, Any]:
    """What every server of this app passes uvicorn (`conveyor api`; `conveyor dev` runs that)."""
    settings = get_settings()
    return {
        "http": PROTOCOL,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.trusted_proxies,
        "log_level": settings.log_level.lower(),
    }
