"""Replicas on stale state: each decides on a snapshot until it is ``staleness_ms`` old, and (the remedy
against herding) counts the leases it took itself since then, as a real replica knows its own leases."""

from __future__ import annotations

from pathlib import Path

from regiongate.simulate.engine import Engine
from regiongate.simulate.fleet import build_world
from regiongate.simulate.policies import make_policy
from tests.support.simulate_worlds import config, metros, scenario


def _engine(tmp_path: Path, policy: str, limit: int = 10, slots: int = 2) -> Engine:
    here = metros(tmp_path / "metros.csv", [("Here", "XX", "Nowhere", 0.0, 0.0, 1.0, 0.0)])
    cfg = config(
        [("r1", 0.0, 0.0, "z"), ("r2", 0.0, 1.0, "z")],
        [
            {"region": r, "models": ["m"], "limit": limit, "slots": slots, "ttft_ms": 50, "tokens_per_s": 100}
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


def test_a_replica_whose_stale_count_says_full_still_tries_the_leases(tmp_path: Path) -> None:
    """Replica 0's own two leases fill its view of both regions until its snapshot is refreshed; they
    have finished by t = 0.9 s, so the leases have room: the request is served, not refused."""
    e = _engine(tmp_path, "gateway", limit=1, slots=1)
    ctx = e.world.contexts[0]
    for t in (0.1, 0.12):
        e.arrive(t, ctx, ctx.request, 10, 1, 0)  # short: done well before 0.9 s
    assert sum(e.stats.served) == 0 and [d.in_use for d in e.by_model[0]] == [1, 1]
    assert [d.free for d in e._stale_snapshot(0, 0.9, 0).by_model["m"]] == [0, 0]
    e.arrive(0.9, ctx, ctx.request, 10, 1, 0)
    e.finish()
    assert sum(e.stats.rejected) == 0 and sum(e.stats.served) == 3


def test_when_the_leases_are_full_too_the_refusal_is_the_policy_s(tmp_path: Path) -> None:
    e = _engine(tmp_path, "gateway", limit=1, slots=1)
    ctx = e.world.contexts[0]
    for t in (0.1, 0.12, 0.14):  # long completions: the third finds both regions truly full
        e.arrive(t, ctx, ctx.request, 10, 10_000, 0)
    assert sum(e.stats.rejected) == 1 and e.stats.reject_codes == {"capacity_exhausted": 1}
