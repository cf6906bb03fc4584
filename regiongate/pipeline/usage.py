"""Usage metering: one record per routed request, handed off the hot path to a sink.

``MemoryUsage`` keeps aggregates in process (the embedded default); the control plane's store writes the
same records to SQLite or PostgreSQL in batches.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from regiongate.core.frozen import fast_constructor


@functools.lru_cache(maxsize=64)
def utc_day(epoch_day: int) -> str:
    """The UTC date of a day since the epoch, as usage rows name it."""
    return time.strftime("%Y-%m-%d", time.gmtime(epoch_day * 86400))


@dataclass(frozen=True, slots=True)
class UsageRecord:
    request_id: str
    team: str
    key_id: str
    model: str
    endpoint: str
    region: str
    route: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None
    total_ms: float
    at: float  # unix seconds
    hops: tuple[str, ...] = ()  # a stream's hops in order ("region backend (reason)"), when it has them
    tier: str = "default"  # the service tier it ran at (regiongate.core.tiers)
    estimated: bool = False  # the backend reported no usage: the tokens are the gateway's estimate


# ``UsageRecord``, without the frozen per-field cost (``core.frozen``): one is built per routed request.
new_usage_record = fast_constructor(UsageRecord)


@dataclass(slots=True)
class UsageTotals:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: int = 0  # requests whose tokens are the gateway's estimate

    def to_json(self) -> dict[str, int]:
        """One tier's share of a usage row (``by_tier``), the same in process and in the store."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


class UsageSink(Protocol):
    def record(self, rec: UsageRecord) -> None:
        """Accept a record without blocking; persisting happens elsewhere."""

    async def aclose(self) -> None:
        """Flush everything accepted so far."""


class MemoryUsage:
    def __init__(self) -> None:
        # (team, day, model, region, tier): rows are folded per tier when read, as the store does
        self.totals: dict[tuple[str, str, str, str, str], UsageTotals] = defaultdict(UsageTotals)
        self.count = 0

    def record(self, rec: UsageRecord) -> None:
        day = utc_day(int(rec.at // 86400))
        t = self.totals[(rec.team, day, rec.model, rec.region, rec.tier)]
        t.requests += 1
        t.errors += rec.status >= 400
        t.prompt_tokens += rec.prompt_tokens
        t.completion_tokens += rec.completion_tokens
        t.estimated += rec.estimated
        self.count += 1

    def for_team(self, team: str) -> list[dict[str, object]]:
        rows: dict[tuple[str, str, str], tuple[UsageTotals, dict[str, UsageTotals]]] = {}
        for (t, day, model, region, tier), v in sorted(self.totals.items()):
            if t != team:
                continue
            row, by_tier = rows.setdefault((day, model, region), (UsageTotals(), {}))
            row.requests += v.requests
            row.errors += v.errors
            row.prompt_tokens += v.prompt_tokens
            row.completion_tokens += v.completion_tokens
            row.estimated += v.estimated
            by_tier[tier] = v
        return [
            {
                "day": day,
                "model": model,
                "region": region,
                "requests": v.requests,
                "errors": v.errors,
                "prompt_tokens": v.prompt_tokens,
                "completion_tokens": v.completion_tokens,
                "estimated_requests": v.estimated,
                "by_tier": {tier: t.to_json() for tier, t in by_tier.items()},
            }
            for (day, model, region), (v, by_tier) in rows.items()
        ]

    async def aclose(self) -> None:
        return None
