"""Several gateway processes on one Redis behave as one gateway: the concurrency limit of a deployment
holds across all of them, measured at the backend itself, and a replica killed while it holds leases
gives its capacity back within the lease TTL."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import httpx
import redis

from tests.support.procs import DEMO_KEY, Proc, wait_until
from tests.support.scale import (
    MSG,
    Outcome,
    http,
    in_threads,
    join_all,
    metric,
    shared_redis,
    shared_section,
    stream_chat,
    unique_prefix,
    world,
)


def _shared(prefix: str, ttl: float = 3.0) -> str:
    return shared_section(shared_redis(), prefix, lease_ttl_s=ttl, heartbeat_s=0.5, refresh_s=0.1)


def test_four_replicas_never_exceed_the_limit_at_the_backend(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    limit, per_gateway = 5, 8
    sim = start_sim_backend("us-east-1", "--slots", "64", "--ttft-ms", "1", "--tokens-per-s", "40")
    cfg = world({"us-east-1": [http(sim.url + "/v1")]}, limit=limit, extra=_shared(unique_prefix()))
    gateways = [start_gateway(cfg) for _ in range(4)]
    outcomes = [Outcome() for _ in range(4 * per_gateway)]

    def run(i: int) -> None:
        stream_chat(gateways[i % 4].url, outcomes[i], host="us-east-1.localhost", max_tokens=24)

    join_all(in_threads(len(outcomes), run), timeout=60)
    served = [o for o in outcomes if o.ok]
    refused = [o for o in outcomes if not o.ok]
    for o in refused:  # a clear refusal before anything was streamed, never a broken stream
        assert o.status == 503 and o.error == "region_unavailable" and o.chunks == 0, o
    # Contention happened: the replicas together filled the limit (a refusal is only given when every
    # slot is held somewhere) and still served at least a limit's worth.
    assert refused and len(served) >= limit
    peak = metric(sim.url + "/metrics", "regiongate_sim_peak_running")
    assert peak is not None and 1 <= peak <= limit, f"backend saw {peak} at once (limit {limit})"
    assert all(metric(g.url + "/metrics", "regiongate_shared_state_up") == 1.0 for g in gateways)


def test_killed_replica_gives_capacity_back_within_the_ttl(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    ttl, limit, prefix = 2.0, 3, unique_prefix()
    sim = start_sim_backend("us-east-1", "--slots", "16", "--ttft-ms", "1", "--tokens-per-s", "5")
    cfg = world({"us-east-1": [http(sim.url + "/v1")]}, limit=limit, extra=_shared(prefix, ttl))
    a, b = start_gateway(cfg), start_gateway(cfg)
    held = [Outcome() for _ in range(limit)]
    threads = in_threads(
        limit, lambda i: stream_chat(a.url, held[i], host="us-east-1.localhost", max_tokens=200)
    )
    for o in held:
        assert o.started.wait(15), "stream did not start"

    def probe() -> httpx.Response:
        return httpx.post(
            b.url + "/v1/chat/completions",
            json={"model": "grok-4", "messages": MSG, "max_tokens": 1},
            headers={"authorization": f"Bearer {DEMO_KEY}", "host": "us-east-1.localhost"},
            timeout=10,
        )

    assert probe().status_code == 503  # a's leases fill the region for every replica
    r = redis.Redis.from_url(shared_redis())
    key = prefix + "cap:grok-4@us-east-1"
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait(5)
    sec, usec = r.time()
    killed_ms = sec * 1000 + usec // 1000
    scores = [s for _, s in r.zrange(key, 0, -1, withscores=True)]
    assert len(scores) == limit
    assert max(scores) <= killed_ms + ttl * 1000  # no lease of the dead replica outlives the TTL
    wait_until(lambda: r.zcard(key) == 0, timeout=ttl + 5, what="the dead replica's leases to expire")
    wait_until(lambda: probe().status_code == 200, timeout=5, what="b to serve again")
    join_all(threads, timeout=15)
    assert all(not o.done for o in held)  # those streams died with their replica
    r.close()
