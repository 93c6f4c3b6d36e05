"""One auto-pipelined Redis connection per event loop, for the hottest read of a job: its snapshot.

`GET /api/v1/jobs/{id}`, every stream's first read and every heartbeat re-read
fetch one hash's fields. Through redis-py's asyncio client that costs ~50 µs
of CPU per command (pool, retries, hooks), more than the rest of the request.
Here the commands that requests issue in the same event-loop turn go out in
one write on one connection and their replies are matched in order: a few µs
each (see docs/benchmarks.md). It speaks just enough RESP2 for that: AUTH,
SELECT and HMGET-style replies. Everything else keeps using redis-py.

Failures surface as redis-py's exceptions, so the API's 503 handling applies;
a broken connection fails its pending commands and the next command reconnects.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections import deque
from typing import Any

import redis.exceptions
from redis.connection import parse_url

from jobs.state.redis_conn import redis_url

REPLY_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
IDLE_CHECK_AFTER = 30.0  # like redis-py's health_check_interval: PING a connection idle this long
IDLE_CHECK_TIMEOUT = 2.0
_INCOMPLETE = object()


def encode_command(args: tuple[str | bytes, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse_reply(buf: bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 reply starting at ``pos``: (value, next position), or (_INCOMPLETE, pos)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind, line = buf[pos : pos + 1], buf[pos + 1 : end]
    after = end + 2
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(buf) < after + size + 2:
            return _INCOMPLETE, pos
        return buf[after : after + size], after + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = parse_reply(buf, after)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, after
    if kind == b"+":
        return line, after
    if kind == b":":
        return int(line), after
    if kind == b"-":
        return redis.exceptions.ResponseError(line.decode(errors="replace")), after
    raise redis.exceptions.InvalidResponse(f"unexpected reply type {kind!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: PipelinedRedis) -> None:
        self.owner = owner
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        pos = 0
        waiting = self.owner._waiting
        try:
            while pos < len(self.buffer):
                value, next_pos = parse_reply(self.buffer, pos)
                if value is _INCOMPLETE:
                    break
                pos = next_pos
                future = waiting.popleft()
                if future.done():
                    continue
                if isinstance(value, redis.exceptions.ResponseError):
                    future.set_exception(value)
                else:
                    future.set_result(value)
        except (ValueError, IndexError, redis.exceptions.InvalidResponse) as exc:
            self.owner._fail(redis.exceptions.ConnectionError(f"bad reply from Redis: {exc}"))
            return
        self.buffer = self.buffer[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._fail(redis.exceptions.ConnectionError(f"Redis closed the connection: {exc}"))


class PipelinedRedis:
    """A lazily connected, auto-pipelined connection bound to the running event loop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._transport: Any = None
        self._connecting: asyncio.Future[None] | None = None
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._last_used = 0.0

    async def command(self, *args: str | bytes) -> Any:
        """Send one command (pipelined with others from this loop turn) and return its reply."""
        now = asyncio.get_running_loop().time()
        if self._transport is not None and now - self._last_used > IDLE_CHECK_AFTER:
            self._last_used = now
            await self._check_alive()  # a connection idle for long (a frozen Lambda) may be dead
        self._last_used = now
        if self._transport is None:
            await self._connect()
        future = self._queue(encode_command(args))
        try:
            async with asyncio.timeout(REPLY_TIMEOUT):
                return await future
        except TimeoutError:
            self._fail(redis.exceptions.TimeoutError("Redis did not answer in time"))
            raise redis.exceptions.TimeoutError("Redis did not answer in time") from None

    async def _check_alive(self) -> None:
        try:
            async with asyncio.timeout(IDLE_CHECK_TIMEOUT):
                await self._queue(encode_command(("PING",)))
        except (TimeoutError, redis.exceptions.RedisError):
            self._fail(redis.exceptions.ConnectionError("an idle Redis connection stopped answering"))

    def _queue(self, packed: bytes) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._out.append(packed)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def _fail(self, exc: Exception) -> None:
        transport, self._transport = self._transport, None
        self._out.clear()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        if transport is not None:
            transport.abort()

    async def _connect(self) -> None:
        if self._connecting is not None:  # another request is connecting: share its attempt
            await asyncio.shield(self._connecting)
            if self._transport is None:
                raise redis.exceptions.ConnectionError("could not connect to Redis")
            return
        self._connecting = asyncio.get_running_loop().create_future()
        try:
            await self._open()
            self._connecting.set_result(None)
        except BaseException as exc:
            shared = exc if isinstance(exc, redis.exceptions.RedisError) else None
            self._connecting.set_exception(shared or redis.exceptions.ConnectionError(repr(exc)))
            self._connecting.exception()  # retrieved: waiters re-raise it, nobody else must
            self._fail(redis.exceptions.ConnectionError("connecting to Redis failed"))
            raise
        finally:
            self._connecting = None

    async def _open(self) -> None:
        options = parse_url(self.url)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                if "path" in options:
                    transport, _ = await loop.create_unix_connection(lambda: _Protocol(self), options["path"])
                else:
                    tls = ssl.create_default_context() if self.url.startswith("rediss://") else None
                    host, port = options.get("host", "localhost"), options.get("port", 6379)
                    transport, _ = await loop.create_connection(lambda: _Protocol(self), host, port, ssl=tls)
        except (OSError, TimeoutError) as exc:
            raise redis.exceptions.ConnectionError(f"could not connect to Redis: {exc}") from None
        self._transport = transport
        handshake = []
        if options.get("password"):
            user = [options["username"]] if options.get("username") else []
            handshake.append(self._queue(encode_command(("AUTH", *user, options["password"]))))
        if options.get("db"):
            handshake.append(self._queue(encode_command(("SELECT", str(options["db"])))))
        if handshake:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await asyncio.gather(*handshake)


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PipelinedRedis] = weakref.WeakKeyDictionary()


def pipelined_redis() -> PipelinedRedis:
    """The running loop's pipelined connection (reconfigured if REDIS_URL changed)."""
    loop = asyncio.get_running_loop()
    url = redis_url()
    client = _clients.get(loop)
    if client is None or client.url != url:
        client = _clients[loop] = PipelinedRedis(url)
    return client


def close_pipelined_redis() -> None:
    """Close the running loop's connection, if any (the app's lifespan calls this at shutdown)."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        client._fail(redis.exceptions.ConnectionError("the connection was closed at shutdown"))
