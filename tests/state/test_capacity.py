"""The CapacityStore contract, run against both implementations (in-process and Redis), and the Redis
store's own promises: leases expire after their TTL unless renewed, replicas share one count, and an
outage fails open (per-replica share) or closed (503) and resumes when Redis is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from regiongate.config.scale import SharedConfig
from regiongate.core import RouteError
from regiongate.state.capacity import CapacityStore, Lease, LocalCapacity
from regiongate.state.capacity_redis import RedisCapacity
from regiongate.state.redis_link import RedisLink, share_of
from tests.support.scale import RedisServer, private_redis, shared_redis, unique_prefix

__all__ = ["private_redis"]  # fixture re-exported for pytest


def _cfg(url: str, prefix: str, **kw: float) -> SharedConfig:
    # timeout_ms: generous, so a stall of the loaded test machine is never mistaken for a Redis outage
    base: dict[str, object] = {
        "lease_ttl_s": 2.0,
        "heartbeat_s": 0.5,
        "refresh_s": 0.1,
        "reconnect_s": 0.1,
        "timeout_ms": 5000,
    }
    base.update(kw)
    return SharedConfig(redis=url, key_prefix=prefix, **base)  # type: ignore[arg-type]


async def _redis_store(url: str, prefix: str, **kw: float) -> RedisCapacity:
    link = RedisLink(_cfg(url, prefix, **kw))
    await link.start()
    store = RedisCapacity(link)
    await store.start()
    return store


async def _close(store: RedisCapacity) -> None:
    await store.aclose()
    await store.link.aclose()


@pytest.fixture(params=["local", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[CapacityStore]:
    if request.param == "local":
        yield LocalCapacity()
        return
    s = await _redis_store(shared_redis(), unique_prefix())
    yield s
    await _close(s)


# --- the contract ----------------------------------------------------------------------------------


async def test_acquire_up_to_the_limit_then_none(store: CapacityStore) -> None:
    leases = [await store.acquire("m@r", 3) for _ in range(3)]
    assert all(isinstance(x, Lease) for x in leases)
    assert len({x.token for x in leases if x}) == 3
    assert await store.acquire("m@r", 3) is None
    assert store.in_use("m@r") == 3


async def test_release_frees_a_slot_once(store: CapacityStore) -> None:
    a = await store.acquire("m@r", 1)
    assert a is not None
    assert await store.acquire("m@r", 1) is None
    await store.release(a)
    await store.release(a)  # twice: a no-op
    await store.release(Lease("m@r", "never-issued"))
    assert store.in_use("m@r") == 0
    b = await store.acquire("m@r", 1)
    assert b is not None
    assert await store.acquire("m@r", 1) is None  # the double release did not free a second slot


async def test_keys_are_independent(store: CapacityStore) -> None:
    assert await store.acquire("a@r", 1) is not None
    assert await store.acquire("b@r", 1) is not None
    assert store.in_use("a@r") == 1
    assert store.in_use("b@r") == 1
    assert store.in_use("c@r") == 0


async def test_concurrent_acquires_never_exceed_the_limit(store: CapacityStore) -> None:
    got = await asyncio.gather(*(store.acquire("m@r", 7) for _ in range(40)))
    assert sum(1 for x in got if x is not None) == 7
    await asyncio.gather(*(store.release(x) for x in got if x is not None))
    assert store.in_use("m@r") == 0


async def test_a_lower_limit_applies_to_leases_held(store: CapacityStore) -> None:
    for _ in range(3):
        assert await store.acquire("m@r", 5) is not None
    assert await store.acquire("m@r", 2) is None  # 3 held, new limit 2: nothing more


# --- Redis only ------------------------------------------------------------------------------------


async def test_two_replicas_share_one_count() -> None:
    url, prefix = shared_redis(), unique_prefix()
    a, b = await _redis_store(url, prefix), await _redis_store(url, prefix)
    try:
        got = await asyncio.gather(*(s.acquire("m@r", 5) for s in (a, b) for _ in range(6)))
        assert sum(1 for x in got if x is not None) == 5
        # b's local view learns a's leases from the periodic refresh, without acquiring anything.
        await b.refresh()
        assert b.in_use("m@r") == 5
        await a.link.beat()  # a registered before b existed; its next beat sees both
        assert len(a.link.replicas) == 2
    finally:
        await _close(a)
        await _close(b)


async def test_leases_expire_without_heartbeat_and_live_with_it() -> None:
    url, prefix = shared_redis(), unique_prefix()
    # A TTL 15x the heartbeat: the live lease survives any stall of this process shorter than 2.8 s (a loaded
    # CI machine), while the dead one must still go within one TTL.
    live = await _redis_store(url, prefix, lease_ttl_s=3.0, heartbeat_s=0.2)
    dead = await _redis_store(url, prefix, lease_ttl_s=3.0, heartbeat_s=0.2)
    try:
        assert await live.acquire("m@r", 2) is not None
        assert await dead.acquire("m@r", 2) is not None
        assert dead._task is not None
        dead._task.cancel()  # this replica stops renewing, as if it had died
        raw = aioredis.Redis.from_url(url)
        key = prefix + "cap:m@r"
        for _ in range(400):  # the dead lease goes within the TTL; the renewed one stays
            if await raw.zcard(key) == 1:
                break
            await asyncio.sleep(0.05)
        assert await raw.zcard(key) == 1
        await asyncio.sleep(3.5)  # longer than the TTL: the live lease is still there thanks to heartbeats
        assert await raw.zcard(key) == 1
        assert await live.acquire("m@r", 2) is not None
        await raw.aclose()
    finally:
        await _close(live)
        await _close(dead)


async def test_shutdown_releases_every_lease() -> None:
    url, prefix = shared_redis(), unique_prefix()
    s = await _redis_store(url, prefix)
    for _ in range(4):
        await s.acquire("m@r", 10)
    await _close(s)
    raw = aioredis.Redis.from_url(url)
    assert await raw.zcard(prefix + "cap:m@r") == 0
    await raw.aclose()


def test_shares_add_up_to_the_limit() -> None:
    for limit in range(0, 20):
        for n in range(1, 6):
            assert sum(share_of(limit, r, n) for r in range(n)) == limit


async def test_outage_fails_open_to_a_share_then_resumes(private_redis: RedisServer) -> None:
    s = await _redis_store(private_redis.url, unique_prefix())
    try:
        held = await s.acquire("m@r", 4)
        assert held is not None
        private_redis.stop()
        # The first acquire finds Redis gone and falls back at once; this replica (alone) has the whole
        # limit as its share, counting the lease it already holds.
        local = [await s.acquire("m@r", 4) for _ in range(4)]
        assert sum(1 for x in local if x is not None) == 3
        assert not s.link.up
        assert s.in_use("m@r") == 4
        await s.release(held)
        private_redis.start()
        for _ in range(200):
            if s.link.up:
                break
            await asyncio.sleep(0.05)
        assert s.link.up
        # Shared accounting resumed: the leases taken during the outage are in the (new, empty) Redis.
        raw = aioredis.Redis.from_url(private_redis.url)
        assert await raw.zcard(s.link.key("cap", "m@r")) == 3
        await raw.aclose()
        assert await s.acquire("m@r", 4) is not None
        assert await s.acquire("m@r", 4) is None
    finally:
        await _close(s)


async def test_outage_fails_closed_with_503(private_redis: RedisServer) -> None:
    s = await _redis_store(private_redis.url, unique_prefix())
    s.configure({"m@r": 4}, {"m@r": "fail-closed"}, "fail-open")
    try:
        private_redis.stop()
        with pytest.raises(RouteError) as e:
            await s.acquire("m@r", 4)
        assert e.value.status == 503
        assert e.value.code == "shared_state_unavailable"
        assert await s.acquire("other@r", 4) is not None  # the default mode still fails open
    finally:
        private_redis.start()
        await _close(s)
