"""The prompt-cache affinity table: prefix key -> where that prefix was served last (``core.affinity``).

One interface, two implementations, like capacity: ``LocalAffinity`` (in process: a bounded LRU whose
entries expire after ``ttl_s``) and ``RedisAffinity`` (shared by every replica: ``<prefix>aff:<key>``
strings with a TTL, in front of a local table). ``get`` is awaited once per request that has a prefix key;
``put`` never blocks the request: the shared write runs in the background, and only when it changes
something: the (region, backend) differs from the shared copy, or that copy has less than half its TTL
left (``REFRESH``). A conversation that stays where it is costs one ``SET`` per half TTL, not one per
turn; its shared copy outlives its last turn by between half the TTL and the TTL (the local one: the TTL
exactly). While Redis is down the shared table answers from its local one, so affinity still works per
replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from regiongate.core import Affinity
from regiongate.state.redis_link import ERRORS, RedisLink

# The shared copy is rewritten, unchanged, once less than this share of the TTL is left
REFRESH = 0.5


class AffinityStore(Protocol):
    async def get(self, key: str) -> Affinity | None:
        """Where ``key``'s prefix was served within the TTL, or None."""

    def put(self, key: str, where: Affinity) -> None:
        """Remember that ``key``'s prefix is now held there (never waits for I/O)."""

    async def aclose(self) -> None: ...


class LocalAffinity:
    """At most ``max_entries`` prefixes, least recently served dropped first; each lives ``ttl_s``."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        # key -> (expires at, where, when the shared copy this replica wrote or read expires; 0: none)
        self._table: OrderedDict[str, tuple[float, Affinity, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def peek(self, key: str) -> Affinity | None:
        found = self._table.get(key)
        if found is None:
            return None
        if found[0] <= self.clock():
            del self._table[key]
            return None
        return found[1]

    def shared_until(self, key: str) -> float:
        """When the shared copy of a live entry expires, as this replica knows it (0.0: unknown)."""
        found = self._table.get(key)
        return 0.0 if found is None else found[2]

    async def get(self, key: str) -> Affinity | None:
        return self.peek(key)

    def put(self, key: str, where: Affinity, ttl_s: float | None = None, shared_until: float = 0.0) -> None:
        table = self._table
        table[key] = (self.clock() + (self.ttl_s if ttl_s is None else ttl_s), where, shared_until)
        table.move_to_end(key)
        while len(table) > self.max_entries:
            table.popitem(last=False)

    async def aclose(self) -> None:
        self._table.clear()


def encode(where: Affinity) -> bytes:
    return f"{where.region}\n{where.backend}\n{where.prefix_tokens}".encode()


def decode(raw: bytes) -> Affinity | None:
    """An entry as another replica wrote it; None for anything malformed (never trusted further)."""
    parts = raw.decode("utf-8", "replace").split("\n")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return Affinity(parts[0], parts[1], int(parts[2]))


# KEYS entry -> {value or nil, its remaining ms}
READ = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"


class RedisAffinity:
    """The table shared through Redis, with a local one in front (and instead, while Redis is down)."""

    def __init__(self, link: RedisLink, local: LocalAffinity) -> None:
        self.link = link
        self.local = local
        self._writes: set[asyncio.Task[None]] = set()
        self._get = link.client.register_script(READ)

    async def get(self, key: str) -> Affinity | None:
        found = self.local.peek(key)
        if found is not None or not self.link.up:
            return found
        try:
            raw, ttl_ms = await self._read(key)
        except ERRORS as e:
            self.link.failed(e)
            return None
        if raw is None:
            return None
        found = decode(raw)
        if found is not None and ttl_ms > 0:  # it expires here when it does there
            self.local.put(key, found, ttl_ms / 1000.0, self.local.clock() + ttl_ms / 1000.0)
        return found

    async def _read(self, key: str) -> tuple[bytes | None, int]:
        raw, ttl = await self._get(keys=[self.link.key("aff", key)])  # one round trip for both
        return raw or None, int(ttl)

    def put(self, key: str, where: Affinity) -> None:
        local = self.local
        now = local.clock()
        old = local.peek(key)
        until = local.shared_until(key) if old is not None else 0.0
        if (
            old is not None
            and (old.region, old.backend) == (where.region, where.backend)
            and until - now > local.ttl_s * REFRESH
        ):
            # The shared copy already says this (its prompt length lags, which only understates the
            # saving to other replicas) and has life left: no write
            local.put(key, where, shared_until=until)
            return
        if not self.link.up:
            local.put(key, where)
            return
        local.put(key, where, shared_until=now + local.ttl_s)
        task = asyncio.create_task(self._write(key, where))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, key: str, where: Affinity) -> None:
        try:
            ttl_ms = int(self.local.ttl_s * 1000)
            await self.link.client.execute("SET", self.link.key("aff", key), encode(where), "PX", ttl_ms)
        except ERRORS as e:
            self.link.failed(e)
            found = self.local.peek(key)
            if found is not None:  # not written after all: the next put writes it
                self.local.put(key, found, shared_until=0.0)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self.local.aclose()
