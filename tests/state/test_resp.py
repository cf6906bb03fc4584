"""The lean Redis client of the request path (regiongate.state.resp): replies matched to commands in
order over one pipelined connection, scripts reloaded when Redis forgot them, errors shaped as redis-py's,
and a silent or closed server failing the commands that wait on it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.exceptions

from regiongate.state.resp import INCOMPLETE, Replies, RespClient, encode
from tests.support.scale import REDIS_DB, shared_redis


def test_replies_of_every_kind_in_order_and_a_partial_one_waits() -> None:
    first = b"*4\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*1\r\n+OK\r\n"
    errors = b"-ERR no\r\n-NOSCRIPT No matching script\r\n-LOADING Redis is loading\r\n"
    r = Replies()
    r.feed(first + errors)
    assert r.next() == [42, b"abc", None, [b"OK"]]
    err = r.next()
    assert type(err) is redis.exceptions.ResponseError and str(err) == "ERR no"
    assert isinstance(r.next(), redis.exceptions.NoScriptError)
    assert isinstance(r.next(), redis.exceptions.BusyLoadingError)
    assert r.next() is INCOMPLETE
    for cut in range(1, len(first)):  # every prefix of a reply is incomplete, never a wrong value
        r = Replies()
        r.feed(first[:cut])
        assert r.next() is INCOMPLETE
        r.feed(first[cut:])
        assert r.next() == [42, b"abc", None, [b"OK"]]
    r = Replies()
    r.feed(b"?what\r\n")
    with pytest.raises(redis.exceptions.InvalidResponse):
        r.next()


def test_encode_is_a_resp_array_of_bulk_strings() -> None:
    assert encode(["SET", "k", 1, b"\xff"]) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$1\r\n\xff\r\n"


async def test_concurrent_commands_share_one_connection_in_order() -> None:
    c = RespClient(shared_redis(), 5.0)
    key = f"rgtest:{uuid.uuid4().hex}"
    try:
        got = await asyncio.gather(*[c.execute("INCR", key) for _ in range(200)])
        assert got == list(range(1, 201))  # each reply went to the command that asked
        assert await c.execute("GET", key) == b"200"
        with pytest.raises(redis.exceptions.ResponseError):
            await c.execute("LPUSH", key, "x")  # wrong type: an error reply, the connection goes on
        assert await c.execute("DEL", key) == 1
    finally:
        await c.aclose()


async def test_the_url_selects_the_database() -> None:
    c = RespClient(shared_redis(), 5.0)
    key = f"rgtest:{uuid.uuid4().hex}"
    try:
        await c.execute("SET", key, "here", "PX", 60_000)
        sync = redis.Redis(port=6379, db=REDIS_DB)
        assert sync.get(key) == b"here"
        sync.close()
    finally:
        await c.execute("DEL", key)
        await c.aclose()


async def test_a_script_is_loaded_again_after_redis_forgot_it() -> None:
    c = RespClient(shared_redis(), 5.0)
    script = c.register_script(f"return {{KEYS[1], ARGV[1], {uuid.uuid4().int % 1000}}}")
    try:
        first = await script(keys=["k"], args=["v"])
        assert first[:2] == [b"k", b"v"]
        assert await c.execute("SCRIPT", "EXISTS", script.sha) == [1]
        # Another script of this test, unknown to Redis: EVALSHA gets NOSCRIPT, the client sends EVAL.
        fresh = c.register_script(f"return '{uuid.uuid4().hex}'")
        assert await c.execute("SCRIPT", "EXISTS", fresh.sha) == [0]
        assert isinstance(await fresh(), bytes)
        assert await c.execute("SCRIPT", "EXISTS", fresh.sha) == [1]
    finally:
        await c.aclose()


async def test_send_queues_a_command_without_waiting_for_its_reply() -> None:
    c = RespClient(shared_redis(), 5.0)
    key = f"rgtest:{uuid.uuid4().hex}"
    try:
        assert c.send("PING") is None  # not connected yet: the caller uses execute
        await c.execute("PING")
        pushed = c.send("RPUSH", key, "a", "b")
        assert pushed is not None
        assert await c.execute("LLEN", key) == 2  # sent after it on the one connection: it ran after it
        assert pushed.done() and pushed.result() == 2
        wrong = c.send("LPUSH", key)  # too few arguments: the error reply is the value, not an exception
        assert wrong is not None and isinstance(await wrong, redis.exceptions.ResponseError)
        script = c.register_script(f"return #ARGV + {uuid.uuid4().int % 1000}")
        base = int(script.src.rsplit(" ", 1)[1])
        unknown = script.send((), ["x"])
        assert unknown is not None and isinstance(await unknown, redis.exceptions.NoScriptError)
        loaded = script.send((), ["x"], load=True)  # by its source
        assert loaded is not None and await loaded == 1 + base
        by_sha = script.send((), [])
        assert by_sha is not None and await by_sha == base
        assert await c.execute("DEL", key) == 1
    finally:
        await c.aclose()


async def test_a_silent_server_times_out_and_the_next_command_connects_again() -> None:
    answer = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            if answer.is_set():
                writer.write(b"+PONG\r\n" * data.count(b"PING"))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = RespClient(f"redis://127.0.0.1:{port}", 0.2)
    try:
        waits = [asyncio.ensure_future(c.execute("PING")) for _ in range(3)]
        for w in waits:  # every command waiting on the dead connection fails, none hangs
            with pytest.raises(redis.exceptions.TimeoutError):
                await asyncio.wait_for(w, 5)
        answer.set()
        assert await asyncio.wait_for(c.execute("PING"), 5) == b"PONG"
    finally:
        await c.aclose()
        server.close()
        await server.wait_closed()


async def test_nothing_listening_is_a_connection_error() -> None:
    c = RespClient("redis://127.0.0.1:1/0", 1.0)
    with pytest.raises(redis.exceptions.ConnectionError):
        await c.execute("PING")
    await c.aclose()


async def test_a_server_that_closes_fails_the_waiting_commands() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = RespClient(f"redis://127.0.0.1:{port}", 5.0)
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await asyncio.wait_for(c.execute("PING"), 5)
    finally:
        await c.aclose()
        server.close()
        await server.wait_closed()
