"""The CapacityStore contract, run against both implementations (in-process and Redis), and the Redis
store's own promises: leases expire after their TTL unless renewed, replicas share one count, and an
outage fails open (per-replica share) or closed (503) and resumes when Redis is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from regiongate.config.scale import SharedConfig
from regiongate.core import RouteError
from regiongate.pipeline.ratelimit import ADMIT, RedisRates
from regiongate.state.capacity import CapacityStore, Lease, LocalCapacity
from regiongate.state.capacity_redis import ACQUIRE, LOCAL, RELEASE, RedisCapacity
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
        # The link is up before its on_up callbacks have run: wait for the store's resume to end (the
        # link runs the callbacks in order, so this one comes after it).
        resumed = asyncio.Event()

        async def mark() -> None:
            resumed.set()

        s.link.on_up.append(mark)
        private_redis.start()
        await asyncio.wait_for(resumed.wait(), 10)
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


# --- batched releases ------------------------------------------------------------------------------


async def _store_without_loops(url: str, prefix: str, **kw: float) -> RedisCapacity:
    """A store whose link registered once and runs no background loop (no heartbeat, no refresh), so
    every command Redis counts is one the test made."""
    link = RedisLink(_cfg(url, prefix, **kw))
    await link.beat()
    return RedisCapacity(link)


async def _answered(s: RedisCapacity) -> None:
    # Replies come back in order on the one connection: once this PING is answered, so is every release
    # sent before it (and its answer has updated the local view).
    await s.link.client.execute("PING")


async def test_releases_of_one_iteration_are_one_script_call(private_redis: RedisServer) -> None:
    s = await _store_without_loops(private_redis.url, unique_prefix())
    raw = aioredis.Redis.from_url(private_redis.url)
    try:
        leases = [await s.acquire("a@r", 10) for _ in range(3)] + [await s.acquire("b@r", 10) for _ in range(2)]
        first = await s.acquire("a@r", 10)
        assert first is not None
        await s.release(first)  # a new Redis: this call loads the script (EVALSHA, NOSCRIPT, EVAL)
        await _answered(s)
        assert s.in_use("a@r") == 3 and s.in_use("b@r") == 2
        await raw.config_resetstat()
        await asyncio.gather(*(s.release(x) for x in leases if x is not None))
        assert s.in_use("a@r") == 0 and s.in_use("b@r") == 0  # the local view, before Redis answered
        await _answered(s)
        stats = await raw.info("commandstats")
        # Five releases over two keys: one EVALSHA (one round trip), its ZREM and ZCOUNT once per key.
        assert stats["cmdstat_evalsha"]["calls"] == 1
        assert stats["cmdstat_zrem"]["calls"] == 2
        assert stats["cmdstat_zcount"]["calls"] == 2
        assert "cmdstat_eval" not in stats
        assert await raw.zcard(s.link.key("cap", "a@r")) == 0
        assert await raw.zcard(s.link.key("cap", "b@r")) == 0
        assert s.in_use("a@r") == 0 and s.in_use("b@r") == 0  # as Redis answered
    finally:
        await raw.aclose()
        await _close(s)


async def test_two_replicas_count_exactly_with_batched_releases() -> None:
    url, prefix = shared_redis(), unique_prefix()
    a, b = await _store_without_loops(url, prefix), await _store_without_loops(url, prefix)
    raw = aioredis.Redis.from_url(url)
    key = prefix + "cap:m@r"
    try:
        mine = {s: [await s.acquire("m@r", 6) for _ in range(3)] for s in (a, b)}
        assert await a.acquire("m@r", 6) is None
        # At the limit, a release and an acquire of one iteration on one replica: the release rides on the
        # acquire, whose script removes it before it counts, so the acquire gets the slot it freed.
        _, again = await asyncio.gather(a.release(mine[a][0]), a.acquire("m@r", 6))  # type: ignore[arg-type]
        assert again is not None
        mine[a][0] = again
        # Both replicas release in the same iteration, each in one script call.
        await asyncio.gather(*(s.release(x) for s in (a, b) for x in mine[s][:2]))  # type: ignore[arg-type]
        await asyncio.gather(_answered(a), _answered(b))
        assert await raw.zcard(key) == 2
        got = await asyncio.gather(*(s.acquire("m@r", 6) for s in (a, b) for _ in range(5)))
        assert sum(1 for x in got if x is not None) == 4  # exactly the four slots the releases freed
        assert await raw.zcard(key) == 6
        for s in (a, b):
            await s.refresh()
            assert s.in_use("m@r") == 6
        held = [x for x in got if x is not None] + [mine[a][2], mine[b][2]]
        owner = {x.token: s for s in (a, b) for x in held if x is not None and x.token in s._held}
        await asyncio.gather(*(owner[x.token].release(x) for x in held if x is not None))
        await asyncio.gather(_answered(a), _answered(b))
        assert await raw.zcard(key) == 0
        for s in (a, b):
            await s.refresh()
            assert s.in_use("m@r") == 0
    finally:
        await raw.aclose()
        await _close(a)
        await _close(b)


async def test_a_batch_lost_with_its_connection_is_sent_when_redis_is_back() -> None:
    url, prefix = shared_redis(), unique_prefix()
    s = await _store_without_loops(url, prefix)
    raw = aioredis.Redis.from_url(url)
    key = prefix + "cap:m@r"
    try:
        leases = [await s.acquire("m@r", 4) for _ in range(2)]
        for x in leases:  # a release does not yield: both are this iteration's
            assert x is not None
            await s.release(x)
        # Their one script call is queued in the next iteration (before this task resumes: the loop runs
        # callbacks in order) and written in the one after; the connection drops in between (as
        # connection_lost fails it): the releases are kept for when Redis answers again, not lost.
        await asyncio.sleep(0)
        assert len(s._sending) == 1
        conn = s.link.client._conn
        assert conn is not None and conn.out
        conn.fail(redis.exceptions.ConnectionError("dropped by the test"))
        await asyncio.sleep(0)  # the failed call is handled in the next iteration
        assert not s.link.up
        assert await raw.zcard(key) == 2
        assert await s.link.beat()  # Redis answers: the link is up again and resumes
        assert await raw.zcard(key) == 0
        assert await s.acquire("m@r", 1) is not None
    finally:
        await raw.aclose()
        await _close(s)


class _OneRequestRider:
    """A rider whose one bucket (capacity 1) admits one request (what ``pipeline.ratelimit`` sends)."""

    def __init__(self, rates: RedisRates, bucket: str) -> None:
        self.script = rates.admit
        self.keys = [rates.link.key("rl", bucket)]
        self.args = [1, 1]
        self.refusal: RouteError | None = None

    def answer(self, out: Sequence[Any]) -> None:
        self.refusal = None if int(out[0]) == 1 else RouteError("refused", code="rate_limited", status=429)

    async def alone(self) -> None:
        raise AssertionError("Redis is up: the rider runs in the lease's script")


async def test_releases_ride_on_the_next_acquire_of_their_key(private_redis: RedisServer) -> None:
    s = await _store_without_loops(private_redis.url, unique_prefix())
    rates = RedisRates(s.link)
    raw = aioredis.Redis.from_url(private_redis.url)
    key = s.link.key("cap", "m@r")
    try:
        for script in (ACQUIRE, RELEASE, ADMIT):  # loaded, so each call below is one EVALSHA
            await s.link.client.execute("SCRIPT", "LOAD", script)
        leases = [await s.acquire("m@r", 3) for _ in range(3)]
        other = await s.acquire("n@r", 3)
        assert await s.acquire("m@r", 3) is None
        await raw.config_resetstat()
        # Two releases of m@r, one of n@r and an acquire of m@r in one iteration: m@r's ride on the
        # acquire (which gets a slot they freed), n@r's leaves alone.
        *_, got = await asyncio.gather(
            *(s.release(x) for x in [*leases[:2], other] if x is not None), s.acquire("m@r", 3)
        )
        assert got is not None
        await _answered(s)
        stats = await raw.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 2  # the acquire, and one release for n@r
        assert stats["cmdstat_zrem"]["calls"] == 2  # once per key
        assert await raw.zcard(key) == 2 and s.in_use("m@r") == 2
        assert await raw.zcard(s.link.key("cap", "n@r")) == 0 and s.in_use("n@r") == 0
        # A rider's script takes them along too, and removes them even when its limit refuses.
        assert await s.acquire("m@r", 3, _OneRequestRider(rates, "team:t:requests")) is not None
        refused = _OneRequestRider(rates, "team:t:requests")
        _, none = await asyncio.gather(s.release(got), s.acquire("m@r", 3, refused))
        assert none is None and refused.refusal is not None
        assert await raw.zcard(key) == 2 and s.in_use("m@r") == 2
    finally:
        await raw.aclose()
        await _close(s)


async def test_a_release_with_no_connection_open_connects_and_is_sent() -> None:
    url, prefix = shared_redis(), unique_prefix()
    s = await _store_without_loops(url, prefix)
    raw = aioredis.Redis.from_url(url)
    try:
        lease = await s.acquire("m@r", 4)
        assert lease is not None
        await s.link.client.aclose()  # no connection now; the link still counts Redis as up
        await s.release(lease)
        await s.aclose()  # waits for the releases sent (here: connected first, then sent)
        assert await raw.zcard(prefix + "cap:m@r") == 0
    finally:
        await raw.aclose()
        await s.link.aclose()


# --- outages that keep Redis's data ------------------------------------------------------------------
# A stopped server comes back empty, which would hide a slot left behind; here an outage is what a failed
# command leaves (the connection dropped, the link down) while Redis keeps every set, and it ends when the
# link's beat finds Redis again (``beat`` runs the store's resume before it returns). The TTL is long, so a
# slot left in Redis is still there when the test looks, however slow the machine.


Resumable = tuple[RedisCapacity, aioredis.Redis]


@pytest.fixture
async def resumable(private_redis: RedisServer) -> AsyncIterator[Resumable]:
    """A store without loops on a private Redis (its command counts are the test's alone), and a client
    to look into it."""
    s = await _store_without_loops(private_redis.url, unique_prefix(), lease_ttl_s=60.0)
    raw = aioredis.Redis.from_url(private_redis.url)
    yield s, raw
    await raw.aclose()
    await _close(s)


def _drop(s: RedisCapacity) -> None:
    conn = s.link.client._conn
    assert conn is not None
    conn.fail(redis.exceptions.ConnectionError("dropped by the test"))  # as connection_lost does


def _outage(s: RedisCapacity) -> None:
    _drop(s)
    s.link.failed(redis.exceptions.ConnectionError("dropped by the test"))


async def _back(s: RedisCapacity) -> None:
    assert await s.link.beat()
    assert s.link.up


async def _written_back(s: RedisCapacity, key: str = "m@r") -> Lease:
    """A lease taken from this replica's share in an outage, then written to Redis by the resume."""
    _outage(s)
    lease = await s.acquire(key, 4)
    assert lease is not None and lease.token.startswith(LOCAL)
    await _back(s)
    return lease


async def _lose_a_release(s: RedisCapacity, lease: Lease, how: str) -> list[Lease]:
    """Release ``lease`` so that Redis misses it: ``down`` in an outage; ``batch``, its RELEASE call lost
    with the connection; ``acquire``, riding on an acquire of its key lost with the connection. Returns
    the leases taken meanwhile."""
    taken: list[Lease] = []
    if how == "down":
        _outage(s)
        await s.release(lease)
    elif how == "batch":
        await s.release(lease)
        await asyncio.sleep(0)  # its RELEASE call is queued in the next iteration
        assert len(s._sending) == 1
        _drop(s)
        await asyncio.sleep(0)  # the failed call is handled in the next iteration
    else:  # the acquire takes the release along, is written with it, and fails (then fails open)

        async def drop() -> None:  # runs after the acquire wrote its call, before that call is read
            assert not s._pending  # the acquire took the release along
            _drop(s)

        _, got, _ = await asyncio.gather(s.release(lease), s.acquire(lease.key, 4), drop())
        assert got is not None and got.token.startswith(LOCAL)
        taken.append(got)
    assert not s.link.up
    return taken


@pytest.mark.parametrize("how", ["down", "batch", "acquire"])
async def test_a_written_back_lease_released_in_a_later_outage_is_sent_on_resume(
    resumable: Resumable, how: str
) -> None:
    s, raw = resumable
    key = s.link.key("cap", "m@r")
    kept = await s.acquire("m@r", 4)  # a lease from Redis, held throughout
    lease = await _written_back(s)
    assert await raw.zscore(key, lease.token) is not None  # Redis has it: it holds a slot there
    taken = await _lose_a_release(s, lease, how)
    await _back(s)
    # Freed when Redis answered, not when its TTL ran out.
    assert await raw.zscore(key, lease.token) is None
    assert await raw.zcard(key) == 1 + len(taken) == s.in_use("m@r")
    assert kept is not None and await raw.zscore(key, kept.token) is not None


async def test_a_local_lease_released_before_any_resume_is_never_sent(resumable: Resumable) -> None:
    s, raw = resumable
    _outage(s)
    leases = [await s.acquire("m@r", 4) for _ in range(3)]
    for x in leases:
        assert x is not None and x.token.startswith(LOCAL)
        await s.release(x)
    await raw.config_resetstat()
    await _back(s)
    # Redis never had them: the resume sends no release (the script's ZREM would count), and an
    # outage that admits many requests leaves nothing to send for them.
    stats = await raw.info("commandstats")
    assert "cmdstat_zrem" not in stats
    assert not s._unsent
    assert await raw.zcard(s.link.key("cap", "m@r")) == 0 and s.in_use("m@r") == 0


async def test_a_written_back_lease_released_twice_frees_one_slot(resumable: Resumable) -> None:
    s, raw = resumable
    key = s.link.key("cap", "m@r")
    lease = await _written_back(s)
    kept = await s.acquire("m@r", 2)
    assert kept is not None and not kept.token.startswith(LOCAL)
    _outage(s)
    await s.release(lease)
    await s.release(lease)  # twice, in the outage
    await _back(s)
    await s.release(lease)  # and once more after it
    await _answered(s)
    assert await raw.zcard(key) == 1 and s.in_use("m@r") == 1
    assert await s.acquire("m@r", 2) is not None
    assert await s.acquire("m@r", 2) is None  # one slot was freed, not two


@pytest.mark.parametrize("origin", ["local", "redis"])
async def test_a_lease_released_while_the_resume_writes_back_stays_released(
    resumable: Resumable, monkeypatch: pytest.MonkeyPatch, origin: str
) -> None:
    """The resume writes back one key at a time, a round trip each; a lease of a later key released
    meanwhile is not written back after its release left (the slot would stay taken for the TTL)."""
    s, raw = resumable
    if origin == "redis":
        first, later = await s.acquire("a@r", 4), await s.acquire("b@r", 4)
        _outage(s)
    else:
        _outage(s)
        first, later = await s.acquire("a@r", 4), await s.acquire("b@r", 4)
    assert first is not None and later is not None
    assert later.token.startswith(LOCAL) == (origin == "local")
    renew, calls = s._renew, []

    async def release_then_renew(keys: Sequence[str], args: Sequence[int | str]) -> Any:
        calls.append(keys[0])
        if len(calls) == 1:  # before the first key's write-back leaves: its release goes first
            await s.release(later)
        return await renew(keys=keys, args=args)

    monkeypatch.setattr(s, "_renew", release_then_renew)
    await _back(s)
    assert calls == [s.link.key("cap", "a@r"), s.link.key("cap", "b@r")]
    await _answered(s)
    assert await raw.zcard(s.link.key("cap", "b@r")) == 0 and s.in_use("b@r") == 0
    assert await raw.zcard(s.link.key("cap", "a@r")) == 1
