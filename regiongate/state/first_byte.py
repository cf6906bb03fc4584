"""The adaptive first-byte budget: how long a stream waits for a backend's first byte before the next
candidate is tried, learned per deployment from the TTFTs it was observed to have.

    budget = clamp(factor * p95(recent TTFTs), floor_s, first_byte_s)

over the last ``WINDOW`` first bytes, once there are ``MIN_SAMPLES`` of them (before that: ``first_byte_s``,
the configured ceiling). A region that is suddenly far slower than usual is thus left for the next one
after a few seconds instead of ``first_byte_s``; the floor keeps a normal slow prefill (a long prompt) from
being cut. The budget only shortens waits that have somewhere else to go: the last candidate a request may
use waits the whole ceiling (an early give-up there would only turn a slow answer into an error). A caller
may tighten it further per request (``x-regiongate-ttft-budget-ms``). A timed-out wait adds no sample.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW = 128
MIN_SAMPLES = 8
QUANTILE = 0.95


@dataclass(slots=True)
class FirstByteBudget:
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))  # ms
    _sorted: list[float] | None = None  # the sorted samples, until the next one arrives

    def add(self, ttft_ms: float) -> None:
        self.samples.append(ttft_ms)
        self._sorted = None

    def quantile_ms(self) -> float | None:
        if len(self.samples) < MIN_SAMPLES:
            return None
        if self._sorted is None:
            self._sorted = sorted(self.samples)
        s = self._sorted
        return s[min(len(s) - 1, int(QUANTILE * len(s)))]

    def budget_s(self, ceiling_s: float, floor_s: float, factor: float) -> float:
        q = self.quantile_ms()
        if q is None:
            return ceiling_s
        return min(max(factor * q / 1000.0, floor_s), ceiling_s)


BUDGET_HEADER = "x-regiongate-ttft-budget-ms"
MAX_BUDGET_MS = 600_000.0


def parse_budget_ms(raw: str | None) -> float | None:
    """The caller's ``x-regiongate-ttft-budget-ms``; ValueError for anything but a positive number of ms
    up to ten minutes."""
    if raw is None:
        return None
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not 0 < v <= MAX_BUDGET_MS:
        raise ValueError(f"{BUDGET_HEADER} must be a number of milliseconds in (0, {MAX_BUDGET_MS:g}].")
    return v
