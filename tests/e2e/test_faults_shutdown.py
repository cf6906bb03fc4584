"""SIGTERM during 50 open streams: /readyz answers 503 for the drain period while the gateway still
serves, then it stops accepting, every stream runs to its end (none
cut), usage is flushed to the store, leases are released, and the process exits 0.

The streams are held open by the upstream until the listener has closed (a gate, not a clock), so a slow
machine cannot let one end before the signal or after a time budget."""

from __future__ import annotations

import signal
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from tests.support.faults import Fault, FaultServer
from tests.support.procs import Proc, wait_until
from tests.support.scale import (
    Outcome,
    in_threads,
    join_all,
    shared_redis,
    shared_section,
    stream_chat,
    unique_prefix,
    world,
)

STREAMS = 50


def test_sigterm_drains_fifty_open_streams(
    start_gateway: Callable[..., Proc], fault_server: FaultServer, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    release = threading.Event()
    fault_server.tokens = 30
    fault_server.default = Fault("hold", at=3, gate=release)  # 3 tokens, then silent until released
    held = f'{{ kind = "http", url = "{fault_server.url}" }}'
    extra = shared_section(shared_redis(), prefix, lease_ttl_s=10.0, heartbeat_s=1.0)
    cfg = world({"us-east-1": [held]}, limit=64, extra=extra, gateway="shutdown_grace_s = 60\ndrain_s = 3")
    data = tmp_path / "data"
    gw = start_gateway(cfg, env={"REGIONGATE_DATA_DIR": str(data)})
    outcomes = [Outcome() for _ in range(STREAMS)]
    threads = in_threads(STREAMS, lambda i: stream_chat(gw.url, outcomes[i], max_tokens=30, timeout=60))
    for o in outcomes:
        assert o.started.wait(30), "a stream did not start"
    r = redis.Redis.from_url(shared_redis())
    key = prefix + "cap:grok-4@us-east-1"
    assert r.zcard(key) == STREAMS
    assert not any(o.done for o in outcomes)  # all 50 open when the signal comes

    gw.proc.send_signal(signal.SIGTERM)

    def draining() -> bool:  # first the drain period: still accepting, /readyz says 503
        return httpx.get(gw.url + "/readyz", timeout=5).status_code == 503

    wait_until(draining, timeout=10, what="/readyz to answer 503")
    assert httpx.get(gw.url + "/healthz", timeout=5).status_code == 200  # still serving

    def refused() -> bool:  # then no new connections
        try:
            httpx.get(gw.url + "/healthz", timeout=1)
            return False
        except httpx.TransportError:
            return True

    wait_until(refused, timeout=10, what="the listener to close")
    assert not any(o.done for o in outcomes)  # still held open: the streams outlive the listener
    release.set()
    join_all(threads, timeout=60)
    assert gw.proc.wait(30) == 0
    cut = [o for o in outcomes if not o.ok]
    assert not cut, f"{len(cut)} streams cut, e.g. {cut[0]}"
    assert {o.chunks for o in outcomes} == {31}  # whole answers: 30 tokens and the finish chunk
    assert r.zcard(key) == 0  # every lease released
    assert r.zcard(prefix + "replicas") == 0  # the replica deregistered
    r.close()
    with sqlite3.connect(data / "control.db") as db:  # usage flushed before exit
        (n,) = db.execute("SELECT SUM(requests) - SUM(errors) FROM usage_minutes").fetchone()
    assert n == STREAMS
