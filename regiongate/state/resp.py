"""A lean Redis client for the request path: one pipelined connection, RESP2, Lua scripts.

redis-py's asyncio client costs about 100 µs of CPU per command on this machine (a pool checkout, a
timeout context and its parser per call), which tripled a request's CPU once leases and rate limits went
to Redis. Here every command of every request goes down one connection: commands issued in the same loop
iteration leave in one write, and replies come back in order, each resolving the future of its command
(Redis answers a connection's commands in the order it read them). That costs a few µs per command;
commands are packed and replies parsed by hiredis (C, the parser redis-py itself uses when installed).
``send`` queues a command without waiting for its reply: a callback's way (batched lease releases).

Failures look like redis-py's (``redis.exceptions.ConnectionError`` / ``TimeoutError`` / ``ResponseError``),
so callers keep one list of what "Redis is not there" means (``redis_link.ERRORS``). A command that gets
no reply within ``timeout_s`` drops the connection and fails every command waiting on it; the next command
connects again.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
from collections.abc import Sequence
from typing import Any, cast

import hiredis
import redis.exceptions
from redis.asyncio.connection import SSLConnection, parse_url

Arg = str | bytes | int | float


def encode(args: Sequence[Arg]) -> bytes:
    """One command as a RESP array of bulk strings (hiredis's packer, in C: a third of the Python one's
    instructions for a script call)."""
    packed: bytes = hiredis.pack_command(cast(Any, tuple(args)))  # its stub types a tuple of one
    return packed


def _error(msg: str) -> redis.exceptions.RedisError:
    if msg.startswith("NOSCRIPT"):
        return redis.exceptions.NoScriptError(msg)
    if msg.startswith("LOADING"):  # a restarted Redis loading its data: not there yet (as redis-py says)
        return redis.exceptions.BusyLoadingError(msg)
    return redis.exceptions.ResponseError(msg)


# What ``Replies.next`` returns while the next reply has not fully arrived (RESP2 has no false).
INCOMPLETE = False


class Replies:
    """The replies in a byte stream, parsed by hiredis's reader (C; the Python parser it replaced was
    about 20 times its cost per reply): ``feed`` bytes as they come, ``next()`` gives each whole reply in
    order, an error reply as an exception value (``NoScriptError``, ``BusyLoadingError`` or
    ``ResponseError``), ``INCOMPLETE`` when the buffer ends first; bytes that are not RESP raise
    ``redis.exceptions.InvalidResponse``."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(
            protocolError=redis.exceptions.InvalidResponse, replyError=redis.exceptions.ResponseError
        )

    def feed(self, data: bytes) -> None:
        self._reader.feed(data)

    def next(self) -> Any:
        value = self._reader.gets()
        if isinstance(value, redis.exceptions.ResponseError):
            return _error(str(value))
        return value


