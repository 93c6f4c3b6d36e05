"""The API's auto-pipelined Redis connection: replies matched in order, errors kept to their command,
recovery from a dropped connection."""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions
from redis import Redis

from api.pipelined_redis import _INCOMPLETE, PipelinedRedis, encode_command, parse_reply, pipelined_redis
from tests.conftest import Backend
from tests.live_support import run_async


def test_parse_reply_handles_every_reply_type_and_partial_input():
    assert parse_reply(b"$5\r\nhello\r\n", 0) == (b"hello", 11)
    assert parse_reply(b"$-1\r\n", 0) == (None, 5)
    assert parse_reply(b"*2\r\n$1\r\na\r\n$-1\r\n", 0) == ([b"a", None], 16)
    assert parse_reply(b":42\r\n+OK\r\n", 0) == (42, 5)
    assert parse_reply(b":42\r\n+OK\r\n", 5) == (b"OK", 10)
    error, _ = parse_reply(b"-WRONGTYPE nope\r\n", 0)
    assert isinstance(error, redis.exceptions.ResponseError)
    for partial in (b"$5\r\nhel", b"*2\r\n$1\r\na\r\n", b"*2\r", b""):
        assert parse_reply(partial, 0) == (_INCOMPLETE, 0)
    assert encode_command(("HMGET", "k", b"\x00f")) == b"*3\r\n$5\r\nHMGET\r\n$1\r\nk\r\n$2\r\n\x00f\r\n"


def test_concurrent_commands_get_their_own_replies(env: Backend, redis_client: Redis):
    big = b"x" * 1_000_000  # arrives in many reads
    redis_client.hset("pipe:big", mapping={"a": big, "b": "small"})
    for i in range(200):
        redis_client.hset(f"pipe:{i}", mapping={"n": str(i)})

    async def scenario() -> None:
        client = pipelined_redis()
        replies = await asyncio.gather(
            *(client.command("HMGET", f"pipe:{i}", "n", "missing") for i in range(200)),
            client.command("HMGET", "pipe:big", "a", "b"),
            client.command("PING"),
        )
        assert replies[:200] == [[str(i).encode(), None] for i in range(200)]
        assert replies[200] == [big, b"small"]
        assert replies[201] == b"PONG"
        # An error belongs to its command alone.
        results = await asyncio.gather(
            client.command("HMGET", "pipe:1", "n"),
            client.command("LPUSH", "pipe:1", "x"),  # WRONGTYPE: a hash
            client.command("HMGET", "pipe:2", "n"),
            return_exceptions=True,
        )
        assert results[0] == [b"1"] and results[2] == [b"2"]
        assert isinstance(results[1], redis.exceptions.ResponseError)

    run_async(scenario())


def test_a_dropped_connection_fails_pending_commands_and_the_next_one_reconnects(
    env: Backend, redis_client: Redis
):
    redis_client.hset("pipe:k", mapping={"f": "v"})

    async def scenario() -> None:
        client = pipelined_redis()
        assert await client.command("HMGET", "pipe:k", "f") == [b"v"]
        own_id = await client.command("CLIENT", "ID")
        blocked = asyncio.ensure_future(client.command("BLPOP", "pipe:never", "5"))
        await asyncio.sleep(0.1)
        killed = await asyncio.get_running_loop().run_in_executor(
            None, lambda: redis_client.client_kill_filter(_id=own_id)
        )
        assert killed == 1
        with pytest.raises(redis.exceptions.ConnectionError):
            await blocked
        assert await client.command("HMGET", "pipe:k", "f") == [b"v"]  # and the right db again

    run_async(scenario())


def test_an_unreachable_redis_is_a_connection_error(env: Backend):
    async def scenario() -> None:
        with pytest.raises(redis.exceptions.ConnectionError):
            await PipelinedRedis("redis://127.0.0.1:9/0").command("PING")

    run_async(scenario())


def test_a_connection_dropped_while_idle_is_replaced(env: Backend, redis_client: Redis, monkeypatch):
    import api.pipelined_redis as module

    redis_client.hset("pipe:k", mapping={"f": "v"})
    monkeypatch.setattr(module, "IDLE_CHECK_AFTER", 0.05)

    async def scenario() -> None:
        client = pipelined_redis()
        own_id = await client.command("CLIENT", "ID")
        # Redis drops the idle connection; the next command notices, reconnects and succeeds.
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: redis_client.client_kill_filter(_id=own_id)
        )
        await asyncio.sleep(0.1)
        assert await client.command("HMGET", "pipe:k", "f") == [b"v"]
        assert await client.command("CLIENT", "ID") != own_id

    run_async(scenario())
