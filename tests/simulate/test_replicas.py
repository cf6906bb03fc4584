"""Replicas on stale state: each decides on a snapshot until it is ``staleness_ms`` old, and (the remedy
against herding) counts the leases it took itself since then, as a real replica knows its own leases."""

from __future__ import annotations

from pathlib import Path

from regiongate.simulate.engine import Engine
from regiongate.simulate.fleet import build_world
from regiongate.simulate.policies import make_policy
from tests.support.simulate_worlds import config, metros, scenario


def _engine(tmp_path: Path, policy: str) -> Engine:
    here = metros(tmp_path / "metros.csv", [("Here", "XX", "Nowhere", 0.0, 0.0, 1.0, 0.0)])
    cfg = config(
        [("r1", 0.0, 0.0, "z"), ("r2", 0.0, 1.0, "z")],
        [
            {"region": r, "models": ["m"], "limit": 10, "slots": 2, "ttft_ms": 50, "tokens_per_s": 100}
            for r in ("r1", "r2")
        ],
    )
    sc = scenario(here, {"m": 1.0}, run={"requests": 1000, "replicas": 2, "staleness_ms": 1000})
    w = build_world(cfg, sc)
    e = Engine(w, policy, make_policy(policy))
    e.start(1)
    return e


def _r1(e: Engine, replica: int, now: float) -> tuple[int, int]:
    d = e._stale_snapshot(0, now, replica).by_model["m"][0]
    assert d.region == "r1"
    return d.in_use, d.queue_depth


def _arrive_r1(e: Engine, t: float, replica: int) -> None:
    ctx = e.world.contexts[0]
    e.arrive(t, ctx, ctx.request, 100, 10_000, replica)  # long completions: nothing finishes in the test


def test_a_replica_counts_its_own_leases_until_its_snapshot_is_refreshed(tmp_path: Path) -> None:
    e = _engine(tmp_path, "gateway")
    assert _r1(e, 0, 0.0) == (0, 0) and _r1(e, 1, 0.0) == (0, 0)
    for i in range(3):  # replica 0 sends three requests to its nearest region, r1 (two backend slots)
        _arrive_r1(e, 0.1 * (i + 1), 0)
    assert e.dep_at[0]["r1"].in_use == 3
    assert _r1(e, 0, 0.5) == (3, 1)  # its own three leases, the third waiting behind the two slots
    assert _r1(e, 1, 0.5) == (0, 0)  # the other replica has not seen them: its snapshot is 0.5 s old
    assert _r1(e, 1, 1.0) == (3, 1)  # refreshed: the true state


def test_without_the_remedy_a_replica_decides_on_its_snapshot_alone(tmp_path: Path) -> None:
    e = _engine(tmp_path, "gateway-unreserved")
    _r1(e, 0, 0.0)
    for i in range(3):
        _arrive_r1(e, 0.1 * (i + 1), 0)
    assert _r1(e, 0, 0.5) == (0, 0)
