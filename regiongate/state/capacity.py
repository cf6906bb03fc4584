"""Capacity leases: where concurrency per deployment (model x region) is counted.

One interface, two implementations: ``LocalCapacity`` (in-process, the default) and the shared Redis one
(``regiongate.state.capacity_redis``). A lease is taken before a backend is called and released exactly once,
on completion, error or client disconnect.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from regiongate.config.scale import OutageMode
from regiongate.core.errors import RouteError


def deployment_key(model: str, region: str) -> str:
    return f"{model}@{region}"


@dataclass(frozen=True, slots=True)
class Lease:
    key: str
    token: str


class Rider(Protocol):
    """Work a request's first lease carries along: its rate limits (``pipeline.ratelimit``). A shared store
    runs ``script`` (the rider's own steps, then the lease's: one atomic step, one round trip) with
    KEYS = [the lease's set, *keys] and ARGV = [limit, ttl_ms, token, *args, *released], and hands the
    rider what its steps returned (``answer``); any other store calls ``alone`` first. Either way, a rider
    that refused sets ``refusal`` and no lease is taken. ``released`` are tokens of that set this replica
    released since its last call: the script removes them first (``capacity_redis.LEASE``'s ``unlease``)."""

    refusal: RouteError | None

    @property
    def keys(self) -> Sequence[str]: ...

    @property
    def args(self) -> Sequence[int]: ...

    @property
    def script(self) -> Any:  # a regiongate.state.resp.Script
        ...

    def answer(self, out: Sequence[Any]) -> None: ...

    async def alone(self) -> None: ...


class CapacityStore(Protocol):
    async def acquire(self, key: str, limit: int, rider: Rider | None = None) -> Lease | None:
        """Take one slot of ``key`` if fewer than ``limit`` are held; None when full, or when ``rider``
        refused (its ``refusal`` says why)."""

    async def release(self, lease: Lease) -> None:
        """Give the slot back. Releasing twice or an unknown lease is a no-op."""

    def in_use(self, key: str) -> int:
        """Slots held now, as this process knows it (never blocks: the policy reads it per request)."""

    def configure(
        self, limits: Mapping[str, int], modes: Mapping[str, OutageMode], default_mode: OutageMode
    ) -> None:
        """The limits and Redis-outage modes of the config in force (a shared store needs them to fall
        back to per-replica shares; an in-process one already has the limit on every acquire)."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class LocalCapacity:
    """In-process counters. Acquire is atomic because nothing awaits between check and increment."""

    def __init__(self) -> None:
        self._held: dict[str, set[str]] = {}
        self._ids = itertools.count(1)

    async def acquire(self, key: str, limit: int, rider: Rider | None = None) -> Lease | None:
        if rider is not None:
            await rider.alone()
            if rider.refusal is not None:
                return None
        held = self._held.setdefault(key, set())
        if len(held) >= limit:
            return None
        token = str(next(self._ids))
        held.add(token)
        return Lease(key, token)

    async def release(self, lease: Lease) -> None:
        held = self._held.get(lease.key)
        if held is not None:
            held.discard(lease.token)

    def configure(
        self, limits: Mapping[str, int], modes: Mapping[str, OutageMode], default_mode: OutageMode
    ) -> None:
        pass  # limits come with every acquire; there is no outage to plan for

    async def start(self) -> None:
        pass

    def in_use(self, key: str) -> int:
        held = self._held.get(key)
        return len(held) if held else 0

    async def aclose(self) -> None:
        self._held.clear()
