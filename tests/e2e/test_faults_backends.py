"""Backend faults through real HTTP on loopback, each bounded in time: a region's backend killed under
steady load on the global endpoint, backends that hang, hang mid-headers, answer 500 or garbage; and
health (passive ejection, active probes with RTT) as /v1/regions and /metrics show it."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import httpx
import pytest

from tests.support.procs import DEMO_KEY, Proc, wait_until
from tests.support.scale import (
    FAST_SIM,
    MSG,
    Outcome,
    http,
    in_threads,
    join_all,
    metric,
    stream_chat,
    world,
)

HEALTH = "[health]\nprobe_interval_s = 0.2\nprobe_timeout_s = 0.5\nunhealthy_after = 1\n"


def _post(gw: Proc, host: str, stream: bool = False) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "grok-4", "messages": MSG, "max_tokens": 8, "stream": stream},
        headers={"authorization": f"Bearer {DEMO_KEY}", "host": host},
        timeout=15,
    )


def _regions(gw: Proc) -> dict[str, dict[str, object]]:
    r = httpx.get(gw.url + "/v1/regions", headers={"authorization": f"Bearer {DEMO_KEY}"})
    return {reg["id"]: reg["models"][0] for reg in r.json()["data"] if reg["models"]}


def test_backend_killed_under_steady_load_on_the_global_endpoint(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    east = start_sim_backend("us-east-1", "--slots", "32", "--ttft-ms", "5", "--tokens-per-s", "300")
    # Probes measure every backend here on loopback; west's emulated 40 ms round trip keeps east the
    # nearest by measurement too, so the load starts there whatever the machine's scheduling noise.
    west = start_sim_backend(
        "us-west-2", "--slots", "32", "--ttft-ms", "5", "--tokens-per-s", "300", "--rtt-ms", "40"
    )
    cfg = world({"us-east-1": [http(east.url + "/v1")], "us-west-2": [http(west.url + "/v1")]}, extra=HEALTH)
    gw = start_gateway(cfg)
    outcomes: list[Outcome] = []
    lock, stop = threading.Lock(), threading.Event()

    def client(_: int) -> None:
        for _ in range(400):  # bounded; normally ended by ``stop``
            if stop.is_set():
                return
            o = stream_chat(gw.url, Outcome(), max_tokens=16)
            with lock:
                outcomes.append(o)

    def count(region: str) -> int:
        with lock:
            return sum(1 for o in outcomes if o.ok and o.region == region)

    threads = in_threads(6, client)
    wait_until(lambda: count("us-east-1") >= 10, what="steady load on us-east-1")
    os.kill(east.proc.pid, signal.SIGKILL)
    east.proc.wait(5)
    wait_until(lambda: count("us-west-2") >= 20, what="the load to move to us-west-2")
    stop.set()
    join_all(threads, timeout=30)
    for o in outcomes:
        # Served in full, or cut after it had started streaming (told in-band); never an error before.
        assert o.ok or (o.status == 200 and o.chunks > 0 and o.error == "stream_interrupted"), o
    wait_until(lambda: _regions(gw)["us-east-1"]["healthy"] is False, timeout=5, what="east marked unhealthy")


@pytest.mark.parametrize("mode", ["hang", "hang-stream", "error500", "garbage"])
def test_faulty_backend_fails_over_before_the_first_byte(
    mode: str, start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    bad = start_sim_backend("us-east-1", "--mode", mode)
    spec = http(bad.url + "/v1", first_byte_s=0.5)
    # No probes: both backends then rank equal and the faulty one (id 0) is tried first every time.
    extra = "[health]\nconsecutive_failures = 2\nprobe_interval_s = 0\n"
    cfg = world({"us-east-1": [spec, FAST_SIM], "us-west-2": [FAST_SIM]}, extra=extra)
    gw = start_gateway(cfg)
    # Regional: the other backend of the same region answers; the data stays in us-east-1.
    r = _post(gw, "us-east-1.localhost")
    assert r.status_code == 200, r.text
    assert r.headers["x-regiongate-region"] == "us-east-1"
    assert r.json()["choices"][0]["message"]["content"]
    for _ in range(2):  # (hang-stream breaks only streams: these two are its failures)
        s = stream_chat(gw.url, Outcome(), host="us-east-1.localhost")
        assert s.ok and s.region == "us-east-1", s
    # Two failures in a row ejected the bad backend; the next request does not wait for it.
    health = {h["id"]: h for h in _regions(gw)["us-east-1"]["health"]}  # type: ignore[union-attr]
    assert health["us-east-1/grok-4/0"]["ejected"] is True
    assert health["us-east-1/grok-4/1"]["healthy"] is True
    assert metric(gw.url + "/metrics", "regiongate_backend_ejected", {"backend": "us-east-1/grok-4/0"}) == 1.0
    r = _post(gw, "localhost")
    assert r.status_code == 200 and r.headers["x-regiongate-route"] == "nearest"
    os.kill(bad.proc.pid, signal.SIGKILL)  # a server with hung requests would drain for ever


def test_regional_endpoint_with_only_a_faulty_backend_fails_clearly(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    bad = start_sim_backend("us-east-1", "--mode", "garbage")
    gw = start_gateway(world({"us-east-1": [http(bad.url + "/v1")], "us-west-2": [FAST_SIM]}))
    r = _post(gw, "us-east-1.localhost")
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "region_unavailable"
    assert "us-west-2" in err["message"]  # says who could serve it
    assert "not a JSON object" in err["message"]


def test_probes_measure_rtt_and_take_dead_backends_out(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc]
) -> None:
    near = start_sim_backend("us-east-1", "--rtt-ms", "5")
    far = start_sim_backend("us-west-2", "--rtt-ms", "150")  # far apart: a busy machine never swaps them
    cfg = world({"us-east-1": [http(near.url + "/v1")], "us-west-2": [http(far.url + "/v1")]}, extra=HEALTH)
    gw = start_gateway(cfg)

    def rtts() -> dict[str, float | None]:
        return {rid: m["health"][0]["rtt_ms"] for rid, m in _regions(gw).items()}  # type: ignore[index]

    wait_until(lambda: all(v is not None for v in rtts().values()), what="probes to measure RTT")
    got = rtts()
    assert got["us-east-1"] is not None and got["us-west-2"] is not None
    # Each includes its emulated round trip (give or take the loop's 1 ms timer granularity).
    assert got["us-east-1"] < 100 < got["us-west-2"]
    assert metric(gw.url + "/metrics", "regiongate_backend_rtt_ms", {"region": "us-west-2"}) is not None
    os.kill(near.proc.pid, signal.SIGKILL)
    near.proc.wait(5)
    wait_until(lambda: _regions(gw)["us-east-1"]["healthy"] is False, timeout=5, what="probe to fail")
    m = _regions(gw)["us-east-1"]["health"][0]  # type: ignore[index]
    assert m["probe_healthy"] is False and m["ejected"] is False  # taken out by probes, no traffic needed
    r = _post(gw, "localhost")
    assert r.status_code == 200 and r.headers["x-regiongate-region"] == "us-west-2"
    assert r.headers["x-regiongate-route"] == "spillover"
