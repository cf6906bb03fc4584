"""The one lifespan (app/listeners.py) with stand-in sites: the order of start, drain period, drain and
close, without processes or sockets (the e2e shutdown tests run the same runner with real listeners)."""

from __future__ import annotations

import asyncio
import signal

from regiongate.app.listeners import Listeners
from regiongate.pipeline.services import Readiness


class Journal:
    def __init__(self) -> None:
        self.lines: list[str] = []


class Services:
    def __init__(self, j: Journal) -> None:
        self.j = j

    async def start(self) -> None:
        self.j.lines.append("services start")

    async def aclose(self) -> None:
        self.j.lines.append("services close")


class Site:
    def __init__(self, j: Journal, name: str, readiness: Readiness) -> None:
        self.j, self.name, self.readiness = j, name, readiness
        self.serving = False
        self.up = asyncio.Event()

    async def start(self) -> dict[str, object]:
        self.j.lines.append(f"{self.name} start")
        self.serving = True
        self.up.set()
        return {self.name: "here"}

    async def drain(self, grace_s: float) -> None:
        self.j.lines.append(f"{self.name} drain {grace_s:g}")
        await asyncio.sleep(0)  # the sites drain at once: both have begun before either ends
        self.serving = False
        self.j.lines.append(f"{self.name} drained")


async def test_services_start_first_sigterm_opens_the_drain_period_then_all_drain_then_close() -> None:
    j, ready = Journal(), Readiness()
    sites = [Site(j, "grpc", ready), Site(j, "rest", ready)]
    runner = Listeners(Services(j), sites, ready, drain_s=3600, grace_s=7)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(asyncio.gather(*(s.up.wait() for s in sites)), 5)
    assert j.lines == ["services start", "grpc start", "rest start"] and ready.ready

    runner.stop(signal.SIGTERM)  # what the signal handler calls
    await asyncio.sleep(0.01)
    assert not ready.ready and all(s.serving for s in sites)  # /readyz 503, still serving
    assert not task.done()

    runner.stop(signal.SIGTERM)  # a second SIGTERM ends the drain period at once
    await asyncio.wait_for(task, 5)
    assert j.lines[3:] == ["grpc drain 7", "rest drain 7", "grpc drained", "rest drained", "services close"]


async def test_sigint_skips_the_drain_period() -> None:
    j, ready = Journal(), Readiness()
    site = Site(j, "rest", ready)
    runner = Listeners(Services(j), [site], ready, drain_s=3600, grace_s=1)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(site.up.wait(), 5)
    runner.stop(signal.SIGINT)
    await asyncio.wait_for(task, 5)
    assert not ready.ready and j.lines[-1] == "services close"


def test_settle_heap_freezes_what_is_alive_and_collects_young_garbage_less_often() -> None:
    import gc

    from regiongate.app.listeners import GC_THRESHOLDS, settle_heap

    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # CPython's default
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS and GC_THRESHOLDS[0] > 700
    finally:
        gc.set_threshold(*before)
