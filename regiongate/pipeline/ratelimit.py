"""Rate limits per team and per key: requests per minute and tokens per minute, as a gateway hook.

Each limit is a token bucket holding at most ``limit`` units that refills at ``limit`` per minute, so
``x-ratelimit-reset-*`` ("time until the limit is back to its initial state", as the OpenAI API defines
it) is ``(limit - level) / limit`` minutes. A request costs 1 request and its prompt tokens (estimated
from the body) up front, on every bucket that applies (team and key), all or nothing; when it has ended
the bucket is settled with the difference between the estimate and the tokens actually used (prompt +
completion), so a long answer is paid for by the next requests.

Two stores behind one ``RateStore`` protocol: ``LocalRates`` (in process; with N workers and no Redis each
worker enforces its share of every limit) and ``RedisRates`` (one Lua script per decision, shared by all
replicas; while Redis is down it fails open to per-replica shares or fails closed with 503).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from regiongate.config.scale import LimitsConfig, OutageMode, RateLimit
from regiongate.core import RouteError
from regiongate.pipeline.exchange import Inbound, Routed
from regiongate.pipeline.usage import UsageRecord
from regiongate.state.capacity_redis import LEASE
from regiongate.state.redis_link import ERRORS, RedisLink, shared_unavailable
from regiongate.upstream.simulated import count_prompt_tokens

log = logging.getLogger("regiongate.ratelimit")
WINDOW_MS = 60_000.0


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str  # e.g. "team:acme:requests"
    capacity: int  # units per minute
    cost: int
    kind: str  # "requests" | "tokens"
    scope: str  # "team" | "key", for messages


@dataclass(frozen=True, slots=True)
class Take:
    allowed: bool
    retry_after_s: float
    levels: tuple[float, ...]  # each bucket's level after the take (before it, when refused)


class RateStore(Protocol):
    async def take(self, buckets: Sequence[Bucket]) -> Take:
        """Charge every bucket its cost if all have enough, else none."""

    async def settle(self, key: str, capacity: int, delta: int) -> None:
        """Charge ``delta`` more units (negative: give back), without refusing."""

    def configure(self, mode: OutageMode) -> None:
        """What to do while a shared store is unreachable (the config in force)."""

    async def aclose(self) -> None: ...


def _refill(level: float, since_ms: float, capacity: int) -> float:
    return min(float(capacity), level + max(since_ms, 0.0) * capacity / WINDOW_MS)


class LocalRates:
    """Token buckets in this process (the clock is injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (level, at_ms)

    def configure(self, mode: OutageMode) -> None:
        pass  # nothing shared, no outage

    def _level(self, key: str, capacity: int, now_ms: float) -> float:
        got = self._buckets.get(key)
        return float(capacity) if got is None else _refill(got[0], now_ms - got[1], capacity)

    async def take(self, buckets: Sequence[Bucket]) -> Take:
        now = self.clock() * 1000.0
        levels = [self._level(b.key, b.capacity, now) for b in buckets]
        wait = max(
            ((b.cost - lv) * WINDOW_MS / b.capacity for b, lv in zip(buckets, levels, strict=True)),
            default=0.0,
        )
        allowed = wait <= 0
        if allowed:
            levels = [lv - b.cost for b, lv in zip(buckets, levels, strict=True)]
        for b, lv in zip(buckets, levels, strict=True):
            self._buckets[b.key] = (lv, now)
        if len(self._buckets) > 100_000:
            self._sweep(now)
        return Take(allowed, max(wait, 0.0) / 1000.0, tuple(levels))

    async def settle(self, key: str, capacity: int, delta: int) -> None:
        now = self.clock() * 1000.0
        level = self._level(key, capacity, now) - delta
        self._buckets[key] = (max(-float(capacity), min(float(capacity), level)), now)

    def _sweep(self, now_ms: float) -> None:
        # A bucket untouched for two windows is full again: forgetting it changes nothing.
        stale = [k for k, (_, at) in self._buckets.items() if now_ms - at > 2 * WINDOW_MS]
        for k in stale:
            del self._buckets[k]

    async def aclose(self) -> None:
        self._buckets.clear()


_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function level_of(k, cap)
  local v = redis.call('HMGET', k, 'l', 't')
  local level, at = tonumber(v[1]), tonumber(v[2])
  if level == nil then return cap end
  return math.min(cap, level + math.max(0, now - at) * cap / 60000)
end
"""

# Buckets KEYS[k0..], their (capacity, cost) pairs ARGV[a0..] -> {allowed, wait_ms, level1, level2, ...}
_TAKE = """
local function take(k0, a0)
  local levels, wait, n = {}, 0, #KEYS - k0 + 1
  for i = 1, n do
    local cap, cost = tonumber(ARGV[a0 + 2 * i - 2]), tonumber(ARGV[a0 + 2 * i - 1])
    levels[i] = level_of(KEYS[k0 + i - 1], cap)
    if levels[i] < cost then wait = math.max(wait, (cost - levels[i]) * 60000 / cap) end
  end
  local out = {wait > 0 and 0 or 1, math.ceil(wait)}
  for i = 1, n do
    local k = KEYS[k0 + i - 1]
    if wait <= 0 then levels[i] = levels[i] - tonumber(ARGV[a0 + 2 * i - 1]) end
    redis.call('HSET', k, 'l', tostring(levels[i]), 't', now)
    redis.call('PEXPIRE', k, 180000)
    out[#out + 1] = tostring(levels[i])
  end
  return out
end
"""

# KEYS buckets; ARGV cap1, cost1, cap2, cost2, ...
TAKE = _NOW + _TAKE + "return take(1, 1)\n"

# The buckets and the capacity lease in one script (``state.capacity.Rider``): KEYS lease set, buckets...;
# ARGV limit, ttl_ms, token, cap1, cost1, ..., released tokens... -> {1 if leased, live leases (-1: not
# looked at), allowed, wait_ms, levels...}. Refused by a limit: no lease is taken (the released tokens
# leave the set either way).
ADMIT = (
    _NOW
    + _TAKE
    + LEASE
    + """
unlease(KEYS[1], 4 + 2 * (#KEYS - 1), #ARGV)
local out = take(2, 4)
local leased, n = 0, -1
if out[1] == 1 then leased, n = lease(now) end
table.insert(out, 1, n)
table.insert(out, 1, leased)
return out
"""
)

# KEYS[1]; ARGV cap, delta
SETTLE = (
    _NOW
    + """
local cap = tonumber(ARGV[1])
local level = math.max(-cap, math.min(cap, level_of(KEYS[1], cap) - tonumber(ARGV[2])))
redis.call('HSET', KEYS[1], 'l', tostring(level), 't', now)
redis.call('PEXPIRE', KEYS[1], 180000)
return 1
"""
)


def take_of(out: Sequence[Any]) -> Take:
    """What the TAKE step of a script returned: allowed, wait_ms, levels..."""
    return Take(int(out[0]) == 1, int(out[1]) / 1000.0, tuple(float(x) for x in out[2:]))


class RedisRates:
    """Buckets in Redis, shared by every replica; per-replica shares (or 503) while it is down."""

    def __init__(self, link: RedisLink, mode: OutageMode = "fail-open", retry_after_s: float = 1.0) -> None:
        self.link = link
        self.mode: OutageMode = mode
        self.retry_after_s = retry_after_s
        self._take = link.client.register_script(TAKE)
        self._settle = link.client.register_script(SETTLE)
        self.admit = link.client.register_script(ADMIT)  # the buckets with a capacity lease (``_Rider``)
        self._fallback = LocalRates()

    def configure(self, mode: OutageMode) -> None:
        self.mode = mode

    def key(self, bucket: Bucket) -> str:
        return self._k(bucket.key)

    def _k(self, key: str) -> str:
        return self.link.key("rl", key)

    async def take(self, buckets: Sequence[Bucket]) -> Take:
        if self.link.up:
            args: list[int] = []
            for b in buckets:
                args += [b.capacity, b.cost]
            try:
                out = await self._take(keys=[self._k(b.key) for b in buckets], args=args)
            except ERRORS as e:
                self.link.failed(e)
            else:
                return take_of(out)
        if self.mode == "fail-closed":
            raise shared_unavailable("Rate limiting", self.retry_after_s)
        shared = [
            Bucket(b.key, max(self.link.share(b.capacity), 1), b.cost, b.kind, b.scope) for b in buckets
        ]
        return await self._fallback.take(shared)

    async def settle(self, key: str, capacity: int, delta: int) -> None:
        if self.link.up:
            try:
                await self._settle(keys=[self._k(key)], args=[capacity, delta])
                return
            except ERRORS as e:
                self.link.failed(e)
        await self._fallback.settle(key, max(self.link.share(capacity), 1), delta)

    async def aclose(self) -> None:
        await self._fallback.aclose()


# --- the hook ------------------------------------------------------------------------------------


def reset_text(seconds: float) -> str:
    """A duration as the OpenAI API writes it: '20ms', '1.5s', '6m0s'."""
    if seconds < 1.0:
        return f"{max(math.ceil(seconds * 1000), 0)}ms"
    if seconds < 60.0:
        return f"{round(seconds, 3):g}s"
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s}s"


@dataclass(slots=True)
class _Charge:
    estimate: int
    tokens: list[Bucket]
    headers: list[tuple[str, str]]
    at: float


def _headers(buckets: Sequence[Bucket], levels: Sequence[float]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for kind in ("requests", "tokens"):
        pairs = [(b, lv) for b, lv in zip(buckets, levels, strict=True) if b.kind == kind]
        if not pairs:
            continue
        b, lv = min(pairs, key=lambda p: p[1] / p[0].capacity)  # the binding limit of this kind
        reset = max(b.capacity - lv, 0.0) * 60.0 / b.capacity
        out += [
            (f"x-ratelimit-limit-{kind}", str(b.capacity)),
            (f"x-ratelimit-remaining-{kind}", str(max(math.floor(lv), 0))),
            (f"x-ratelimit-reset-{kind}", reset_text(reset)),
        ]
    return out


def _refusal(buckets: Sequence[Bucket], take: Take, headers: list[tuple[str, str]], who: str) -> RouteError:
    short = [b for b, lv in zip(buckets, take.levels, strict=True) if lv < b.cost]
    b = short[0] if short else buckets[0]
    per = "requests per min (RPM)" if b.kind == "requests" else "tokens per min (TPM)"
    scope = f"team '{who.split('/')[0]}'" if b.scope == "team" else f"key '{who}'"
    retry = max(take.retry_after_s, 0.001)
    return RouteError(
        f"Rate limit reached for {scope} on {per}: limit {b.capacity}, requested {b.cost}. "
        f"Please try again in {reset_text(retry)}.",
        code="rate_limit_exceeded",
        status=429,
        type=b.kind,
        retry_after=retry,
        headers=tuple(headers),
    )


@dataclass(frozen=True, slots=True)
class _Caller:
    """What one key's requests are charged on (``RateLimits._caller``)."""

    buckets: tuple[Bucket, ...]  # in order: team requests, team tokens, key requests, key tokens (tokens cost 0)
    tokens: bool  # a tokens bucket among them: each request's cost is its prompt estimate
    who: str  # "team/key id", for messages
    keys: dict[str, list[str]]  # the buckets' Redis keys, by the link's key prefix


@dataclass(slots=True)
class _Rider:
    """A request's buckets, taken with its first capacity lease (``state.capacity.Rider``)."""

    limits: RateLimits
    inbound: Inbound
    buckets: list[Bucket]
    estimate: int
    who: str
    script: Any
    keys: list[str]
    refusal: RouteError | None = None

    @property
    def args(self) -> list[int]:
        return [x for b in self.buckets for x in (b.capacity, b.cost)]

    def answer(self, out: Sequence[Any]) -> None:
        self.refusal = self.limits._admitted(self.inbound, self.buckets, self.estimate, self.who, take_of(out))

    async def alone(self) -> None:
        take = await self.limits.store.take(self.buckets)
        self.refusal = self.limits._admitted(self.inbound, self.buckets, self.estimate, self.who, take)


class RateLimits:
    """The gateway ``Hook`` that enforces ``[limits]``. With Redis the buckets ride on the request's first
    capacity lease (``_Rider``): one script, one round trip admits it."""

    def __init__(
        self, cfg: LimitsConfig, store: RateStore, share: Callable[[int], int] | None = None
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.share = share or (lambda n: n)
        self._pending: dict[int, _Charge] = {}  # id(inbound) -> charge, until settled
        # Headers of requests settled before ``after`` ran (a non-streaming answer is settled first);
        # bounded, since a request that ends in an error never reaches ``after``.
        self._late: OrderedDict[int, list[tuple[str, str]]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._callers: dict[tuple[str, str], _Caller] = {}  # (team, key id) -> its buckets (``_caller``)
        self._for: tuple[object, object] | None = None  # the (config, share) they were built from

    def _caller(self, inbound: Inbound) -> _Caller:
        """The buckets that apply to ``inbound``'s team and key, kept per key until the config (or the
        share) in force changes: they are the same for every request of that key but for the tokens'
        cost (the request's estimate, filled in by ``before``)."""
        p = inbound.principal
        built = self._for
        if built is None or built[0] is not self.cfg or built[1] is not self.share:
            self._callers.clear()
            self._for = (self.cfg, self.share)
        got = self._callers.get((p.team, p.key_id))
        if got is not None:
            return got
        team, key = self.cfg.for_team(p.team)
        out: list[Bucket] = []
        scopes: list[tuple[str, str, RateLimit]] = [
            ("team", p.team, team),
            ("key", f"{p.team}/{p.key_id}", key),
        ]
        for scope, subject, lim in scopes:
            if lim.requests_per_minute:
                cap = max(self.share(lim.requests_per_minute), 1)
                out.append(Bucket(f"{scope}:{subject}:requests", cap, 1, "requests", scope))
            if lim.tokens_per_minute:
                cap = max(self.share(lim.tokens_per_minute), 1)
                out.append(Bucket(f"{scope}:{subject}:tokens", cap, 0, "tokens", scope))
        if len(self._callers) > 10_000:
            self._callers.clear()
        got = self._callers[(p.team, p.key_id)] = _Caller(
            tuple(out), any(b.kind == "tokens" for b in out), f"{p.team}/{p.key_id}", {}
        )
        return got

    async def before(self, inbound: Inbound) -> None:
        self._pending.pop(id(inbound), None)  # ids are reused: never let an old entry speak for this one
        self._late.pop(id(inbound), None)
        caller = self._caller(inbound)
        if not caller.buckets:
            return
        estimate = 0
        buckets = list(caller.buckets)
        if caller.tokens:
            estimate = count_prompt_tokens(inbound.payload)
            buckets = [b if b.kind != "tokens" else Bucket(b.key, b.capacity, estimate, b.kind, b.scope) for b in buckets]
        who = caller.who
        for b in buckets:
            if b.kind == "tokens" and b.cost > b.capacity:
                raise RouteError(
                    f"Request too large for {b.scope} '{who if b.scope == 'key' else inbound.principal.team}' "
                    f"on tokens per min (TPM): limit {b.capacity}, requested about {b.cost}. Send fewer "
                    "prompt tokens or ask for a higher limit.",
                    code="rate_limit_exceeded",
                    status=429,
                    type="tokens",
                )
        store = self.store
        if isinstance(store, RedisRates) and store.link.up:  # taken with the first lease, in one round trip
            keys = caller.keys.get(store.link.prefix)
            if keys is None:
                keys = caller.keys[store.link.prefix] = [store.key(b) for b in buckets]
            inbound.rider = _Rider(self, inbound, buckets, estimate, who, store.admit, keys)
            return
        refusal = self._admitted(inbound, buckets, estimate, who, await self.store.take(buckets))
        if refusal is not None:
            raise refusal

    def _admitted(
        self, inbound: Inbound, buckets: list[Bucket], estimate: int, who: str, take: Take
    ) -> RouteError | None:
        """Record what ``take`` charged (its headers, the tokens to settle); the 429 if it refused."""
        headers = _headers(buckets, take.levels)
        if not take.allowed:
            return _refusal(buckets, take, headers, who)
        tokens = [b for b in buckets if b.kind == "tokens"]
        if len(self._pending) > 10_000:
            self._sweep()
        self._pending[id(inbound)] = _Charge(estimate, tokens, headers, time.monotonic())
        return None

    def after(self, inbound: Inbound, routed: Routed) -> None:
        charge = self._pending.get(id(inbound))
        headers = charge.headers if charge is not None else self._late.pop(id(inbound), None)
        if headers:
            routed.headers.extend(headers)

    def settled(self, inbound: Inbound, record: UsageRecord) -> None:
        charge = self._pending.pop(id(inbound), None)
        if charge is None:
            return
        self._late[id(inbound)] = charge.headers
        if len(self._late) > 1024:
            self._late.popitem(last=False)
        if not charge.tokens:
            return
        used = record.prompt_tokens + record.completion_tokens
        if used == 0 and record.status < 400:
            used = charge.estimate  # no usage reported: keep the estimate
        delta = used - charge.estimate
        if delta == 0:
            return
        for b in charge.tokens:
            task = asyncio.get_running_loop().create_task(self._settle(b, delta))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _settle(self, b: Bucket, delta: int) -> None:
        try:
            await self.store.settle(b.key, b.capacity, delta)
        except Exception as e:  # a lost settlement only makes the limit a little lenient
            log.warning("rate limit settlement failed", extra={"error": type(e).__name__})

    def _sweep(self) -> None:
        # Entries whose request never settled (an error raised before usage was recorded).
        cutoff = time.monotonic() - 3600.0
        for k in [k for k, c in self._pending.items() if c.at < cutoff]:
            del self._pending[k]

    async def aclose(self) -> None:
        """Flush pending settlements, then close the store."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.aclose()
