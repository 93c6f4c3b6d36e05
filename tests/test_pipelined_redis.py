"""The API's auto-pipelined Redis connection: replies matched in order, errors kept to their command,
recovery from a dropped connection."""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions
from redis import Redis

from jobs.state.pipelined_redis import (
    _INCOMPLETE,
    PipelinedRedis,
    _Protocol,
    encode_command,
    parse_reply,
    pipelined_redis,
)
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


# --- the RESP2 reader on its own: every reply type, every cut, nothing but bytes --------------------

NESTED = b"*3\r\n*2\r\n$1\r\na\r\n:7\r\n*-1\r\n*2\r\n-ERR inner\r\n$0\r\n\r\n"


def test_parse_reply_reads_nested_arrays_nils_and_errors_inside_arrays():
    value, end = parse_reply(NESTED, 0)
    assert end == len(NESTED)
    assert value[0] == [b"a", 7]
    assert value[1] is None  # a nil array
    assert isinstance(value[2][0], redis.exceptions.ResponseError) and str(value[2][0]) == "ERR inner"
    assert value[2][1] == b""  # an empty bulk string is not nil
    assert parse_reply(b"*0\r\n", 0) == ([], 4)
    assert parse_reply(b"*1\r\n*1\r\n*1\r\n$-1\r\n", 0) == ([[[None]]], 17)


def test_parse_reply_keeps_crlf_inside_bulk_strings_and_starts_where_told():
    payload = b"line one\r\nline two\r\n"
    reply = b"$%d\r\n%s\r\n" % (len(payload), payload)
    assert parse_reply(reply, 0) == (payload, len(reply))
    two = b"+OK\r\n" + reply
    assert parse_reply(two, 5) == (payload, len(two))
    error, end = parse_reply(b"-WRONGTYPE Operation against a key\r\n", 0)
    assert isinstance(error, redis.exceptions.ResponseError) and end == 36
    assert "WRONGTYPE" in str(error)


def test_every_cut_of_a_reply_is_incomplete_and_never_moves_the_position():
    big = b"z" * 300_000
    replies = [NESTED, b"$%d\r\n%s\r\n" % (len(big), big), b":-12\r\n", b"+PONG\r\n"]
    for reply in replies:
        cuts = list(range(len(reply))) if len(reply) < 100 else [0, 1, 5, 9, 10, 1000, len(reply) - 2]
        for cut in cuts:
            assert parse_reply(b"+x\r\n" + reply[:cut], 4) == (_INCOMPLETE, 4), (reply[:20], cut)
        assert parse_reply(reply, 0)[1] == len(reply)


def test_parse_reply_reads_a_big_bulk_string_whole():
    big = bytes(range(256)) * 40_000  # ~10 MB, every byte value, CR and LF included
    reply = b"$%d\r\n%s\r\n" % (len(big), big)
    value, end = parse_reply(reply, 0)
    assert value == big and end == len(reply)


def test_an_unknown_reply_type_is_refused():
    with pytest.raises(redis.exceptions.InvalidResponse):
        parse_reply(b"%2\r\n", 0)  # a RESP3 map: we speak RESP2 only


def _protocol_with(pending: int) -> tuple[PipelinedRedis, _Protocol, list[asyncio.Future[object]]]:
    client = PipelinedRedis("redis://127.0.0.1:9/0")  # never connects: bytes are fed by hand
    futures: list[asyncio.Future[object]] = [
        asyncio.get_running_loop().create_future() for _ in range(pending)
    ]
    client._waiting.extend(futures)
    return client, _Protocol(client), futures


def test_replies_split_across_reads_reach_their_commands_in_order():
    big = b"q" * 200_000
    stream = NESTED + b"$%d\r\n%s\r\n" % (len(big), big) + b"-ERR second\r\n" + b":3\r\n"

    async def scenario() -> None:
        for size in (1, 7, 4096):
            _, protocol, futures = _protocol_with(4)
            # Byte by byte only through the nested reply and the big one's head, then the rest.
            end = 200 if size == 1 else len(stream)
            for at in range(0, end, size):
                protocol.data_received(stream[at : at + size])
            protocol.data_received(stream[end:])
            assert all(future.done() for future in futures)
            assert futures[0].result()[0] == [b"a", 7]  # type: ignore[index]
            assert futures[1].result() == big
            assert isinstance(futures[2].exception(), redis.exceptions.ResponseError)
            assert futures[3].result() == 3
            assert protocol.buffer == b""

    run_async(scenario())


def test_a_malformed_reply_fails_every_pending_command_as_a_connection_error():
    async def scenario() -> None:
        client, protocol, futures = _protocol_with(2)
        protocol.data_received(b"$abc\r\n")
        for future in futures:
            assert isinstance(future.exception(), redis.exceptions.ConnectionError)
        assert not client._waiting

    run_async(scenario())


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
    import jobs.state.pipelined_redis as module

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
