"""Load read from the backends themselves: a simulated backend exposing vLLM metrics with a long queue
sends global requests to the next region while the gateway's own limit for it is far from reached."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.clients import client, in_use, sim_gauge
from tests.support.procs import DEMO_KEY, Proc, wait_until
from tests.support.worlds import http_backend, world

MSG = [{"role": "user", "content": "Which region answers?"}]


def gauge(gw: Proc, name: str, **labels: str) -> float | None:
    for line in httpx.get(gw.url + "/metrics").text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@contextmanager
def busy(sim: Proc, n: int) -> Iterator[None]:
    """``n`` long requests sent straight to the backend (not through the gateway), left running."""
    body = json.dumps({"model": "grok-4", "messages": MSG, "max_tokens": 60}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", sim.port), timeout=5)
            s.sendall(head + body)
            socks.append(s)
        yield
    finally:
        for s in socks:
            s.close()
        sim.proc.kill()  # its queue would take half a minute to drain; nothing else uses it
        sim.proc.wait(10)


def explain(raw: object) -> dict[str, dict[str, object]]:
    rows = json.loads(raw.headers["x-regiongate-explain"])  # type: ignore[attr-defined]
    return {r["region"]: r for r in rows}


def test_long_backend_queue_sends_global_requests_to_the_next_region(
    start_gateway: Callable[..., Proc], start_sim_backend: Callable[..., Proc], tmp_path: Path
) -> None:
    # One slot at 2 tokens/s: the first long request holds it for ~30 s, the others wait in its queue.
    east = start_sim_backend("us-east-1", "--slots", "1", "--tokens-per-s", "2", "--model", "grok-4")
    west = start_sim_backend("us-west-2", "--model", "grok-4", "--tokens-per-s", "1000")
    cfg = world(
        {"us-east-1": [http_backend(east.url + "/v1")], "us-west-2": [http_backend(west.url + "/v1")]},
        extra="\n[load]\nscrape_interval_s = 0.1\n",
    )
    gw = start_gateway(cfg)
    api = client(gw)
    ask = api.chat.completions.with_raw_response.create

    idle = ask(model="grok-4", messages=MSG, max_tokens=4, extra_headers={"x-regiongate-explain": "1"})
    assert idle.headers["x-regiongate-region"] == "us-east-1"  # nearest, and idle
    rows = explain(idle)
    assert rows["us-east-1"]["verdict"] == "kept" and str(rows["us-east-1"]["reason"]).startswith(
        "rank 1 (nearest)"
    )

    with busy(east, 3):
        wait_until(lambda: sim_gauge(east, "vllm:num_requests_waiting") == 2, timeout=20)
        wait_until(lambda: gauge(gw, "regiongate_backend_queue_depth", region="us-east-1") == 2, timeout=20)

        raw = ask(model="grok-4", messages=MSG, max_tokens=4, extra_headers={"x-regiongate-explain": "1"})
        assert raw.headers["x-regiongate-region"] == "us-west-2"
        # Not the nearest region: us-east-1's backends report no room (and its queue is in its estimate).
        assert raw.headers["x-regiongate-route"] == "spillover"
        rows = explain(raw)
        assert [r for r in rows][:2] == ["us-west-2", "us-east-1"]
        east_row = rows["us-east-1"]
        assert east_row["verdict"] == "dropped"
        assert "its backends report no free capacity" in str(east_row["reason"])
        assert east_row["free"] == 0
        assert float(east_row["queue_ms"]) >= 2 * 50  # type: ignore[arg-type]  # two waiting ahead
        assert rows["us-west-2"]["verdict"] == "kept"

        # The gateway's own count for us-east-1 is nowhere near its limit of 8; /v1/regions says why.
        assert in_use(gw)["us-east-1"] == 0
        regions = httpx.get(gw.url + "/v1/regions", headers={"Authorization": f"Bearer {DEMO_KEY}"}).json()
        load = {r["id"]: m["load"] for r in regions["data"] for m in r["models"] if m["id"] == "grok-4"}
        assert load["us-east-1"] == {"queue_depth": 2, "reported_free": 0}
        for _ in range(3):
            r = ask(model="grok-4", messages=MSG, max_tokens=4)
            assert r.headers["x-regiongate-region"] == "us-west-2"

        # Pinned to the busy region, the caller is told why, with where else it could go.
        with pytest.raises(openai.APIStatusError) as err:
            client(gw, "us-east-1.localhost").chat.completions.create(model="grok-4", messages=MSG)
        assert err.value.status_code == 503 and err.value.code == "region_unavailable"
        assert "its backends report no free capacity" in err.value.message
        assert "us-west-2" in err.value.message

        # `route explain --measure` probes and reads the backends as the gateway does, and says the same.
        (tmp_path / "world.toml").write_text(cfg)
        cmd = [sys.executable, "-m", "regiongate", "route", "explain", "--model", "grok-4", "--measure"]
        out = subprocess.run(
            [*cmd, "--config", str(tmp_path / "world.toml")],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.splitlines()
        assert out[2].startswith("us-west-2") and "measured" in out[2]
        assert out[3].startswith("us-east-1") and "dropped" in out[3] and "measured" in out[3]
        assert "its backends report no free capacity" in out[3]

        # Without the header no explanation is rendered.
        plain = ask(model="grok-4", messages=MSG, max_tokens=4)
        assert "x-regiongate-explain" not in plain.headers
