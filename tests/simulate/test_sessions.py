"""``simulate --tiers`` on a small trace: the tiers and affinity do what the issue's targets ask, with the
real policy (the full-size numbers are in docs/tiers.md)."""

from __future__ import annotations

import pytest

from regiongate.config import load_config
from regiongate.core import Tier
from regiongate.simulate.engine import Dep
from regiongate.simulate.scenario import load_scenario
from regiongate.simulate.sessions import (
    TIERS,
    Mix,
    Observer,
    Turn,
    affinity_table,
    affinity_target,
    paired_table,
    run_sessions,
    tier_table,
)
from regiongate.simulate.stats import percentile


def test_tiers_and_affinity_on_one_trace() -> None:
    res = run_sessions(load_config(None), load_scenario(None), Mix(), requests=12_000, seed=3)
    on, off, no_flex = res.stats["affinity"], res.stats["no-affinity"], res.stats["no-flex"]
    p, f = TIERS.index(Tier.PRIORITY), TIERS.index(Tier.FLEX)
    # the same trace: the same priority requests with and without the flex traffic beside them
    assert on.requests[p] == no_flex.requests[p] > 0 and no_flex.requests[f] == 0
    # flex is the first to be refused; priority never more often than without flex
    assert on.rejected[f] / on.requests[f] >= on.rejected[p] / on.requests[p]
    assert on.rejected[p] <= no_flex.rejected[p]
    # ... and never while a region in its scope still had a slot (the reserve is priority's): checked at
    # each refusal against the engine's deployments
    assert on.priority_with_room == no_flex.priority_with_room == off.priority_with_room == {}
    # affinity: the conversation's backend keeps its prefix; off, a region's backends split it
    assert on.later_hits / on.later > 0.9 > 0.5 > off.later_hits / off.later
    p50_on, p50_off = percentile(on.later_hist, 0.5), percentile(off.later_hist, 0.5)
    assert p50_on is not None and p50_off is not None and p50_on < p50_off
    assert res.violations == {"affinity": 0, "no-affinity": 0, "no-flex": 0}
    assert len(tier_table(res)) == 2 + 5 and len(affinity_table(res)) == 4
    # the median prefill a hit saves is recorded and reported beside the p50 drop
    saved = percentile(on.saved_hist, 0.5)
    assert (
        saved is not None and saved >= Mix().system_tokens * res.prefill_ms_per_token * 0.95
    )  # >= the system prompt
    assert sum(on.hit_hist) + sum(on.miss_hist) == sum(on.later_hist)
    paired = res.paired[0]
    assert f"{paired.drop:,.0f} ms" in affinity_target(res) and f"{paired.saved:,.0f} ms" in affinity_target(
        res
    )


def test_paired_turns_and_the_prefix_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversation's next turn is sent only once its previous turn is answered (its prompt holds that
    answer), and the paired comparison's decomposition is exact: drop = saved + RTT + queueing + server."""
    last: dict[int, Turn] = {}
    early: list[int] = []
    placed = Observer.placed

    def check(self: Observer, t: float, d: Dep, tag: Turn, prompt: int) -> int:
        prev = last.get(tag.conv)
        if prev is not None and prev is not tag and (prev.waiting > 0 or prev.ready_at > t):
            early.append(tag.n)
        assert tag.prefix < prompt  # every turn sends something new after its prefix
        last[tag.conv] = tag
        return placed(self, t, d, tag, prompt)

    monkeypatch.setattr(Observer, "placed", check)
    res = run_sessions(load_config(None), load_scenario(None), Mix(), requests=8_000, seed=5)
    assert early == [] and len(last) > 100
    groups = {g.group: g for g in res.paired}
    every = groups["all"]
    assert every is res.paired[0] and every.turns >= 0.95 * res.stats["affinity"].later
    assert sum(g.turns for g in res.paired) == 2 * every.turns
    drop, saved, rtt, queue, server = every.means
    assert abs(drop - (saved + rtt + queue + server)) < 1e-6
    # a turn both runs missed saved nothing; one only affinity hit saved its whole prefill
    assert groups["both missed"].saved == 0.0 and groups["off missed, on hit"].saved > 0.0
    assert groups["off missed, on hit"].hits_on == groups["off missed, on hit"].turns
    assert f"median TTFT drop {every.drop:,.0f} ms" in affinity_target(res)
    assert len(paired_table(res)) == 2 + len(res.paired)
