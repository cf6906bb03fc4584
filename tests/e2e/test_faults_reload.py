"""Hot reload under load: `regiongate reload` (SIGHUP) applies new regions, backends and limits without
dropping a request in flight; an invalid config is refused and the running one keeps serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.procs import DEMO_KEY, Proc, wait_until
from tests.support.scale import FAST_SIM, MSG, Outcome, in_threads, join_all, stream_chat, world

SLOW = '{ kind = "simulated", ttft_ms = 1, tokens_per_s = 60 }'


def _regions(gw: Proc) -> dict[str, list[dict[str, object]]]:
    r = httpx.get(gw.url + "/v1/regions", headers={"authorization": f"Bearer {DEMO_KEY}"})
    return {reg["id"]: reg["models"] for reg in r.json()["data"]}


def _reload(pid_file: Path, config: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "regiongate",
        "reload",
        "--pid-file",
        str(pid_file),
        "--config",
        str(config),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def test_reload_during_load(start_gateway: Callable[..., Proc], tmp_path: Path) -> None:
    path, pid_file = tmp_path / "live.toml", tmp_path / "gw.pid"
    path.write_text(world({"us-east-1": [SLOW]}, limit=8))
    gw = start_gateway(args=["--config", str(path), "--pid-file", str(pid_file)])
    outcomes: list[Outcome] = []
    lock, stop = threading.Lock(), threading.Event()

    def load(_: int) -> None:
        for _ in range(300):
            if stop.is_set():
                return
            o = stream_chat(gw.url, Outcome(), host="us-east-1.localhost", max_tokens=30)
            with lock:
                outcomes.append(o)

    threads = in_threads(4, load)
    wait_until(lambda: len(outcomes) >= 4, what="load")

    # A new region and backend, a lower limit, and rate limits, applied while streams are open.
    extra = "[limits.key]\nrequests_per_minute = 100000\n"
    path.write_text(world({"us-east-1": [SLOW], "eu-west-1": [FAST_SIM]}, limit=6, extra=extra))
    done = _reload(pid_file, path)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: bool(_regions(gw).get("eu-west-1")), timeout=10, what="eu-west-1 to appear")
    assert _regions(gw)["us-east-1"][0]["capacity"]["limit"] == 6  # type: ignore[index]
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "grok-4", "messages": MSG, "max_tokens": 4},
        headers={"authorization": f"Bearer {DEMO_KEY}", "host": "eu-west-1.localhost"},
    )
    assert r.status_code == 200 and r.headers["x-regiongate-region"] == "eu-west-1"
    assert r.headers["x-ratelimit-limit-requests"] == "100000"

    # An invalid file: `regiongate reload` refuses it before signalling ...
    path.write_text(world({"us-east-1": [SLOW]}, limit=0))
    bad = _reload(pid_file, path)
    assert bad.returncode == 2 and "limit" in bad.stderr
    # ... and a raw SIGHUP with it is rejected by the gateway, which keeps the running config.
    os.kill(int(pid_file.read_text()), signal.SIGHUP)
    wait_until(lambda: "config reload rejected" in gw.output(), timeout=10, what="the rejection to be logged")
    assert _regions(gw)["eu-west-1"]
    with lock:
        before = len(outcomes)
    wait_until(lambda: len(outcomes) > before + 4, what="load to go on after the rejected reload")
    stop.set()
    join_all(threads, timeout=30)
    assert len(outcomes) > 8
    assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok][:3]
