"""``pipeline.hedge``: the early mark, and the race between an attempt and its hedge (events, no clocks)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from regiongate.pipeline.hedge import HedgePolicy, Outcome, Raced, opted_out, race
from regiongate.state.first_byte import MIN_SAMPLES, FirstByteBudget


def learned(ms: float) -> FirstByteBudget:
    b = FirstByteBudget()
    for _ in range(MIN_SAMPLES):
        b.add(ms)
    return b


def test_the_mark_is_the_learned_p95_times_the_factor_within_floor_and_budget() -> None:
    p = HedgePolicy(after_factor=2.0, floor_s=0.25)
    assert p.mark_s(FirstByteBudget(), 5.0) is None  # nothing learned yet: not hedged
    assert p.mark_s(learned(400.0), 5.0) == pytest.approx(0.8)
    assert p.mark_s(learned(10.0), 5.0) == 0.25  # the floor
    assert p.mark_s(learned(3000.0), 5.0) is None  # not before the budget: the budget's failover does it


def test_opting_out() -> None:
    assert opted_out("off") and opted_out(" OFF ") and not opted_out(None) and not opted_out("on")


class Attempt:
    """An awaitable attempt that answers (or fails) when its test says so, and knows if it was cancelled."""

    def __init__(self, answer: str | None = "", fail: Exception | None = None) -> None:
        self.go = asyncio.Event()
        self.answer, self.fail, self.cancelled = answer, fail, False

    async def run(self) -> str | None:
        try:
            await self.go.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.fail is not None:
            raise self.fail
        return self.answer


async def _race(
    primary: Attempt, hedge: Attempt, mark: float = 0.0, on_hedge: Callable[[], None] = lambda: None
) -> tuple[object, list[str], list[str]]:
    """``on_hedge`` runs when the hedge starts (the primary was still waiting at the mark)."""
    failed: list[str] = []
    discarded: list[str] = []

    async def discard(x: str) -> None:
        discarded.append(x)

    async def second() -> str | None:
        on_hedge()
        return await hedge.run()

    got = await race(primary.run(), mark, second, lambda e: failed.append(str(e)), discard)
    return got, failed, discarded


async def test_an_answer_before_the_mark_is_never_hedged() -> None:
    p, h = Attempt("primary"), Attempt("hedge")
    p.go.set()
    hedged: list[bool] = []
    got, _, _ = await _race(p, h, 60.0, lambda: hedged.append(True))
    assert got == "primary" and hedged == []


async def test_a_failure_before_the_mark_is_raised_as_is() -> None:
    p = Attempt(fail=ValueError("no first byte"))
    p.go.set()
    with pytest.raises(ValueError):
        await _race(p, Attempt(), mark=60.0)


async def test_the_hedge_wins_and_the_slow_attempt_is_cancelled() -> None:
    p, h = Attempt("primary"), Attempt("hedge")
    got, _, _ = await _race(p, h, on_hedge=h.go.set)
    assert got == Raced("hedge", Outcome.WON) and p.cancelled


async def test_the_slow_attempt_wins_and_the_hedge_is_cancelled() -> None:
    p, h = Attempt("primary"), Attempt("hedge")
    got, _, discarded = await _race(p, h, on_hedge=p.go.set)
    assert got == Raced("primary", Outcome.LOST) and h.cancelled and discarded == []


async def test_an_answer_that_comes_second_is_discarded() -> None:
    p, h = Attempt("primary"), Attempt("hedge")

    def both() -> None:
        p.go.set()
        h.go.set()

    got, _, discarded = await _race(p, h, on_hedge=both)
    assert isinstance(got, Raced) and got.answer in ("primary", "hedge")
    assert discarded == [] or discarded == [{"primary": "hedge", "hedge": "primary"}[got.answer]]


async def test_a_failure_after_the_mark_leaves_the_hedge_to_answer() -> None:
    p, h = Attempt(fail=ValueError("no first byte")), Attempt("hedge")

    def fail_then_answer() -> None:
        p.go.set()
        asyncio.get_running_loop().call_later(0.01, h.go.set)

    got, failed, _ = await _race(p, h, on_hedge=fail_then_answer)
    assert got == Raced("hedge", Outcome.WON) and failed == ["no first byte"]


async def test_nothing_answering_is_a_failed_hedge() -> None:
    p, h = Attempt(fail=ValueError("silent")), Attempt(None)

    def both() -> None:
        p.go.set()
        h.go.set()

    got, failed, _ = await _race(p, h, on_hedge=both)
    assert got == Raced(None, Outcome.FAILED) and failed == ["silent"]


async def test_a_caller_that_leaves_cancels_both() -> None:
    p, h = Attempt(), Attempt()
    started = asyncio.Event()
    task = asyncio.ensure_future(_race(p, h, on_hedge=started.set))
    await started.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert p.cancelled and h.cancelled
