"""The one connection to the shared Redis, and whether it is up.

Capacity leases and rate limits go through one ``RedisLink``. A command that fails marks the link down;
while it is down nothing on the request path waits for Redis: callers fall back at once (per-replica
shares for ``fail-open``, 503 for ``fail-closed``) and a background loop tries Redis again every
``reconnect_s``. When it answers, the link is up again and each ``on_up`` callback re-asserts what this
replica holds, so shared accounting resumes even after Redis restarted empty.

Each replica registers itself under ``<prefix>replicas`` with a TTL; the live count (and this replica's
rank among them) gives the fail-open share of each limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable

import redis.exceptions

from regiongate.config.scale import SharedConfig
from regiongate.core.errors import GatewayError
from regiongate.state.resp import RespClient

log = logging.getLogger("regiongate.shared")

# What "Redis is not there" looks like (BusyLoadingError, a restart loading data, is a ConnectionError).
ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)

# Register this replica until now + ttl, drop expired ones; return 1 if it was missing (first beat, or
# Redis lost its data) and the live replica ids.
REGISTER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return {added, redis.call('ZRANGE', KEYS[1], 0, -1)}
"""


def share_of(limit: int, rank: int, count: int) -> int:
    """This replica's part of ``limit`` split over ``count`` replicas: the parts add up to ``limit``
    exactly (the remainder goes to the lowest ranks)."""
    count = max(count, 1)
    rank = min(max(rank, 0), count - 1)
    return limit // count + (1 if rank < limit % count else 0)


def shared_unavailable(what: str, retry_after: float) -> GatewayError:
    return GatewayError(
        f"{what} is configured to fail closed while the shared state store (Redis) is unreachable, and "
        f"it is unreachable now. Retry after {retry_after:g}s.",
        code="shared_state_unavailable",
        retry_after=retry_after,
    )


class RedisLink:
    def __init__(self, cfg: SharedConfig, client: RespClient | None = None) -> None:
        if cfg.redis is None and client is None:
            raise ValueError("RedisLink needs [shared].redis")
        self.cfg = cfg
        self.prefix = cfg.key_prefix
        self.client = client or RespClient(str(cfg.redis), cfg.timeout_ms / 1000.0)
        self.up = True  # optimistic until a command fails
        self.outages = 0
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.replicas: list[str] = []
        self.on_up: list[Callable[[], Awaitable[None]]] = []
        self._register = self.client.register_script(REGISTER)
        self._registered = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # --- state ---------------------------------------------------------------------------------------
    def failed(self, err: BaseException) -> None:
        if self.up:
            self.up = False
            self.outages += 1
            self._wake.set()
            log.warning("shared state store unreachable", extra={"error": type(err).__name__})

    def share(self, limit: int) -> int:
        """This replica's share of ``limit`` while Redis is down (fail-open)."""
        n = len(self.replicas) or self.cfg.replicas
        rank = self.replicas.index(self.replica_id) if self.replica_id in self.replicas else 0
        return share_of(limit, rank, n)

    # --- background ----------------------------------------------------------------------------------
    async def beat(self) -> bool:
        """Register this replica (and learn the live ones). True when Redis answered."""
        ttl_ms = int(self.cfg.lease_ttl_s * 1000)
        try:
            added, members = await self._register(keys=[self.key("replicas")], args=[self.replica_id, ttl_ms])
        except ERRORS as e:
            self.failed(e)
            return False
        self.replicas = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
        lost = self._registered and int(added) == 1  # our entry vanished: Redis restarted or was flushed
        self._registered = True
        if not self.up or lost:
            self.up = True
            log.info("shared state store reachable; resuming shared accounting", extra={"lost": lost})
            for cb in list(self.on_up):
                await self._run(cb)
        return True

    async def _run(self, cb: Callable[[], Awaitable[None]]) -> None:
        try:
            await cb()
        except ERRORS as e:
            self.failed(e)

    async def _loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.cfg.heartbeat_s if self.up else self.cfg.reconnect_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            if self._wake.is_set():  # a command just failed: retry after reconnect_s, not heartbeat_s
                self._wake.clear()
                await asyncio.sleep(self.cfg.reconnect_s)
            await self.beat()

    async def start(self) -> None:
        await self.beat()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="redis-link")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.up:
            with contextlib.suppress(*ERRORS):
                await self.client.execute("ZREM", self.key("replicas"), self.replica_id)
        await self.client.aclose()
