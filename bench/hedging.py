"""Hedging's tail gain and its cost: the client's time to first token with ``[hedging]`` off and on.

    python -m bench.hedging [--requests 400] [--concurrency 4] [--slow-share 0.03] [--slow-s 2]

Two regions, each one ``http`` backend on a fault-injection upstream (tests/support/faults.py): the
nearest (us-east-1) has a heavy tail, a seeded share ``--slow-share`` of its requests waits ``--slow-s``
before its first token (below the learned 5 s budget, so without hedging the client waits it out); the
next (us-west-2) always answers at once. The same seeded sequence of slow and fast requests runs against a
gateway with hedging off and one with it on (defaults: the mark is max(p95 TTFT, 0.25 s)), after the same
warm-up. Measured per run: the client's TTFT (p50, p95, p99, max: time to the first content chunk over
REST with the streaming response), and the cost: upstream requests per client request (both upstreams'
counts) and ``regiongate_hedges_total`` by outcome. A second pair of runs without any slow request shows
what hedging costs when nothing is slow.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from regiongate.state.first_byte import MIN_SAMPLES
from tests.support.faults import Fault, FaultServer
from tests.support.procs import DEMO_KEY, Proc, spawn_gateway
from tests.support.scale import metric
from tests.support.worlds import http_backend, world

BODY = {"model": "grok-4", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def _ttft(client: httpx.AsyncClient, url: str) -> float:
    started = time.monotonic()
    first: float | None = None
    async with client.stream("POST", url, json=BODY) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data: ") and '"content"' in line:
                first = time.monotonic() - started
    assert first is not None, "a stream without content"
    return first


async def _drive(gw: Proc, requests: int, concurrency: int) -> list[float]:
    url = gw.url + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        headers={"authorization": f"Bearer {DEMO_KEY}"}, timeout=60, limits=limits
    ) as c:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> float:
            async with sem:
                return await _ttft(c, url)

        return list(await asyncio.gather(*(one() for _ in range(requests))))


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def run(
    hedging: bool, slow_share: float, slow_s: float, requests: int, concurrency: int, seed: int
) -> dict[str, float]:
    east, west = FaultServer(region="east").start(), FaultServer(region="west").start()
    try:
        rng = random.Random(seed)
        faults = [
            Fault("slow_first", seconds=slow_s) if rng.random() < slow_share else Fault()
            for _ in range(requests)
        ]
        extra = "[hedging]\nenabled = true\n" if hedging else ""
        backends = {"us-east-1": [http_backend(east.url)], "us-west-2": [http_backend(west.url)]}
        with tempfile.TemporaryDirectory(prefix="rg-hedge-") as tmp:
            gw = spawn_gateway(world(backends, extra=extra), Path(tmp), name="gateway-hedging")
            try:
                asyncio.run(_drive(gw, MIN_SAMPLES * 2, 1))  # the nearest region learns its usual TTFT
                warm = len(east.posts()) + len(west.posts())
                east.script(*faults)
                ttfts = asyncio.run(_drive(gw, requests, concurrency))
                upstream = len(east.posts()) + len(west.posts()) - warm
                outcomes = {
                    o: metric(gw.url + "/metrics", "regiongate_hedges_total", {"outcome": o}) or 0.0
                    for o in ("won", "lost", "failed")
                }
            finally:
                gw.stop()
    finally:
        east.stop()
        west.stop()
    return {
        "p50": _quantile(ttfts, 0.5),
        "p95": _quantile(ttfts, 0.95),
        "p99": _quantile(ttfts, 0.99),
        "max": max(ttfts),
        "mean": statistics.fmean(ttfts),
        "upstream_per_request": upstream / requests,
        "slow": sum(f.kind == "slow_first" for f in faults),
        **{f"hedges_{o}": v for o, v in outcomes.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--slow-share", type=float, default=0.03)
    ap.add_argument("--slow-s", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=15)
    a = ap.parse_args(argv)
    print(
        "| nearest region | hedging | TTFT p50 | p95 | p99 | max | upstream requests / request | hedges won / lost / failed |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for share in (a.slow_share, 0.0):
        for on in (False, True):
            r = run(on, share, a.slow_s, a.requests, a.concurrency, a.seed)
            tail = f"{int(r['slow'])} of {a.requests} slow ({a.slow_s:g} s)" if share else "never slow"
            print(
                f"| {tail} | {'on' if on else 'off'} | {r['p50'] * 1000:.0f} ms | {r['p95'] * 1000:.0f} ms "
                f"| {r['p99'] * 1000:.0f} ms | {r['max'] * 1000:.0f} ms | {r['upstream_per_request']:.3f} "
                f"| {r['hedges_won']:.0f} / {r['hedges_lost']:.0f} / {r['hedges_failed']:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
