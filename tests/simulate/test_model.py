"""The pieces of the simulator: scenario validation, the traffic generator, the fleet model, statistics."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from regiongate.config import load_config
from regiongate.simulate.fleet import build_world
from regiongate.simulate.runner import simulate
from regiongate.simulate.scenario import ScenarioError, load_scenario, parse_clock, parse_scenario
from regiongate.simulate.stats import HIST_BINS, hist_bin, percentile
from regiongate.simulate.traffic import TrafficModel, arrivals, diurnal_at, load_metros, token_sampler
from tests.support.simulate_worlds import metros, scenario


def test_default_scenario_builds_on_the_demo_world() -> None:
    sc = load_scenario()
    assert sc.run.requests == 10_000_000
    w = build_world(load_config(), sc)
    assert w.duration_s == 86400.0 and w.time_scale == 1.0
    assert len(w.metros) >= 80
    assert set(w.models) == {"grok-4-fast", "grok-4", "grok-3-mini", "grok-code-fast-1"}
    assert len(w.contexts) == len(w.metros) * len(w.models) * len(w.endpoint_kinds)
    spec = {(d.model, d.region): d for d in w.deployments}
    assert spec[("grok-4-fast", "us-east-1")].limit == 112  # the later override wins
    assert spec[("grok-4", "eu-west-1")].token_s == pytest.approx(1 / 60)
    # --requests compresses the clock so the arrival rate is the full day's
    small = build_world(load_config(), sc, requests=100_000)
    assert small.duration_s == pytest.approx(864.0)
    assert small.events[0].start_s == pytest.approx(13 * 3600 / 100)


def test_every_metro_has_a_home_region_offering_its_model() -> None:
    w = build_world(load_config(), load_scenario())
    for ctx in w.contexts:
        home = w.region_ids[ctx.home]
        assert any(d.region == home and d.model == w.models[ctx.model] for d in w.deployments)
        assert ctx.allowed[ctx.home]  # the home region is always within the request's scope


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ("[traffic]\nmodels = { grok-4 = 1 }\ncolour = 1\n", "traffic.colour"),
        ("[traffic]\nmodels = { grok-4 = 1 }\nendpoints = { planet = 1 }\n", "unknown endpoint kind"),
        ("[traffic]\nmodels = { grok-4 = 1 }\ndiurnal = [1, 2]\n", "traffic.diurnal"),
        (
            '[traffic]\nmodels = { grok-4 = 1 }\n[[events]]\nkind = "outage"\nregion = "x"\nstart = "10:00"\nend = "09:00"\n',
            "'end' must be after 'start'",
        ),
        ('[traffic]\nmodels = { grok-4 = 1 }\nprompt_tokens = { dist = "lognormal" }\n', "needs 'median'"),
        ("[traffic\n", "not valid TOML"),
    ],
)
def test_scenario_errors_name_the_field(patch: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(patch, "s.toml")


def test_scenario_must_fit_the_fleet() -> None:
    cfg = load_config()
    for text, message in [
        ("[traffic]\nmodels = { grok-9 = 1 }\n", "'grok-9' is deployed in no region"),
        (
            '[traffic]\nmodels = { grok-4 = 1 }\n[[events]]\nkind = "outage"\nregion = "mars-1"\nstart = 1\nend = 2\n',
            "unknown region 'mars-1'",
        ),
        (
            '[traffic]\nmodels = { grok-4 = 1 }\n[network]\nrtt = [{ from = "Atlantis", to = "us-east-1", ms = 5 }]\n',
            "Atlantis",
        ),
    ]:
        with pytest.raises(ScenarioError, match=message):
            build_world(cfg, parse_scenario(text))


def test_parse_clock() -> None:
    assert parse_clock("13:30") == 13.5 * 3600
    assert parse_clock(6) == 6 * 3600
    with pytest.raises(ValueError):
        parse_clock("25:00")


def test_rtt_override_replaces_the_distance_estimate() -> None:
    text = (
        '[traffic]\nmodels = { grok-4 = 1 }\n[network]\nrtt = [{ from = "AU", to = "us-west-2", ms = 140 }]\n'
    )
    w = build_world(load_config(), parse_scenario(text))
    west = w.region_ids.index("us-west-2")
    for xi, metro in enumerate(w.metros):
        ctx = w.contexts[w.context_index(xi, 0, 0)]
        assert ctx.request.client_location is not None
        assert (ctx.request.client_location.lat, ctx.request.client_location.lon) == (metro.lat, metro.lon)
        if metro.country == "AU":
            assert ctx.rtt_s[west] == pytest.approx(0.140)
        else:
            assert ctx.rtt_s[west] != pytest.approx(0.140)


def test_arrivals_are_exactly_n_sorted_and_follow_the_weights(tmp_path: Path) -> None:
    csv = metros(
        tmp_path / "m.csv",
        [("Big", "XX", "A", 0.0, 0.0, 3.0, 0.0), ("Small", "YY", "B", 0.0, 90.0, 1.0, 0.0)],
    )
    sc = scenario(csv, {"m": 3.0, "n": 1.0}, traffic={"diurnal": [0.0] * 12 + [1.0] * 12})
    tm = TrafficModel(load_metros(csv), sc.traffic, 86400.0, bins=48)
    got = list(arrivals(tm, 20_000, [3.0, 1.0], [1.0], random.Random(7)))
    times = [a[0] for a in got]
    assert len(got) == 20_000 and times == sorted(times)
    assert times[0] >= 0.0 and times[-1] <= 86400.0
    # The curve is zero before 11:00 (it ramps up from 11 to 12), flat to 23:00, then ramps down to
    # midnight: 12-18 h carries 6 units of the 11.5 after noon.
    assert all(t >= 11 * 3600 for t in times)
    afternoon = [t for t in times if t >= 12 * 3600]
    assert len(afternoon) > 19_000
    halves = sum(t < 18 * 3600 for t in afternoon) / len(afternoon)
    assert halves == pytest.approx(6 / 11.5, abs=0.015)
    big = sum(a[1] == 0 for a in got) / len(got)
    assert big == pytest.approx(0.75, abs=0.015)
    assert sum(a[2] == 0 for a in got) / len(got) == pytest.approx(0.75, abs=0.015)
    assert tm.expected_metro_share() == pytest.approx([0.75, 0.25])


def test_diurnal_curve_follows_local_time() -> None:
    curve = [float(h) for h in range(24)]
    assert diurnal_at(curve, 5.5) == 5.5
    assert diurnal_at(curve, 23.5) == pytest.approx(11.5)  # wraps to hour 0 at midnight
    assert diurnal_at(curve, -1.0) == 23.0


def test_token_samplers() -> None:
    from regiongate.simulate.scenario import TokenDist

    rng = random.Random(1)
    draw = token_sampler(TokenDist(dist="lognormal", median=200, sigma=0.8, max=5000), rng)
    xs = sorted(draw() for _ in range(20_000))
    assert xs[len(xs) // 2] == pytest.approx(200, rel=0.05)
    assert max(xs) <= 5000 and min(xs) >= 1
    expo = token_sampler(TokenDist(dist="exponential", mean=300, max=10**6), rng)
    assert sum(expo() for _ in range(20_000)) / 20_000 == pytest.approx(300, rel=0.03)
    assert token_sampler(TokenDist(dist="fixed", mean=0, min=0), rng)() == 0


def test_lognormal_sampler_draws_what_rng_gauss_draws() -> None:
    """The sampler writes ``random.gauss`` out for speed: the same numbers as the library's, also when two
    samplers (prompt and completion) and a plain ``gauss`` caller share one generator's cached pair."""
    from regiongate.simulate.scenario import TokenDist

    dist = TokenDist(dist="lognormal", median=500, sigma=1.0, max=32768)
    fast, ref = random.Random(7), random.Random(7)
    prompt, completion = token_sampler(dist, fast), token_sampler(dist, fast)

    def expected() -> int:
        n = int(math.exp(math.log(500) + 1.0 * ref.gauss()) + 0.5)
        return min(max(n, 1), 32768)

    for i in range(5_000):
        assert prompt() == expected()
        if i % 3:
            assert completion() == expected()
        if i % 7 == 0:
            assert fast.gauss() == ref.gauss()
        assert fast.random() == ref.random()


def test_histogram_percentiles_are_within_one_percent() -> None:
    rng = random.Random(3)
    xs = [rng.lognormvariate(math.log(200), 1.0) for _ in range(50_000)]
    h = [0] * HIST_BINS
    for x in xs:
        h[hist_bin(x)] += 1
    xs.sort()
    for q in (0.5, 0.95, 0.99):
        exact = xs[int(q * len(xs)) - 1]
        est = percentile(h, q)
        assert est is not None and est == pytest.approx(exact, rel=0.01)
    assert percentile([0] * HIST_BINS, 0.5) is None


def test_policies_in_separate_processes_see_the_same_trace() -> None:
    sc = load_scenario()
    cfg = load_config()
    together = simulate(cfg, sc, requests=1500, policies=["gateway", "nearest-only"])
    apart = simulate(cfg, sc, requests=1500, policies=["gateway", "nearest-only"], jobs=2)
    assert apart.jobs == 2
    for name in ("gateway", "nearest-only"):
        a, b = together.stats[name], apart.stats[name]
        assert (a.requests, a.served, a.rejected, a.hist, a.routed_bucket) == (
            b.requests,
            b.served,
            b.rejected,
            b.hist,
            b.routed_bucket,
        )
