"""The simulator against queueing theory: one region, Poisson arrivals, the real policy on every request.

Both runs are seeded; the tolerances are about 3.5 standard deviations of the estimate for runs of this
length (measured over ten seeds), so a correct simulation meets them and a biased one does not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from regiongate.simulate.runner import simulate
from tests.support.simulate_worlds import config, erlang_b, erlang_c, metros, mmc_mean_wait_s, scenario

LAMBDA = 100.0  # arrivals per second: a day of 8.64 M requests, compressed to the run's length
N = 40_000
TOKENS_PER_S = 10_000.0


@pytest.fixture
def here(tmp_path: Path) -> str:
    return metros(tmp_path / "metros.csv", [("Here", "XX", "Nowhere", 0.0, 0.0, 1.0, 0.0)])


def _one_region(limit: int, slots: int) -> object:
    return config(
        [("r1", 0.0, 0.0, "z")],
        [
            {
                "region": "r1",
                "models": ["m"],
                "limit": limit,
                "slots": slots,
                "ttft_ms": 0,
                "tokens_per_s": TOKENS_PER_S,
            }
        ],
    )


def test_mmc_wait_matches_erlang_c(here: str) -> None:
    """M/M/4 at 60% load: admission never binds (limit 10 000), four backend slots, exponential service."""
    c, rho = 4, 0.6
    mu = LAMBDA / (rho * c)
    cfg = _one_region(limit=10_000, slots=c)
    sc = scenario(
        here,
        {"m": 1.0},
        run={"requests": int(LAMBDA * 86400), "seed": 1, "samples": 24, "policies": ["gateway"]},
        traffic={"completion_tokens": {"dist": "exponential", "mean": TOKENS_PER_S / mu, "max": 10**7}},
    )
    r = simulate(cfg, sc, requests=N)  # type: ignore[arg-type]
    st = r.stats["gateway"]
    assert r.world.duration_s == pytest.approx(N / LAMBDA)
    assert sum(st.served) == N and sum(st.rejected) == 0
    p_wait = st.waited[0] / st.wait_n[0]
    assert p_wait == pytest.approx(erlang_c(c, LAMBDA / mu), rel=0.06)
    wq = st.mean_wait_s(0)
    assert wq is not None
    assert wq == pytest.approx(mmc_mean_wait_s(c, LAMBDA, mu), rel=0.20)
    assert st.mean_utilisation(0) == pytest.approx(rho, rel=0.03)
    assert st.violations == 0


def test_loss_system_blocks_as_erlang_b(here: str) -> None:
    """limit = slots = 4: the gateway refuses when full, so refusals follow Erlang B, which holds for any
    service time distribution (here a fixed one)."""
    c, a = 4, 3.2
    cfg = _one_region(limit=c, slots=c)
    sc = scenario(
        here,
        {"m": 1.0},
        run={"requests": int(LAMBDA * 86400), "seed": 1, "samples": 24, "policies": ["gateway"]},
        traffic={"completion_tokens": {"dist": "fixed", "mean": a / LAMBDA * TOKENS_PER_S}},
    )
    r = simulate(cfg, sc, requests=N)  # type: ignore[arg-type]
    st = r.stats["gateway"]
    blocked = sum(st.rejected) / sum(st.requests)
    assert blocked == pytest.approx(erlang_b(c, a), abs=0.015)
    assert st.reject_codes == {"capacity_exhausted": sum(st.rejected)}
    assert sum(st.served) + sum(st.rejected) == N
    assert st.wait_sum_s[0] == 0.0  # nothing ever queues at the backend