class _Conn(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.out: list[bytes] = []
        self.replies = Replies()
        self.closed: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        fut = self._loop.create_future()
        if self.closed is not None:
            fut.set_exception(self.closed)
            return fut
        if not self.out:  # the first command of this iteration: all of them leave in one write, after it
            self._loop.call_soon(self._flush)
        self.out.append(payload)
        self.waiting.append((fut, self._loop.time() + self.timeout_s))
        if self._timer is None:
            self._timer = self._loop.call_at(self.waiting[0][1], self._check)
        return fut

    def _flush(self) -> None:
        if self.out and self.transport is not None and self.closed is None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _check(self) -> None:
        # Replies come in order, so only the oldest command's deadline matters.
        self._timer = None
        if not self.waiting:
            return
        deadline = self.waiting[0][1]
        if self._loop.time() >= deadline:
            self.fail(redis.exceptions.TimeoutError(f"no reply from Redis within {self.timeout_s:g}s"))
        else:
            self._timer = self._loop.call_at(deadline, self._check)

    def data_received(self, data: bytes) -> None:
        replies, waiting = self.replies, self.waiting
        replies.feed(data)
        try:
            while waiting:
                value = replies.next()
                if value is INCOMPLETE:
                    break
                fut, _ = waiting.popleft()
                if not fut.done():
                    fut.set_result(value)
        except redis.exceptions.InvalidResponse as e:
            self.fail(redis.exceptions.ConnectionError(f"bad reply from Redis: {e}"))
            return
        if not waiting and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(redis.exceptions.ConnectionError(f"Redis closed the connection ({exc or 'EOF'})"))

    def fail(self, err: BaseException) -> None:
        if self.closed is None:
            self.closed = err
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self.waiting = self.waiting, collections.deque()
        for fut, _ in waiting:
            if not fut.done():
                fut.set_exception(err)
        self.out.clear()
        if self.transport is not None:
            self.transport.abort()


class RespClient:
    """``execute(*args)`` and ``register_script(src)`` over one pipelined connection to ``url``
    (redis://, rediss://, unix://, with user, password and db as redis-py reads them)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.opts: dict[str, Any] = dict(parse_url(url))
        self.timeout_s = timeout_s
        self._conn: _Conn | None = None
        self._connecting: asyncio.Task[_Conn] | None = None

    async def _open(self) -> _Conn:
        o = self.opts
        loop = asyncio.get_running_loop()
        conn = _Conn(self.timeout_s)
        try:
            async with asyncio.timeout(self.timeout_s):
                if "path" in o:
                    await loop.create_unix_connection(lambda: conn, o["path"])
                else:
                    tls = self._tls() if o.get("connection_class") is SSLConnection else None
                    host = o.get("host", "localhost")
                    await loop.create_connection(lambda: conn, host, o.get("port", 6379), ssl=tls)
        except TimeoutError as e:
            raise redis.exceptions.TimeoutError("connecting to Redis timed out") from e
        except OSError as e:
            raise redis.exceptions.ConnectionError(f"cannot connect to Redis: {e}") from e
        hello: list[asyncio.Future[Any]] = []
        if o.get("password"):
            auth = [o["username"], o["password"]] if o.get("username") else [o["password"]]
            hello.append(conn.send(encode(["AUTH", *auth])))
        if o.get("db"):
            hello.append(conn.send(encode(["SELECT", int(o["db"])])))
        for reply in await asyncio.gather(*hello):
            if isinstance(reply, Exception):  # a wrong password or db: as redis-py, the store is not there
                err = redis.exceptions.ConnectionError(f"Redis refused the connection: {reply}")
                conn.fail(err)
                raise err
        return conn

    def _tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.opts.get("ssl_ca_certs"))
        if self.opts.get("ssl_cert_reqs") in ("none", "optional"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE if self.opts["ssl_cert_reqs"] == "none" else ssl.CERT_OPTIONAL
        return ctx

    async def _connected(self) -> _Conn:
        if self._connecting is None:  # concurrent callers share one attempt
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        task = self._connecting
        try:
            self._conn = await task
        finally:
            if self._connecting is task and task.done():
                self._connecting = None
        return self._conn

    async def execute(self, *args: Arg) -> Any:
        conn = self._conn
        if conn is None or conn.closed is not None:
            conn = await self._connected()
        reply = await conn.send(encode(args))
        if isinstance(reply, Exception):
            raise reply
        return reply

    def send(self, *args: Arg) -> asyncio.Future[Any] | None:
        """Queue a command now and return its reply's future without waiting (for a callback, which
        cannot await): the reply is its result, an error reply as an exception value; it fails as
        ``execute`` does when the connection does. None while not connected: use ``execute``, which
        connects."""
        conn = self._conn
        if conn is None or conn.closed is not None:
            return None
        return conn.send(encode(args))

    def register_script(self, src: str) -> Script:
        return Script(self, src)

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._conn is not None:
            self._conn.fail(redis.exceptions.ConnectionError("client closed"))
            self._conn = None


class Script:
    """A Lua script run by its SHA1 (EVALSHA), loaded on first use or after Redis forgot it."""

    def __init__(self, client: RespClient, src: str) -> None:
        self.client = client
        self.src = src
        self.sha = hashlib.sha1(src.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return await self.client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await self.client.execute("EVAL", self.src, len(keys), *keys, *args)

    def send(self, keys: Sequence[Arg], args: Sequence[Arg], load: bool = False) -> asyncio.Future[Any] | None:
        """The script through ``RespClient.send``: by its SHA1, or with its source when ``load`` (the
        reply was a ``NoScriptError``: Redis forgot it)."""
        head = ("EVAL", self.src) if load else ("EVALSHA", self.sha)
        return self.client.send(*head, len(keys), *keys, *args)
