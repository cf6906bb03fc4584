"""The learned latency model of each deployment (``core.latency``), from the TTFTs the gateway observes.

Each sample is one observed time to first token with the request's prompt length and the queue depth the
gateway saw when it sent it. The measured network round trip to the backend that answered is taken out
first (the policy adds the network part on its own; counting it twice would punish far regions twice).
What remains is fitted per deployment as

    server_ms = base_ms + prompt * prefill_ms_per_token + queued * wait_ms_per_queued

by exponentially weighted least squares over time (half-life ``halflife_s``): samples sent to an empty
queue fit the base and the prefill rate (a line through (prompt, server_ms)); samples sent behind a queue
fit the wait per queued request from what is left over. Prompt lengths no longer pass for load: a region
that served long prompts lately is not slower for a short one.

- Robust to outliers: a sample whose residual exceeds ``CLIP_SCALES`` robust scales (the weighted mean
  absolute residual) plus ``CLIP_FLOOR_MS`` is clipped to that bound, so one pathological request (a GC
  pause, a cold cache) moves the fit by a bounded step while a lasting change gets through in a few samples.
- ``error_ms``, the standard error of the server part for a typical request (scale / sqrt(weight)), is what
  the policy's margin is made of: few or scattered samples, a wide margin; many consistent ones, a narrow one.
- Between samples the base relaxes toward the model's typical base with a half-life of
  ``IDLE_HALFLIFE_FACTOR`` smoothing half-lives, and the error widens back toward the unmeasured one: a
  region measured slow once, and therefore sent nothing since, is tried again instead of shunned forever.

All of it takes ``now`` from the caller (the fleet's clock), so tests drive it with an injected clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from regiongate.core import Plan
from regiongate.core.frozen import fast_constructor
from regiongate.core.latency import UNMEASURED_ERROR_MS

CLIP_SCALES = 4.0
CLIP_FLOOR_MS = 50.0
MIN_WEIGHT = 0.1  # each sample moves the estimate at least this much, even in a burst
IDLE_HALFLIFE_FACTOR = 6.0
FIT_SAMPLES = 8  # below this many empty-queue samples the prefill rate is the model's typical one
QUEUE_STEP_MS = 50.0  # wait per queued request assumed before any was measured: at least one TTFT
EXPLAIN_HEADER = "x-regiongate-explain"
_LN2 = math.log(2)
_MAX_KEEP = 1.0 - MIN_WEIGHT


@dataclass(frozen=True, slots=True)
class Typical:
    """A model's typical latency numbers: what a deployment without samples of its own is assumed to have."""

    base_ms: float = 0.0
    prefill_ms_per_token: float = 0.0
    wait_ms_per_queued: float | None = None


_new_typical = fast_constructor(Typical)  # ``Typical``, without the frozen per-field cost (``core.frozen``)


