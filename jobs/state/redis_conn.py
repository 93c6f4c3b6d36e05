"""The Redis client: one per process, created lazily, shared by RQ and the live store."""

from __future__ import annotations

import asyncio
import threading
import weakref

import redis.asyncio as aioredis
from redis import Redis

from jobs.errors import ServiceUnavailable
from jobs.settings import get_settings

ASYNC_MAX_CONNECTIONS = 100
_lock = threading.Lock()
_client: Redis | None = None
_client_url: str | None = None
# Keyed by the loop object itself (weakly): a new loop may reuse a closed one's id().
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aioredis.Redis]] = (
    weakref.WeakKeyDictionary()
)


def redis_url() -> str:
    url = get_settings().redis_url
    if not url:
        raise ServiceUnavailable(
            "REDIS_URL is not set. Point it at a Redis server, or run `conveyor dev`, "
            "which starts an embedded one."
        )
    return url


def get_redis() -> Redis:
    """The process's Redis client (bytes responses, as RQ needs).

    redis-py's pool notices a fork and opens fresh connections in the child,
    so a work-horse may use the client it inherited.
    """
    global _client, _client_url
    url = redis_url()
    if _client is not None and _client_url == url:
        return _client
    with _lock:
        if _client is None or _client_url != url:
            _client = Redis.from_url(
                url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30
            )
            _client_url = url
    return _client


def get_async_redis() -> aioredis.Redis:
    """The asyncio Redis client for the running event loop (one per loop and URL)."""
    url = redis_url()
    clients = _async_clients.setdefault(asyncio.get_running_loop(), {})
    client = clients.get(url)
    if client is None:
        # A blocking pool: a burst of more concurrent commands than connections waits for one
        # instead of failing (redis-py's default pool raises "Too many connections" at 100).
        pool: aioredis.BlockingConnectionPool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=ASYNC_MAX_CONNECTIONS,
            timeout=10,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        client = clients[url] = aioredis.Redis(connection_pool=pool)
    return client


def use_redis(client: Redis) -> None:
    """Make ``client`` the process's client (the worker shares RQ's connection)."""
    global _client, _client_url
    with _lock:
        _client, _client_url = client, redis_url()


def reset_redis() -> None:
    global _client, _client_url
    with _lock:
        _client = _client_url = None
        _async_clients.clear()
