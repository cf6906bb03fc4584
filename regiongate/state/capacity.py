"""Capacity leases: where concurrency per deployment (model x region) is counted.

One interface, two implementations: ``LocalCapacity`` (in-process, the default) and the shared Redis one
(``regiongate.state.capacity_redis``). A lease is taken before a backend is called and released exactly once,
on completion, error or client disconnect.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from regiongate.config.scale import OutageMode


def deployment_key(model: str, region: str) -> str:
    return f"{model}@{region}"


@dataclass(frozen=True, slots=True)
class Lease:
    key: str
    token: str


class CapacityStore(Protocol):
    async def acquire(self, key: str, limit: int) -> Lease | None:
        """Take one slot of ``key`` if fewer than ``limit`` are held; None when full."""

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

    async def acquire(self, key: str, limit: int) -> Lease | None:
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
