"""``route explain``'s text (``app.explain.render``) for a refusal made on lease counts alone."""

from __future__ import annotations

from regiongate.app.explain import render
from regiongate.core import RouteRequest, decide
from tests.core.test_policy import GROK4, world


def test_route_explain_shows_the_regions_tried_before_a_refusal_on_lease_counts() -> None:
    req = RouteRequest("grok-4")
    text = render(decide(world(in_use=dict.fromkeys(GROK4, 8)), req, explain=True), req)
    lines = text.splitlines()
    assert lines[-1].startswith("refused: HTTP 503 capacity_exhausted") and "count may be stale" in lines[-1]
    assert sum("its lease is still tried" in line for line in lines) == len(GROK4)
    plain = render(decide(world(unhealthy=set(GROK4)), req, explain=True), req)
    assert len(plain.splitlines()) == 2 and "refused: HTTP 503" in plain, "nothing to try: the refusal alone"
