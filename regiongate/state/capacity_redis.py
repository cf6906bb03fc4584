"""Capacity leases shared by every replica through Redis (the ``CapacityStore`` protocol).

Each deployment key is a sorted set ``<prefix>cap:<model@region>`` whose members are lease tokens scored
by their expiry (Redis server time, ms). Acquire and release are Lua scripts, so "count live leases, add
one if below the limit" is atomic across replicas. A lease lives ``lease_ttl_s``; this process renews
the leases it holds every ``heartbeat_s``, so a long stream keeps its slot while a replica that died (or
lost Redis for longer than the TTL) gives its slots back within the TTL.

A release waits for nothing: the releases of one event-loop iteration ride on the next acquire of their
key in that iteration (its script removes them before it counts, so it sees the slots they freed), and
those left go to Redis together as one ``RELEASE`` call (every token of every key, one round trip),
queued at the end of the iteration: it leaves in that iteration's write or the next one's. So Redis has a
slot back one round trip after it was freed, plus at most one loop iteration; other replicas see it at
once in their acquires and within ``refresh_s`` in their local view.

``in_use`` never waits: it reads a local view, updated by every acquire/release answer (a release lowers
it at once; the script's answer then sets it) and re-read for all known keys every ``refresh_s``.

While Redis is unreachable (see ``RedisLink``) a deployment either fails closed (503) or fails open:
this replica then admits up to its share of the limit (the limit split over the live replicas), counting
the leases it already held. When Redis is back, every held lease (including those taken during the
outage) is written back and the releases that could not be sent are sent. A lease taken in the outage
and released before a resume wrote it back was never in Redis: its release is not sent (nor kept, so a
long outage leaves nothing to send for the requests it admitted); once written back it is released like
any other.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis.exceptions

from regiongate.config.scale import OutageMode
from regiongate.state.capacity import Lease, Rider
from regiongate.state.redis_link import ERRORS, RedisLink, shared_unavailable

log = logging.getLogger("regiongate.capacity")

# Every reply comes back on the one pipelined connection of ``RespClient`` in the order Redis ran the
# scripts, so the last reply read carries the newest count: no version counter is needed beside the set.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The lease steps, also the steps of a rider's script (``Rider``): KEYS[1] set; ARGV limit, ttl_ms, token,
# then the rider's own, then tokens this replica released since, to leave the set before anything counts
# (``unlease(KEYS[1], first, #ARGV)``) -> 1 if taken, live count. ZREM takes at most 4000 tokens at a
# time: Lua's unpack has a limit (8000 values) that a shutdown holding many leases could pass.
LEASE = """
local function unlease(k, first, last)
  for j = first, last, 4000 do
    redis.call('ZREM', k, unpack(ARGV, j, math.min(j + 3999, last)))
  end
end
local function lease(now)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local n = redis.call('ZCARD', KEYS[1])
  if n >= tonumber(ARGV[1]) then return 0, n end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1, n + 1
end
"""

# ARGV limit, ttl_ms, token, released tokens... -> {1 if taken, live count}
ACQUIRE = (
    _NOW
    + LEASE
    + """
