"""Hedging a slow first byte: once a stream's wait passes its early mark, the rest of the plan is started
beside it and whichever answers first is kept (``[hedging]``, off by default; docs/faults.md).

    mark = clamp(after_factor x p95(recent TTFTs), floor_s, budget)

over the deployment's learned TTFTs (``regiongate.state.first_byte``); no mark before it has learned them,
nor when the mark would not come before the budget itself (then the budget's failover is what happens).
The hedge is the walk the gateway would have made after this attempt failed: the same plan, so the same
scope (a regional endpoint hedges only to another backend of its region, a zone endpoint or a fenced key
only inside its zone), with a capacity lease of its own. The loser is cancelled (its lease freed, its
connection closed). At most one hedge per request: the hedge's own walk never hedges, nor does a
continuation (its client has seen bytes), nor a request that opted out (``x-regiongate-hedge: off``, or
continuation turned off by its key or header: such a caller asked for one generation at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from regiongate.config import HedgingConfig
from regiongate.state.first_byte import FirstByteBudget

HEDGE_HEADER = "x-regiongate-hedge"  # request: "off" opts out; response: the hedge's outcome

T = TypeVar("T")


class Outcome(StrEnum):
    WON = "won"  # the hedge answered first: the slow attempt was cancelled
    LOST = "lost"  # the slow attempt answered first: the hedge was cancelled
    FAILED = "failed"  # the hedge found nothing that answered


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    after_factor: float = 1.0
    floor_s: float = 0.25

    def mark_s(self, learned: FirstByteBudget, budget_s: float) -> float | None:
        """When to start the hedge of a wait bounded by ``budget_s``, or None: not hedged."""
        q = learned.quantile_ms()
        if q is None:
            return None
        mark = max(self.after_factor * q / 1000.0, self.floor_s)
        return mark if mark < budget_s else None


def hedge_policy(cfg: HedgingConfig) -> HedgePolicy | None:
    """``[hedging]`` as the gateway holds it (None: off); at start and at every reload."""
    return HedgePolicy(cfg.after_factor, cfg.floor_s) if cfg.enabled else None


def opted_out(raw: str | None) -> bool:
    return raw is not None and raw.strip().lower() == "off"


@dataclass(slots=True)
class Raced(Generic[T]):
    """What a hedged wait ended with: the answer kept (None: neither answered) and how the hedge did."""

    answer: T | None
    outcome: Outcome


async def race(
    primary: Awaitable[T],
    mark_s: float,
    hedge: Callable[[], Awaitable[T | None]],
    primary_failed: Callable[[Exception], None],
    discard: Callable[[T], Awaitable[None]],
) -> T | Raced[T]:
    """Wait for ``primary``; if it has not finished after ``mark_s``, start ``hedge`` beside it.

    Before the mark this is ``await primary`` (its answer, or its exception raised). After it, a
    ``Raced`` whose answer is the first of the two to answer: the other is cancelled (an answer it had
    already produced goes to ``discard``); a failure of the primary then goes to ``primary_failed`` and
    the hedge's outcome stands."""
    first = asyncio.ensure_future(primary)
    try:
        done, _ = await asyncio.wait({first}, timeout=mark_s)
    except BaseException:
        await _cancel(first)
        raise
    if done:
        return first.result()
    second = asyncio.ensure_future(hedge())
    pending: set[asyncio.Future[Any]] = {first, second}
    try:
        while pending:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if first in finished:
                exc = first.exception()
                if exc is None:
                    await _cancel(second, discard)
                    return Raced(first.result(), Outcome.LOST)
                if not isinstance(exc, Exception):
                    raise exc
                primary_failed(exc)
            if second in finished:
                got = second.result()
                if got is not None:
                    await _cancel(first, discard)
                    return Raced(got, Outcome.WON)
                # the hedge found nothing: the primary, if still waiting, may yet answer
        return Raced(None, Outcome.FAILED)
    except BaseException:
        await _cancel(first, discard)
        await _cancel(second, discard)
        raise


async def _cancel(task: asyncio.Future[Any], discard: Callable[[Any], Awaitable[None]] | None = None) -> None:
    """Cancel ``task`` and wait for it to have cleaned up; an answer it had already produced is discarded."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        await task
    if task.cancelled() or task.exception() is not None:
        return
    got = task.result()
    if got is not None and discard is not None:
        await discard(got)
