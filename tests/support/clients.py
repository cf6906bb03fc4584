"""Clients of a running gateway: the official openai SDK pointed at it, and its own views of itself."""

from __future__ import annotations

import httpx
import openai

from tests.support.procs import DEMO_KEY, Proc

MSG = [{"role": "user", "content": "What is the meaning of life?"}]


def client(gw: Proc, host: str | None = None, **kw: object) -> openai.OpenAI:
    """The SDK without its own retries: a transient 5xx must show in the test, not be hidden by a retry."""
    headers = {"Host": host} if host else None
    kw.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, default_headers=headers, **kw)  # type: ignore[arg-type]


def aclient(gw: Proc, host: str | None = None) -> openai.AsyncOpenAI:
    headers = {"Host": host} if host else None
    return openai.AsyncOpenAI(
        base_url=gw.url + "/v1", api_key=DEMO_KEY, default_headers=headers, max_retries=0
    )


def in_use(gw: Proc, model: str = "grok-4") -> dict[str, int]:
    regions = httpx.get(gw.url + "/v1/regions", headers={"Authorization": f"Bearer {DEMO_KEY}"}).json()[
        "data"
    ]
    return {r["id"]: m["capacity"]["in_use"] for r in regions for m in r["models"] if m["id"] == model}


def sim_gauge(sim: Proc, name: str) -> float:
    for line in httpx.get(sim.url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)