@dataclass(slots=True)
class TtftEstimate:
    """The latency model of one deployment, learned from its samples (see the module docstring)."""

    halflife_s: float
    at: float = 0.0  # time of the last sample
    samples: int = 0
    # Exponentially weighted sums of the empty-queue samples: weight, x = prompt, y = server ms.
    w: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    scale: float = 0.0  # weighted mean absolute residual
    # Samples sent behind a queue: sums of queued^2 and queued * (excess over the fit).
    sqq: float = 0.0
    sqe: float = 0.0
    base: float | None = None  # the fit as of ``at``
    slope: float | None = None
    per_queued: float | None = None
    error: float = UNMEASURED_ERROR_MS

    @property
    def value(self) -> float | None:
        """The server-side TTFT of a typical request (the mean prompt seen): for metrics and the catalog."""
        if self.base is None:
            return None
        mx = self.sx / self.w if self.w > 0 else 0.0
        return self.base + (self.slope or 0.0) * mx

    def add(
        self, ttft_ms: float, now: float, rtt_ms: float | None = None, prompt: int = 0, queued: int = 0
    ) -> float:
        """Fold in one observed TTFT; ``rtt_ms`` is the measured round trip to the backend that answered,
        ``prompt`` the request's prompt tokens, ``queued`` the queue depth seen when it was sent."""
        # Written with locals and ``a if ... else b`` for ``max`` and ``min`` (the same values: ``max(a, b)``
        # is ``b if b > a else a``), since the gateway and the simulator fold in every first token.
        y = ttft_ms - (rtt_ms or 0.0)
        y = 0.0 if y < 0.0 else y
        n = self.samples = self.samples + 1
        at = self.at
        if n > 1:
            dt = now - at
            dt = 0.0 if dt < 0.0 else dt
            keep = math.exp(-dt * _LN2 / self.halflife_s)
            keep = _MAX_KEEP if keep > _MAX_KEEP else keep
        else:
            keep = 1.0
        self.at = now if now > at else at
        base = self.base
        fit = None if base is None else base + (self.slope or 0.0) * prompt
        if queued > 0 and fit is not None:
            excess = y - fit
            excess = 0.0 if excess < 0.0 else excess
            sqq = self.sqq = self.sqq * keep + queued * queued
            sqe = self.sqe = self.sqe * keep + queued * excess
            self.per_queued = sqe / sqq
            return y
        fitted = n > FIT_SAMPLES
        if fit is not None and fitted:  # clip an outlier before it enters the sums
            bound = CLIP_SCALES * self.scale + CLIP_FLOOR_MS
            lo = fit - bound
            y = lo if lo > y else y
            hi = fit + bound
            y = hi if hi < y else y
            self.scale = self.scale * keep + (1.0 - keep) * abs(y - fit)
        x = float(prompt)
        w = self.w = self.w * keep + 1.0
        sx = self.sx = self.sx * keep + x
        sy = self.sy = self.sy * keep + y
        sxx = self.sxx = self.sxx * keep + x * x
        sxy = self.sxy = self.sxy * keep + x * y
        mx, my = sx / w, sy / w
        var = sxx / w - mx * mx
        slope = self.slope
        if n >= FIT_SAMPLES and var > 1.0:
            slope = (sxy / w - mx * my) / var
            slope = self.slope = 0.0 if slope < 0.0 else slope
        slope = slope or 0.0
        base = my - slope * mx
        self.base = 0.0 if base < 0.0 else base
        # The scale says how far one sample strays; the error of the mean of ``w`` of them is smaller.
        self.error = self.scale * 1.25 / math.sqrt(w) if fitted else UNMEASURED_ERROR_MS
        return y

    def drift_per_s(self, prior: float, prior_moves: float = 0.0) -> float:
        """An upper bound on how fast the base from ``current`` moves (ms per second) while no sample
        arrives and the prior stays within ``prior_moves`` of ``prior``: fastest right after a sample."""
        if self.base is None:
            return 0.0
        return (abs(self.base - prior) + prior_moves) * _LN2 / (self.halflife_s * IDLE_HALFLIFE_FACTOR)

    def current(self, now: float, prior: float) -> float:
        """The base at ``now``: ``prior`` without samples, else relaxing toward it while none arrive."""
        if self.base is None:
            return prior
        idle = max(now - self.at, 0.0)
        keep = math.pow(0.5, idle / (self.halflife_s * IDLE_HALFLIFE_FACTOR))
        return prior + (self.base - prior) * keep

    def steady_until(self, now: float) -> float:
        """Until when (exclusive) ``params`` stays what it is at ``now`` if no sample arrives and the typical
        numbers stay the same: for ever without a fit of its own; up to the last sample's time (later, the
        base relaxes); ``now`` itself when it is already relaxing."""
        if self.base is None:
            return math.inf
        return math.nextafter(self.at, math.inf) if now <= self.at else now

    def params(self, now: float, typical: Typical) -> tuple[float, float, float, float]:
        """(base_ms, prefill_ms_per_token, wait_ms_per_queued, error_ms) at ``now``, the model's typical
        numbers standing in for what this deployment has not measured yet. While idle the base relaxes
        toward the typical one and the error widens back toward the unmeasured one, at one pace."""
        slope = self.slope if self.slope is not None else typical.prefill_ms_per_token
        wait = self.per_queued if self.per_queued is not None else typical.wait_ms_per_queued
        if self.base is None:
            base, error = typical.base_ms, self.error
        elif now > self.at:
            keep = math.pow(0.5, (now - self.at) / (self.halflife_s * IDLE_HALFLIFE_FACTOR))
            base = typical.base_ms + (self.base - typical.base_ms) * keep
            error = UNMEASURED_ERROR_MS + (self.error - UNMEASURED_ERROR_MS) * keep
        else:
            base, error = self.base, self.error
        if wait is None:
            wait = max(base, QUEUE_STEP_MS)
        return base, slope, wait, error


def _median(values: list[float]) -> float | None:
    values.sort()
    return values[len(values) // 2] if values else None


def typical(estimates: Iterable[TtftEstimate]) -> Typical:
    """The numbers assumed for a deployment without measurements of its own: the medians of its model's
    measured deployments, so an idle region is not ranked ahead of a busy one merely for lacking samples."""
    ests = estimates if isinstance(estimates, list) else list(estimates)
    base = _median([e.base for e in ests if e.base is not None])
    slope = _median([e.slope for e in ests if e.slope is not None])
    wait = _median([e.per_queued for e in ests if e.per_queued is not None])
    return _new_typical(base or 0.0, slope or 0.0, wait)


def typical_ttft(estimates: Iterable[TtftEstimate]) -> float:
    """The typical base TTFT of a model's deployments (``typical(...).base_ms``)."""
    return typical(estimates).base_ms


# --- explaining a plan -------------------------------------------------------------------------------
def explain_rows(plan: Plan) -> list[dict[str, Any]]:
    """One row per region: those the policy ranked, best prediction first, with the parts of the
    prediction (``core.latency``), then the regions it could not consider, each with its reason."""
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
                "base_ms": round(e.base_ms, 1) if e else None,
                "prefill_ms": round(e.prefill_ms, 1) if e else None,
                "error_ms": round(e.error_ms, 1) if e else None,
                "free": c.free,
            }
        )
    return rows


def explain_header(plan: Plan) -> str:
    """The ``x-regiongate-explain`` response header: the rows as compact JSON (ASCII, one line)."""
    return orjson.dumps(explain_rows(plan)).decode("ascii", "replace")
