"""``simulate --suite``: the shipped scenarios, every policy, residency everywhere, and the target check."""

from __future__ import annotations

from pathlib import Path

import pytest

from regiongate.config import load_config
from regiongate.simulate.scenario import ScenarioError, load_shipped, parse_scenario, shipped_scenarios
from regiongate.simulate.suite import Row, ScenarioResult, check, miss_kind, run_suite, verdict, write_suite


def test_variants_extend_the_default_and_append_its_tables() -> None:
    default, het = load_shipped("default"), load_shipped("heterogeneous")
    assert het.fleet.overrides[: len(default.fleet.overrides)] == default.fleet.overrides
    assert len(het.fleet.overrides) == len(default.fleet.overrides) + 2
    assert het.traffic == default.traffic and het.events == default.events
    assert len(load_shipped("outage-recovery").events) == len(default.events) + 1
    stale = load_shipped("replicas").run
    assert stale.replicas == 8 and stale.staleness_ms == 1000
    assert {"gateway-greedy", "gateway-unreserved"} <= set(stale.policies)
    with pytest.raises(ScenarioError, match="extends"):
        parse_scenario('extends = "nope"\n[traffic]\nmodels = { m = 1 }')


def test_every_shipped_scenario_runs_every_policy_without_a_residency_violation(tmp_path: Path) -> None:
    results = run_suite(load_config(None), 3000)
    assert [r.name for r in results] == list(shipped_scenarios())
    for res in results:
        assert {r.policy for r in res.rows} >= {"gateway", "nearest-spill", "power-of-two", "oracle"}
        assert all(r.violations == 0 for r in res.rows), res.name
    path = Path(write_suite(results, str(tmp_path), 3000))
    text = path.read_text()
    assert all(f"## {name}" in text for name in shipped_scenarios()) and "p95 vs oracle" in text
    assert (tmp_path / "suite.json").exists()


def _row(
    policy: str, p95: float, rejected: float = 0.001, every: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> Row:
    return Row(policy, 200.0, p95, 800.0, rejected, 0.05, 0, every)


def test_the_target_check_names_each_miss() -> None:
    ok = ScenarioResult("s", [_row("gateway", 500), _row("nearest-spill", 900), _row("oracle", 480)], 1, 0.0)
    assert check(ok) == []
    slow = ScenarioResult(
        "s", [_row("gateway", 950), _row("nearest-spill", 900), _row("oracle", 480)], 1, 0.0
    )
    misses = check(slow)
    assert any("nearest-spill's 900" in m for m in misses) and any("oracle" in m for m in misses)
    rejecting = ScenarioResult(
        "s", [_row("gateway", 500, 0.01), _row("least-loaded", 600, 0.002), _row("oracle", 480)], 1, 0.0
    )
    assert check(rejecting) == ["rejects 1.00% > least-loaded's 0.20%"]


def test_against_a_baseline_that_refuses_more_latency_counts_every_request() -> None:
    """nearest-only refuses 5% and has the lower served p95; over all requests (a refused one slower
    than any served) its p99 is infinite and its p95 the top of what it served: the gateway wins."""
    gw = _row("gateway", 500, 0.002, (201.0, 505.0, 820.0))
    refusing = _row("nearest-only", 470, 0.05, (205.0, 2000.0, float("inf")))
    assert check(ScenarioResult("s", [gw, refusing, _row("oracle", 480)], 1, 0.0)) == []
    faster = _row("nearest-only", 470, 0.05, (150.0, 480.0, float("inf")))
    misses = check(ScenarioResult("s", [gw, faster, _row("oracle", 480)], 1, 0.0))
    assert misses == [
        "p50 over all requests 201 ms > nearest-only's 150 ms",
        "p95 over all requests 505 ms > nearest-only's 480 ms",
    ]


def test_a_miss_the_oracle_shares_is_marked(tmp_path: Path) -> None:
    res = ScenarioResult(
        "s",
        [_row("gateway", 500, 0.004), _row("least-loaded", 600, 0.002), _row("oracle", 480, 0.006)],
        1,
        0.0,
    )
    res.failures = check(res)
    res.oracle_misses = [miss_kind(m) for m in check(res, "oracle")]
    assert (
        verdict(res) == "misses the target: rejects 0.40% > least-loaded's 0.20% (the oracle misses this too)"
    )
