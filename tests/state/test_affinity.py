"""The affinity table's contract on both implementations (in process, and shared through a real Redis):
bounded, expiring, shared between replicas, and still per replica while Redis is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import redis

from regiongate.config.scale import SharedConfig
from regiongate.core import Affinity
from regiongate.state.affinity import AffinityStore, LocalAffinity, RedisAffinity, decode, encode
from regiongate.state.redis_link import RedisLink
from tests.support.scale import RedisServer, private_redis, shared_redis, unique_prefix

__all__ = ["private_redis"]

HERE = Affinity("us-east-1", "us-east-1/grok-4/0", 1200)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def _redis(url: str, prefix: str, clock: Callable[[], float], ttl_s: float = 300.0) -> RedisAffinity:
    link = RedisLink(SharedConfig(redis=url, key_prefix=prefix, timeout_ms=5000, reconnect_s=0.1))
    await link.start()
    return RedisAffinity(link, LocalAffinity(ttl_s, 1000, clock))


async def _settle(store: AffinityStore) -> None:
    if isinstance(store, RedisAffinity):  # its shared write runs in the background
        await asyncio.gather(*store._writes)


@pytest.fixture(params=["local", "redis"])
async def table(request: pytest.FixtureRequest) -> AsyncIterator[tuple[AffinityStore, Clock]]:
    clock = Clock()
    if request.param == "local":
        yield LocalAffinity(60.0, 3, clock), clock
        return
    store = await _redis(shared_redis(), unique_prefix(), clock, 60.0)
    store.local.max_entries = 3
    yield store, clock
    await store.aclose()
    await store.link.aclose()


async def test_remembers_and_forgets_after_the_ttl(table: tuple[AffinityStore, Clock]) -> None:
    store, clock = table
    assert await store.get("k") is None
    store.put("k", HERE)
    await _settle(store)
    assert await store.get("k") == HERE
    clock.t += 61
    if isinstance(store, RedisAffinity):  # the shared copy keeps Redis's own clock: expire it there too
        await store.link.client.execute("PEXPIRE", store.link.key("aff", "k"), 1)
        await asyncio.sleep(0.01)
    assert await store.get("k") is None


async def test_bounded_in_memory_least_recent_dropped(table: tuple[AffinityStore, Clock]) -> None:
    store, _ = table
    local = store if isinstance(store, LocalAffinity) else store.local  # type: ignore[union-attr]
    for i in range(5):
        store.put(f"k{i}", HERE)
    await _settle(store)
    assert len(local) == 3
    assert local.peek("k0") is None and local.peek("k4") == HERE


async def test_a_prefix_served_by_one_replica_steers_another() -> None:
    url, prefix, clock = shared_redis(), unique_prefix(), Clock()
    a, b = await _redis(url, prefix, clock), await _redis(url, prefix, clock)
    try:
        a.put("conv", HERE)
        await _settle(a)
        assert await b.get("conv") == HERE
        assert b.local.peek("conv") == HERE  # now cached in front, for its remaining TTL
    finally:
        for s in (a, b):
            await s.aclose()
            await s.link.aclose()


async def test_without_redis_it_still_works_per_replica(private_redis: RedisServer) -> None:
    store = await _redis(private_redis.url, unique_prefix(), Clock())
    try:
        private_redis.stop()
        assert await store.get("missing") is None  # the failed read marks the link down, never raises
        assert not store.link.up
        store.put("conv", HERE)
        assert store._writes == set()  # nothing waits on a Redis that is down
        assert await store.get("conv") == HERE
    finally:
        await store.aclose()
        await store.link.aclose()


def test_entries_written_by_others_are_parsed_strictly() -> None:
    assert decode(encode(HERE)) == HERE
    for bad in (b"", b"a\nb", b"a\nb\nc", b"a\nb\n-1", b"\xff\n\n1\n"):
        assert decode(bad) is None


def _sets(port: int) -> int:
    r = redis.Redis(port=port)
    try:
        return int(r.info("commandstats").get("cmdstat_set", {}).get("calls", 0))
    finally:
        r.close()


async def test_a_turn_that_changes_nothing_writes_nothing(private_redis: RedisServer) -> None:
    """One SET when the (region, backend) changes or the shared copy is past half its TTL, none per turn
    otherwise; the local entry still lives the TTL from the last turn, the shared one at least half."""
    clock = Clock()
    a = await _redis(private_redis.url, unique_prefix(), clock, ttl_s=300.0)
    b = await _redis(private_redis.url, a.link.prefix, clock, ttl_s=300.0)
    key = a.link.key("aff", "conv")
    try:
        before = _sets(private_redis.port)
        for turn in range(10):  # a conversation that stays put, its prompt growing: one write
            a.put("conv", Affinity(HERE.region, HERE.backend, 1200 + 100 * turn))
            await _settle(a)
            clock.t += 10.0
        assert _sets(private_redis.port) - before == 1
        assert a.local.peek("conv") == Affinity(HERE.region, HERE.backend, 2100)  # the local copy is current
        # the local entry expires the TTL after the last turn, not after the write
        clock.t += 300.0 - 10.0 - 0.001
        assert a.local.peek("conv") is not None
        clock.t += 0.002
        assert a.local.peek("conv") is None
        # near expiry (less than half the TTL left on the shared copy): refreshed
        clock.t = 2000.0
        a.put("conv", HERE)
        await _settle(a)
        clock.t += 151.0
        a.put("conv", HERE)
        await _settle(a)
        assert _sets(private_redis.port) - before == 3  # expired locally: written; then refreshed
        assert int(await a.link.client.execute("PTTL", key)) > 290_000
        # a move to another backend is written at once
        moved = Affinity(HERE.region, "us-east-1/grok-4/1", 1300)
        a.put("conv", moved)
        await _settle(a)
        assert _sets(private_redis.port) - before == 4
        # another replica that read the entry and serves it where it is writes nothing either
        assert await b.get("conv") == moved
        b.put("conv", Affinity(moved.region, moved.backend, 1400))
        await _settle(b)
        assert _sets(private_redis.port) - before == 4
    finally:
        for s in (a, b):
            await s.aclose()
            await s.link.aclose()
