"""``core.policy``'s fast paths mean their plain rules: ``_rank`` writes each region's prediction out
inline (one home: ``_estimate`` / ``latency.server_ms``), and ``_pick`` tests ``_open`` and ``_roomy`` inline,
reading ``free`` once. Both were written out for the simulator's speed (issue 16 item 6); these tests keep
them from drifting from the rules they restate."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from regiongate.core import RouteRequest, WorldSnapshot
from regiongate.core.affinity import Affinity
from regiongate.core.latency import server_ms
from regiongate.core.policy import _estimate, _network, _open, _pick, _rank, _roomy
from tests.core.test_policy import MODELS, requests, worlds


@st.composite
def learned_worlds(draw: st.DrawFn) -> WorldSnapshot:
    """A random world whose deployments have learned numbers (queues, prefill rates, errors) and limits
    large enough for a reserve of more than one slot."""
    base = draw(worlds())
    limits = {key: draw(st.integers(1, 40)) for key in base.deployments}  # a reserve of several slots
    deps = {
        key: replace(
            d,
            limit=limits[key],
            in_use=draw(st.integers(0, limits[key])),
            prefill_ms_per_token=draw(st.floats(0, 2)),
            wait_ms_per_queued=draw(st.floats(0, 300)),
            queue_depth=draw(st.integers(0, 20)),
            error_ms=draw(st.floats(0, 80)),
        )
        for key, d in base.deployments.items()
    }
    return WorldSnapshot.build(base.regions, deps, base.gateway_location)


def _request(data: st.DataObject, snapshot: WorldSnapshot) -> RouteRequest:
    req = data.draw(requests(snapshot))
    aff = data.draw(
        st.none()
        | st.builds(Affinity, st.sampled_from(sorted(snapshot.regions)), st.just(""), st.integers(0, 4000))
    )
    return replace(
        req, prompt_tokens=data.draw(st.integers(0, 8000)), affinity=aff, salt=data.draw(st.integers(0, 99))
    )


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_rank_predicts_what_the_estimate_predicts(data: st.DataObject) -> None:
    snapshot = data.draw(learned_worlds())
    req = _request(data, snapshot)
    deps = snapshot.by_model.get(req.model, ())
    if not deps:
        return
    ranked, near_i = _rank(snapshot, req, deps)
    assert sorted(r[2] for r in ranked) == sorted(d.region for d in deps)
    for pred, net, region, d in ranked:
        assert d.region == region
        assert net == _network(snapshot, d, req.client_location)[0]
        if req.affinity is None or req.affinity.region != region:
            assert pred == net + server_ms(d, req.prompt_tokens)  # the same sum, the same float
        assert math.isclose(pred, _estimate(snapshot, d, req).total_ms, rel_tol=1e-12, abs_tol=1e-9)
    assert [r[0] for r in ranked] == sorted(r[0] for r in ranked)
    assert ranked[near_i][1:3] == min((r[1], r[2]) for r in ranked)  # the nearest, ties by region id


@settings(max_examples=400, deadline=None)
@given(data=st.data(), budget=st.none() | st.floats(0, 400))
def test_pick_chooses_by_open_and_roomy(data: st.DataObject, budget: float | None) -> None:
    snapshot = data.draw(learned_worlds())
    req = _request(data, snapshot)
    deps = snapshot.by_model.get(data.draw(st.sampled_from(MODELS)), ())
    if not deps:
        return
    ranked, near_i = _rank(snapshot, req, deps)
    limit_ms = None if budget is None else ranked[0][0] + budget
    pick, why = _pick(ranked, near_i, limit_ms, req.salt)
    open_ = [i for i, r in enumerate(ranked) if _open(r, limit_ms)]
    roomy = [i for i in open_ if _roomy(ranked[i][3])]
    if not open_:
        assert pick == -1
        return
    assert pick in (roomy or open_), "an open region, a roomy one whenever there is one"
    if near_i == 0 and 0 in roomy:
        assert (pick, why) == (0, "nearest open region, best predicted"), "the fast path's own case"
    elif len(roomy or open_) == 1:
        assert why.startswith("the only")
