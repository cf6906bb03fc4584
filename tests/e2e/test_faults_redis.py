"""Redis stopped and restarted under load (a private redis-server; never the machine's shared one): a
fail-open deployment keeps serving on this replica's share, a fail-closed one answers 503
``shared_state_unavailable``, and when Redis is back the gateway reconnects by itself and resumes
shared accounting."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import redis

from tests.support.procs import DEMO_KEY, Proc, wait_until
from tests.support.scale import (
    MSG,
    Outcome,
    RedisServer,
    in_threads,
    join_all,
    metric,
    private_redis,
    shared_section,
    stream_chat,
    unique_prefix,
    world,
)

__all__ = ["private_redis"]
SIM = '{ kind = "simulated", ttft_ms = 1, tokens_per_s = 400 }'


def _post(gw: Proc, region: str) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "grok-4", "messages": MSG, "max_tokens": 4},
        headers={"authorization": f"Bearer {DEMO_KEY}", "host": f"{region}.localhost"},
        timeout=10,
    )


def test_redis_outage_per_deployment_mode_then_resume(
    private_redis: RedisServer, start_gateway: Callable[..., Proc]
) -> None:
    prefix = unique_prefix()
    shared = shared_section(
        private_redis.url,
        prefix,
        lease_ttl_s=3.0,
        heartbeat_s=0.5,
        refresh_s=0.1,
        reconnect_s=0.2,
        timeout_ms=200,
    )
    cfg = world(
        {"us-east-1": [SIM], "us-west-2": [SIM]},
        limit=16,
        outage={"us-east-1": "fail-closed", "us-west-2": "fail-open"},
        extra=shared,
    )
    gw = start_gateway(cfg)
    up = gw.url + "/metrics"
    # Steady streaming load on the fail-open region for the whole test.
    outcomes: list[Outcome] = []
    lock, stop = threading.Lock(), threading.Event()

    def load(_: int) -> None:
        for _ in range(500):
            if stop.is_set():
                return
            o = stream_chat(gw.url, Outcome(), host="us-west-2.localhost", max_tokens=24)
            with lock:
                outcomes.append(o)

    threads = in_threads(3, load)
    assert _post(gw, "us-east-1").status_code == 200

    private_redis.stop()
    wait_until(lambda: metric(up, "regiongate_shared_state_up") == 0.0, what="the outage to be noticed")
    r = _post(gw, "us-east-1")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "shared_state_unavailable"
    assert int(r.headers["retry-after"]) >= 1
    assert _post(gw, "us-west-2").status_code == 200  # fail-open: this replica's share
    with lock:
        during = len(outcomes)

    private_redis.start()
    wait_until(lambda: metric(up, "regiongate_shared_state_up") == 1.0, what="the gateway to reconnect")
    wait_until(
        lambda: _post(gw, "us-east-1").status_code == 200, timeout=5, what="fail-closed to serve again"
    )
    # Shared accounting resumed: this replica re-registered in the restarted (empty) Redis, and the
    # streams in flight hold leases there again.
    client = redis.Redis.from_url(private_redis.url)
    wait_until(lambda: client.zcard(prefix + "replicas") == 1, timeout=5, what="the replica to re-register")
    wait_until(lambda: client.zcard(prefix + "cap:grok-4@us-west-2") >= 1, timeout=5, what="leases in Redis")
    client.close()
    def grown() -> bool:
        with lock:  # the load threads append under this lock: hold it only to read
            return len(outcomes) > during

    wait_until(grown, timeout=30, what="load to go on after Redis came back")
    stop.set()
    join_all(threads, timeout=30)
    assert outcomes and all(o.ok for o in outcomes), [o for o in outcomes if not o.ok][:3]
