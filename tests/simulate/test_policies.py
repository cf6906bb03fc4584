"""The baselines decide on the engine's live deployments (``_Baseline.pick``) instead of a snapshot when
the snapshot would show the present state: the report must not change. Both ways run on the same trace
and every count, histogram and sum of every baseline must be the same."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from regiongate.config import load_config
from regiongate.simulate import runner
from regiongate.simulate.engine import Engine
from regiongate.simulate.runner import SimResult, simulate
from regiongate.simulate.scenario import load_scenario
from tests.simulate.test_residency import worlds
from tests.support.simulate_worlds import config, metros, scenario

BASELINES = ["nearest-only", "nearest-spill", "least-loaded", "power-of-two"]


class _OnSnapshots(Engine):
    """An engine whose baseline calls the policy on a snapshot, as with replicas on stale state."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pick = None


def _both(monkeypatch: pytest.MonkeyPatch, run: Any) -> tuple[SimResult, SimResult]:
    live = run()
    with monkeypatch.context() as m:
        m.setattr(runner, "Engine", _OnSnapshots)
        snapshots = run()
    return live, snapshots


def test_baselines_on_live_state_give_the_report_of_their_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default day: every endpoint kind, an outage, a capacity cut; nearest-only refuses ~5%.
    sc = load_scenario()
    cfg = load_config(None)
    live, snaps = _both(monkeypatch, lambda: simulate(cfg, sc, requests=20_000, policies=BASELINES))
    for name in BASELINES:
        assert sum(live.stats[name].rejected) > 0, name
        assert live.stats[name] == snaps.stats[name], name


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(worlds())
def test_the_same_on_random_worlds(monkeypatch: pytest.MonkeyPatch, w: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        csv = metros(
            Path(tmp) / "metros.csv",
            [(f"P{i}", "XX", "Somewhere", lat, lon, 1.0, 0.0) for i, (lat, lon) in enumerate(w["places"])],
        )
        sc = scenario(
            csv,
            w["models"],
            run={"requests": 400_000, "seed": w["seed"], "samples": 24, "policies": BASELINES},
            traffic={"endpoints": w["endpoints"], "completion_tokens": {"dist": "exponential", "mean": 150}},
            events=w["events"],
        )
        cfg = config(w["regions"], w["deployments"])
        live, snaps = _both(monkeypatch, lambda: simulate(cfg, sc, requests=600))
    for name in BASELINES:
        assert live.stats[name] == snaps.stats[name], name
