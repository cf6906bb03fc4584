"""Small worlds for the simulator tests: configs, metro tables and scenarios built in code."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from regiongate.config import Config, parse_config
from regiongate.simulate.scenario import Scenario

FLAT = [1.0] * 24


def config(regions: list[tuple[str, float, float, str]], deployments: list[dict[str, Any]]) -> Config:
    """``regions``: (id, lat, lon, zone); ``deployments``: region, models, limit, slots, ttft_ms, tokens_per_s."""
    lines = []
    for rid, lat, lon, zone in regions:
        lines += ["[[regions]]", f'id = "{rid}"', f"lat = {lat}", f"lon = {lon}", f'zone = "{zone}"', ""]
    for d in deployments:
        models = ", ".join(f'"{m}"' for m in d["models"])
        slots = f", slots = {d['slots']}" if d.get("slots") else ""
        backend = (
            f'{{ kind = "simulated", ttft_ms = {d.get("ttft_ms", 0.0)}, '
            f"tokens_per_s = {d.get('tokens_per_s', 100.0)}{slots} }}"
        )
        lines += [
            "[[deployments]]",
            f'region = "{d["region"]}"',
            f"models = [{models}]",
            f"limit = {d['limit']}",
            f"backends = [{backend}]",
            "",
        ]
    return parse_config("\n".join(lines), "test-config")


def metros(path: Path, rows: list[tuple[str, str, str, float, float, float, float]]) -> str:
    """Write a metro table; rows are (name, country, continent, lat, lon, population_m, utc_offset)."""
    text = "name,country,continent,lat,lon,population_m,utc_offset\n" + "".join(
        ",".join(str(x) for x in r) + "\n" for r in rows
    )
    path.write_text(text)
    return str(path)


def scenario(metro_csv: str, models: dict[str, float], **sections: Any) -> Scenario:
    """A scenario with flat traffic from the given metro table; ``sections`` override whole sections."""
    data: dict[str, Any] = {
        "run": {"requests": 1000, "seed": 1, "samples": 24, "policies": ["gateway"]},
        "traffic": {
            "metros": metro_csv,
            "diurnal": FLAT,
            "models": models,
            "prompt_tokens": {"dist": "fixed", "mean": 0, "min": 0},
            "completion_tokens": {"dist": "fixed", "mean": 100},
        },
    }
    for k, v in sections.items():
        if k == "traffic":
            data["traffic"] = {**data["traffic"], **v}
        else:
            data[k] = v
    data["base_dir"] = ""
    return Scenario.model_validate(data)


def erlang_b(c: int, a: float) -> float:
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in M/M/c with offered load ``a`` Erlangs (a < c)."""
    b = erlang_b(c, a)
    rho = a / c
    return b / (1.0 - rho * (1.0 - b))


def mmc_mean_wait_s(c: int, lam: float, mu: float) -> float:
    return erlang_c(c, lam / mu) / (c * mu - lam)


assert math.isclose(erlang_b(1, 1.0), 0.5)
