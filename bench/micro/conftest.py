"""Shared worlds for the micro-benchmarks (run with: pytest bench/micro -p no:randomly)."""

from __future__ import annotations

import random

import pytest

from regiongate.app.runtime import build_fleet
from regiongate.config import parse_config
from regiongate.state.fleet import Fleet

N_REGIONS = 30
N_MODELS = 100


def big_world_toml(regions: int = N_REGIONS, models: int = N_MODELS) -> str:
    """``regions`` regions on a rough grid of the globe in 5 zones, each serving every one of ``models``
    models through one http backend: the policy ranks all ``regions`` regions for every request."""
    rnd = random.Random(4)
    out = ["[gateway]", "lat = 39.04", "lon = -77.49", ""]
    names = [f"model-{i:03d}" for i in range(models)]
    for r in range(regions):
        out += [
            "[[regions]]",
            f'id = "r{r:02d}"',
            f"lat = {rnd.uniform(-60, 70):.2f}",
            f"lon = {rnd.uniform(-180, 180):.2f}",
            f'zone = "z{r % 5}"',
            "",
        ]
    for r in range(regions):
        out += [
            "[[deployments]]",
            f'region = "r{r:02d}"',
            "models = [" + ", ".join(f'"{m}"' for m in names) + "]",
            "limit = 64",
            f'backends = [{{ kind = "http", url = "http://127.0.0.1:{9000 + r}/v1" }}]',
            "",
        ]
    return "\n".join(out)


@pytest.fixture(scope="session")
def big_fleet() -> Fleet:
    fleet = build_fleet(parse_config(big_world_toml(), "bench"))
    rnd = random.Random(7)
    for d in fleet.deployments.values():  # measured TTFTs, so ranking uses real numbers
        d.ttft.add(rnd.uniform(40, 400), 0.0)
    return fleet
