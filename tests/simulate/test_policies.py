"""The engine's shortcuts must not change the report: the baselines decide on the engine's live
deployments (``_Baseline.pick``) instead of a snapshot when the snapshot would show the present state, and
an engine that learns nothing folds a first token into its completion (``SERVED``). Each way runs on the
same trace as the long way round, and every count, histogram and sum must be the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from regiongate.config import load_config
from regiongate.simulate import runner
from regiongate.simulate.engine import Engine
from regiongate.simulate.runner import SimResult, simulate
from regiongate.simulate.scenario import load_scenario
from tests.simulate.test_residency import run_world, worlds

BASELINES = ["nearest-only", "nearest-spill", "least-loaded", "power-of-two"]


class _OnSnapshots(Engine):
    """An engine whose baseline calls the policy on a snapshot, as with replicas on stale state."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pick = None


class _Unfolded(Engine):
    """An engine with an event for every first token."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.folds = False


def _both(
    monkeypatch: pytest.MonkeyPatch, run: Any, long_way: type[Engine] = _OnSnapshots
) -> tuple[SimResult, SimResult]:
    short = run()
    with monkeypatch.context() as m:
        m.setattr(runner, "Engine", long_way)
        long = run()
    return short, long


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
    live, snaps = _both(monkeypatch, lambda: run_world(w, BASELINES))
    for name in BASELINES:
        assert live.stats[name] == snaps.stats[name], name


SUITE = Path(__file__).parents[2] / "regiongate" / "simulate" / "data" / "suite"


# us-east-1, the busiest region, goes down and comes back: requests lost before and after their first
# token; the heterogeneous fleet also queues at a backend (waits, whose sum depends on the order).
@pytest.mark.parametrize("name", ["outage-recovery", "heterogeneous"])
def test_first_tokens_folded_into_completions_give_the_same_report(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    sc = load_scenario(SUITE / f"{name}.toml")
    cfg = load_config(sc.resolve(sc.fleet.config) if sc.fleet.config else None)
    policies = [*BASELINES, "oracle"]
    folded, unfolded = _both(
        monkeypatch, lambda: simulate(cfg, sc, requests=20_000, policies=policies), _Unfolded
    )
    for p in policies:
        st = folded.stats[p]
        assert st == unfolded.stats[p], p
        # the cases the folding must get right happened
        assert sum(st.failed) > 0 and st.interrupted > 0 and sum(st.served) > 0, p
        assert sum(st.waited) > 0 or name == "outage-recovery", p