unlease(KEYS[1], 4, #ARGV)
local taken, n = lease(now)
return {taken, n}
"""
)

# KEYS sets; ARGV n1, n1 tokens of set 1, n2, n2 tokens of set 2, ... -> {live count of each set} (expired
# leases are not counted; the next acquire drops them)
RELEASE = (
    _NOW
    + LEASE
    + """
local out, a = {}, 1
for i = 1, #KEYS do
  local last = a + tonumber(ARGV[a])
  unlease(KEYS[i], a + 1, last)
  out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
  a = last + 1
end
return out
"""
)

# KEYS set; ARGV ttl_ms, mode ('XX' renews only live leases, 'NX' also re-adds lost ones), tokens... -> count
RENEW = (
    _NOW
    + """
local ttl = tonumber(ARGV[1])
local args = {}
for i = 3, #ARGV do
  args[#args + 1] = now + ttl
  args[#args + 1] = ARGV[i]
end
if #args > 0 then
  if ARGV[2] == 'XX' then
    redis.call('ZADD', KEYS[1], 'XX', unpack(args))
  else
    redis.call('ZADD', KEYS[1], unpack(args))
  end
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)

# KEYS set1, set2, ... -> {count1, count2, ...}
COUNT = (
    _NOW
    + """
local out = {}
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  out[i] = redis.call('ZCARD', KEYS[i])
end
return out
"""
)

LOCAL = "local:"  # tokens granted from this replica's share while Redis was down (``_local``)

Batch = dict[str, list[str]]  # deployment key -> lease tokens, the releases of one script call


class RedisCapacity:
    def __init__(
        self,
        link: RedisLink,
        modes: Mapping[str, OutageMode] | None = None,
        default_mode: OutageMode = "fail-open",
        retry_after_s: float = 1.0,
    ) -> None:
        self.link = link
        self.ttl_ms = int(link.cfg.lease_ttl_s * 1000)
        self.retry_after_s = retry_after_s
        self.modes: dict[str, OutageMode] = dict(modes or {})
        self.default_mode: OutageMode = default_mode
        self._held: dict[str, str] = {}  # token -> deployment key: every lease this process holds
        self._local: set[str] = set()  # held leases Redis never had (fail-open share, not written back)
        self._mine: dict[str, int] = {}  # deployment key -> leases held here
        self._unsent: dict[str, set[str]] = {}  # releases Redis did not get, sent on reconnect
        self._counts: dict[str, int] = {}  # deployment key -> live leases in Redis, last seen
        self._limits: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._pending: Batch = {}  # this iteration's releases not sent yet (``_send_pending``)
        self._sending: set[asyncio.Future[Any]] = set()  # release calls not answered yet
        c = link.client
        self._acquire = c.register_script(ACQUIRE)
        self._release = c.register_script(RELEASE)
        self._renew = c.register_script(RENEW)
        self._count = c.register_script(COUNT)
        self._task: asyncio.Task[None] | None = None
        link.on_up.append(self._resume)

    def configure(
        self, limits: Mapping[str, int], modes: Mapping[str, OutageMode], default_mode: OutageMode
    ) -> None:
        """Deployment limits and outage modes (at start-up and on reload)."""
        self._limits.update(limits)
        self.modes = dict(modes)
        self.default_mode = default_mode

    def mode(self, key: str) -> OutageMode:
        return self.modes.get(key, self.default_mode)

    def _k(self, key: str) -> list[str]:
        return [self.link.key("cap", key)]

    def _seen(self, key: str, count: object) -> None:
        self._counts[key] = int(count)  # type: ignore[call-overload]

    # --- the CapacityStore protocol ---------------------------------------------------------------
    async def acquire(self, key: str, limit: int, rider: Rider | None = None) -> Lease | None:
        self._limits[key] = limit
        if self.link.up:
            token = f"{self.link.replica_id}:{next(self._ids)}"
            args: list[int | str] = [limit, self.ttl_ms, token]
            if rider is not None:
                args += rider.args
            released = self._pending.pop(key, None) if self._pending else None  # they ride along, last
            if released:
                args += released
            try:
                if rider is None:
                    ok, n = await self._acquire(keys=self._k(key), args=args)
                else:  # the rider's steps and the lease in one script: one round trip admits the request
                    out = await rider.script(keys=[*self._k(key), *rider.keys], args=args)
                    ok, n = out[0], out[1]
                    rider.answer(out[2:])
            except ERRORS as e:
                self.link.failed(e)
                if released:
                    self._unsend(key, released)
            except BaseException:  # cancelled (or a script error): maybe not sent; removing twice is harmless
                if released:
                    self._queue(key, released)
                raise
            else:
                if int(n) >= 0:  # -1: the rider refused before the lease step looked
                    self._seen(key, n)
                if int(ok) != 1:
                    return None
                self._hold(token, key)
                return Lease(key, token)
        if rider is not None:
            await rider.alone()
            if rider.refusal is not None:
                return None
        return self._degraded(key, limit)

    def _degraded(self, key: str, limit: int) -> Lease | None:
        if self.mode(key) == "fail-closed":
            model, _, region = key.partition("@")
            raise shared_unavailable(f"The deployment of '{model}' in {region}", self.retry_after_s)
        if self._mine.get(key, 0) >= self.link.share(limit):
            return None
        token = f"{LOCAL}{self.link.replica_id}:{next(self._ids)}"
        self._hold(token, key)
        self._local.add(token)
        return Lease(key, token)

    def _hold(self, token: str, key: str) -> None:
        self._held[token] = key
        self._mine[key] = self._mine.get(key, 0) + 1

    async def release(self, lease: Lease) -> None:
        key = self._held.pop(lease.token, None)
        if key is None:
            return  # released before, or never ours
        self._mine[key] -= 1
        if self._local and lease.token in self._local:  # empty unless an outage granted leases
            self._local.discard(lease.token)
            return  # Redis never had it: nothing to send
        if self.link.up:
            self._counts[key] = max(self._counts.get(key, 1) - 1, 0)  # until a script's answer
        self._queue(key, [lease.token])

    # --- batched releases -----------------------------------------------------------------------------
    def _queue(self, key: str, tokens: list[str]) -> None:
        if not self.link.up:
            self._unsend(key, tokens)
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._send_pending)
        self._pending.setdefault(key, []).extend(tokens)

    def _unsend(self, key: str, tokens: Iterable[str]) -> None:
        # Sent when Redis is back (``_resume``). Every token here may be in Redis: ``release`` sends none
        # of the leases Redis never had, and a written-back local lease is one Redis has.
        self._unsent.setdefault(key, set()).update(tokens)

    def _unsend_all(self, batch: Mapping[str, Iterable[str]]) -> None:
        for key, tokens in batch.items():
            self._unsend(key, tokens)

    def _send_pending(self) -> None:
        """The releases no acquire took along: one script call for all (with no connection open, a task
        connects first; nothing waits for it)."""
        batch, self._pending = self._pending, {}
        if not batch:
            return
        if not self.link.up:
            self._unsend_all(batch)
            return
        keys, args = self._parts(batch)
        fut = self._release.send(keys, args)
        self._sent(batch, fut if fut is not None else asyncio.ensure_future(self._release(keys, args)))

    def _parts(self, batch: Mapping[str, Sequence[str]]) -> tuple[list[str], list[int | str]]:
        keys: list[str] = []
        args: list[int | str] = []
        for key, tokens in batch.items():
            keys.append(self.link.key("cap", key))
            args.append(len(tokens))
            args += tokens
        return keys, args

    def _sent(self, batch: Batch, fut: asyncio.Future[Any]) -> None:
        self._sending.add(fut)
        fut.add_done_callback(functools.partial(self._answered, batch))

    def _answered(self, batch: Batch, fut: asyncio.Future[Any]) -> None:
        self._sending.discard(fut)
        err = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        out = fut.result() if err is None else err
        if isinstance(out, redis.exceptions.NoScriptError):  # Redis forgot the script: once more, with it
            again = self._release.send(*self._parts(batch), load=True)
            if again is not None:
                self._sent(batch, again)
                return
            out = redis.exceptions.ConnectionError("Redis closed the connection")
        if isinstance(out, BaseException):
            if not isinstance(out, ERRORS):  # not an outage (a script error): the leases expire in the TTL
                log.error("lease release failed", extra={"error": repr(out)})
                return
            self.link.failed(out)
            self._unsend_all(batch)
            return
        self._seen_all(batch, out)

    def _seen_all(self, keys: Mapping[str, object], counts: Sequence[object]) -> None:
        for key, n in zip(keys, counts, strict=True):
            self._seen(key, n)

    def in_use(self, key: str) -> int:
        if key not in self._counts:
            self._counts[key] = 0  # watched from now on by the refresh loop
        if self.link.up:
            return self._counts[key]
        limit = self._limits.get(key)
        if limit is None or self.mode(key) == "fail-closed":
            return self._counts[key]
        # Fail-open: free = this replica's share minus what it holds.
        return max(limit - self.link.share(limit), 0) + self._mine.get(key, 0)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._send_pending()
        held = self._by_key(self._held)
        self._held.clear()
        self._local.clear()
        if self.link.up and held:
            try:
                self._seen_all(held, await self._release(*self._parts(held)))
            except ERRORS as e:
                self.link.failed(e)
        if self._sending:  # releases sent before: answered (or failed) before the link closes
            await asyncio.wait(list(self._sending))
        if held:
            log.info("released leases at shutdown", extra={"leases": sum(len(t) for t in held.values())})

    # --- background: heartbeat and refresh ---------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="capacity-heartbeat")

    async def _loop(self) -> None:
        cfg = self.link.cfg
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + cfg.heartbeat_s
        while True:
            await asyncio.sleep(min(cfg.refresh_s, cfg.heartbeat_s))
            if not self.link.up:
                continue
            try:
                if loop.time() >= next_beat:
                    next_beat = loop.time() + cfg.heartbeat_s
                    await self.renew("XX")
                await self.refresh()
            except ERRORS as e:
                self.link.failed(e)

    @staticmethod
    def _by_key(held: Mapping[str, str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for token, key in held.items():
            out.setdefault(key, []).append(token)
        return out

    async def renew(self, mode: str = "XX") -> None:
        """Extend every held lease to now + TTL; with 'NX' semantics (mode != 'XX') lost ones are
        written back too, those from the fail-open share included (Redis has them from then on)."""
        held = self._held
        for key, tokens in self._by_key(held).items():
            if mode != "XX":
                # A round trip per key: a lease released during an earlier key's is left out (its release
                # may have left already). From here on a local lease may be in Redis: its release is sent.
                tokens = [t for t in tokens if t in held]
                self._local.difference_update(tokens)
            self._seen(key, await self._renew(keys=self._k(key), args=[self.ttl_ms, mode, *tokens]))

    async def refresh(self) -> None:
        keys = list(self._counts)
        if not keys:
            return
        out = await self._count(keys=[self.link.key("cap", key) for key in keys])
        for key, n in zip(keys, out, strict=True):
            self._seen(key, n)

    async def _resume(self) -> None:
        """Redis is reachable again: send the releases it missed, write back every lease held here
        (those taken from the fail-open share included), then re-read the counts."""
        unsent, self._unsent = self._unsent, {}
        if unsent:
            batch = {key: list(tokens) for key, tokens in unsent.items()}
            try:
                self._seen_all(batch, await self._release(*self._parts(batch)))
            except ERRORS:
                self._unsend_all(unsent)  # still unsent: the next resume sends them
                raise
        await self.renew("ALL")
        await self.refresh()
