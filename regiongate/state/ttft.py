"""The live inputs of the latency model that are not network round trips, and how a plan is explained.

``TtftEstimate`` smooths each deployment's observed time to first token into the *queueing + prefill*
part of the estimate (``core.policy``: ``queue_ms = ttft + queue_depth * max(ttft, 50)``):

- the measured network round trip to the backend that answered is taken out of each sample, since the
  policy adds the network part on its own (counting it twice would punish far regions twice);
- a sample far above the current estimate is clipped (winsorised) to ``SPIKE_FACTOR * estimate +
  SPIKE_FLOOR_MS``, so one pathological request (a huge prompt, a GC pause) moves the estimate by a bounded
  step while a lasting rise still gets through within a few samples;
- between samples the estimate relaxes toward the model's typical TTFT with a half-life of
  ``IDLE_HALFLIFE_FACTOR`` smoothing half-lives: a region measured slow once, and therefore sent nothing
  since, is tried again instead of being shunned forever on one stale number.

All of it takes ``now`` from the caller (the fleet's clock), so tests drive it with an injected clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from regiongate.core import Plan

SPIKE_FACTOR = 4.0
SPIKE_FLOOR_MS = 250.0
MIN_WEIGHT = 0.1  # each sample moves the estimate at least this much, even in a burst
IDLE_HALFLIFE_FACTOR = 6.0
EXPLAIN_HEADER = "x-regiongate-explain"


@dataclass(slots=True)
class TtftEstimate:
    """Smoothed queueing + prefill time (ms) of one deployment; ``value`` is the estimate as of ``at``."""

    halflife_s: float
    value: float | None = None
    at: float = 0.0
    samples: int = 0

    def add(self, ttft_ms: float, now: float, rtt_ms: float | None = None) -> float:
        """Fold in one observed TTFT; ``rtt_ms`` is the measured round trip to the backend that answered."""
        sample = max(ttft_ms - (rtt_ms or 0.0), 0.0)
        self.samples += 1
        if self.value is None:
            self.value, self.at = sample, now
            return sample
        sample = min(sample, self.value * SPIKE_FACTOR + SPIKE_FLOOR_MS)
        dt = max(now - self.at, 0.0)
        w = max(1.0 - math.exp(-dt * math.log(2) / self.halflife_s), MIN_WEIGHT)
        self.value += w * (sample - self.value)
        self.at = max(self.at, now)
        return self.value

    def drift_per_s(self, prior: float, prior_moves: float = 0.0) -> float:
        """An upper bound on how fast ``current`` moves (ms per second) while no sample arrives and the
        prior stays within ``prior_moves`` of ``prior``: the relaxation is fastest right after a sample."""
        if self.value is None:
            return 0.0
        return (
            (abs(self.value - prior) + prior_moves) * math.log(2) / (self.halflife_s * IDLE_HALFLIFE_FACTOR)
        )

    def current(self, now: float, prior: float) -> float:
        """The estimate at ``now``: ``prior`` without samples, else relaxing toward it while none arrive."""
        if self.value is None:
            return prior
        idle = max(now - self.at, 0.0)
        keep = math.pow(0.5, idle / (self.halflife_s * IDLE_HALFLIFE_FACTOR))
        return prior + (self.value - prior) * keep


def typical_ttft(estimates: Iterable[TtftEstimate]) -> float:
    """The TTFT assumed for a deployment without a measurement yet: the median of its model's measured
    deployments, so an idle region is not ranked ahead of a busy one merely for lacking samples."""
    measured = sorted([e.value for e in estimates if e.value is not None])
    return measured[len(measured) // 2] if measured else 0.0


# --- explaining a plan -------------------------------------------------------------------------------
def explain_rows(plan: Plan) -> list[dict[str, Any]]:
    """One row per region the policy looked at, best estimate first: the numbers and the verdict."""
    rows = []
    for c in plan.considered:
        e = c.estimate
        rows.append(
            {
                "region": c.region,
                "verdict": c.verdict,
                "reason": c.reason,
                "estimate_ms": round(e.total_ms, 1) if e else None,
                "rtt_ms": round(e.network_ms, 1) if e else None,
                "rtt_source": e.network_source if e else None,
                "queue_ms": round(e.queue_ms, 1) if e else None,
                "free": c.free,
            }
        )
    return rows


def explain_header(plan: Plan) -> str:
    """The ``x-regiongate-explain`` response header: the rows as compact JSON (ASCII, one line)."""
    return orjson.dumps(explain_rows(plan)).decode("ascii", "replace")
