"""``TtftEstimate.add`` is written for speed (locals, no ``max``/``min`` calls): it must give the same
floats, to the last bit, as the plain reading of the fit (``_reference_add``, the code before), since the
simulator's reports are compared to the last digit across versions."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from regiongate.core.latency import UNMEASURED_ERROR_MS
from regiongate.state.ttft import CLIP_FLOOR_MS, CLIP_SCALES, FIT_SAMPLES, MIN_WEIGHT, TtftEstimate

_LN2 = math.log(2)


def _reference_add(
    e: TtftEstimate, ttft_ms: float, now: float, rtt_ms: float | None, prompt: int, queued: int
) -> None:
    y = max(ttft_ms - (rtt_ms or 0.0), 0.0)
    e.samples += 1
    dt = max(now - e.at, 0.0) if e.samples > 1 else 0.0
    keep = min(math.exp(-dt * _LN2 / e.halflife_s), 1.0 - MIN_WEIGHT) if e.samples > 1 else 1.0
    e.at = max(e.at, now)
    fit = None if e.base is None else e.base + (e.slope or 0.0) * prompt
    if queued > 0 and fit is not None:
        excess = max(y - fit, 0.0)
        e.sqq = e.sqq * keep + queued * queued
        e.sqe = e.sqe * keep + queued * excess
        e.per_queued = e.sqe / e.sqq
        return
    fitted = e.samples > FIT_SAMPLES
    if fit is not None and fitted:
        bound = CLIP_SCALES * e.scale + CLIP_FLOOR_MS
        y = min(max(y, fit - bound), fit + bound)
        e.scale = e.scale * keep + (1.0 - keep) * abs(y - fit)
    x = float(prompt)
    e.w = e.w * keep + 1.0
    e.sx = e.sx * keep + x
    e.sy = e.sy * keep + y
    e.sxx = e.sxx * keep + x * x
    e.sxy = e.sxy * keep + x * y
    w = e.w
    mx, my = e.sx / w, e.sy / w
    var = e.sxx / w - mx * mx
    if e.samples >= FIT_SAMPLES and var > 1.0:
        e.slope = max((e.sxy / w - mx * my) / var, 0.0)
    slope = e.slope or 0.0
    e.base = max(my - slope * mx, 0.0)
    e.error = e.scale * 1.25 / math.sqrt(w) if fitted else UNMEASURED_ERROR_MS


samples = st.lists(
    st.tuples(
        st.floats(-50, 5000),  # observed TTFT, ms (below the round trip: clamped at 0)
        st.floats(-1, 30),  # seconds since the previous sample (negative: out of order)
        st.none() | st.floats(0, 200),
        st.integers(0, 20000),
        st.integers(0, 6),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300)
@given(samples)
def test_add_gives_the_reference_floats(seq: list[tuple[float, float, float | None, int, int]]) -> None:
    fast, ref = TtftEstimate(30.0), TtftEstimate(30.0)
    now = 0.0
    for ttft, step, rtt, prompt, queued in seq:
        now += step
        fast.add(ttft, now, rtt, prompt, queued)
        _reference_add(ref, ttft, now, rtt, prompt, queued)
        assert repr(fast) == repr(ref)  # repr: every field, -0.0 told from 0.0
