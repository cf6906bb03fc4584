"""Streaming statistics of one policy's run, in memory that does not grow with the number of requests.

Latencies go into fixed log-spaced histograms (100 bins per factor e: each bin spans 1%, so a percentile
read back is within 0.5% of the exact one) kept per *cell* (client continent x home region); per-continent,
per-region and overall figures are sums of cells. Counters are per cell too, and per (time bucket, region)
for what changes over the day.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

HIST_LO_MS = 0.1
HIST_PER_E = 100
HIST_BINS = math.ceil(math.log(1e7 / HIST_LO_MS) * HIST_PER_E)  # 0.1 ms .. 10^4 s
HIST_OFFSET = math.log(HIST_LO_MS) * HIST_PER_E


def hist_bin(ms: float) -> int:
    if ms <= HIST_LO_MS:
        return 0
    i = int(math.log(ms) * HIST_PER_E - HIST_OFFSET)
    return i if i < HIST_BINS else HIST_BINS - 1


def bin_edges(i: int) -> tuple[float, float]:
    return (
        math.exp((i + HIST_OFFSET) / HIST_PER_E),
        math.exp((i + 1 + HIST_OFFSET) / HIST_PER_E),
    )


def merge(hists: Iterable[Sequence[int]]) -> list[int]:
    out = [0] * HIST_BINS
    for h in hists:
        for i, v in enumerate(h):
            if v:
                out[i] += v
    return out


def percentile(hist: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) in ms, interpolated inside its bin; None for an empty histogram."""
    n = sum(hist)
    if n == 0:
        return None
    target = q * n
    seen = 0
    for i, v in enumerate(hist):
        if v and seen + v >= target:
            lo, hi = bin_edges(i)
            return lo + (hi - lo) * max(0.0, target - seen) / v
        seen += v
    return bin_edges(HIST_BINS - 1)[1]


def mean_ms(hist: Sequence[int]) -> float | None:
    n = sum(hist)
    if n == 0:
        return None
    return sum(v * math.sqrt(bin_edges(i)[0] * bin_edges(i)[1]) for i, v in enumerate(hist) if v) / n


def cdf_points(hist: Sequence[int]) -> tuple[list[float], list[float]]:
    """(upper edge ms, cumulative share) for every non-empty bin: a latency CDF to plot."""
    n = sum(hist)
    xs: list[float] = []
    ys: list[float] = []
    seen = 0
    for i, v in enumerate(hist):
        if v:
            seen += v
            xs.append(bin_edges(i)[1])
            ys.append(seen / n)
    return xs, ys


@dataclass
class PolicyStats:
    """Everything one policy's run records. Cells are ``continent * n_regions + home_region``."""

    policy: str
    n_cells: int
    n_regions: int
    n_buckets: int
    n_continents: int
    requests: list[int] = field(default_factory=list)
    served: list[int] = field(default_factory=list)  # first token delivered
    rejected: list[int] = field(default_factory=list)  # refused by the policy
    failed: list[int] = field(default_factory=list)  # admitted, lost to an outage before the first token
    spilled: list[int] = field(default_factory=list)  # not served by the policy's first choice
    remote: list[int] = field(default_factory=list)  # served outside the home (nearest) region
    hist: list[list[int]] = field(default_factory=list)  # client TTFT per cell
    routed_region: list[int] = field(default_factory=list)  # admitted per region
    inbound_region: list[int] = field(default_factory=list)  # admitted per region from another home
    wait_sum_s: list[float] = field(default_factory=list)  # backend queue wait per region
    wait_n: list[int] = field(default_factory=list)
    waited: list[int] = field(default_factory=list)  # per region: requests that queued for a slot
    routed_bucket: list[list[int]] = field(default_factory=list)  # [bucket][region], by arrival time
    arrivals_bucket: list[list[int]] = field(default_factory=list)  # [bucket][continent]
    busy_s: list[list[float]] = field(default_factory=list)  # [bucket][region] busy slot-seconds
    cap_s: list[list[float]] = field(default_factory=list)  # [bucket][region] slot-seconds available
    reject_codes: dict[str, int] = field(default_factory=dict)
    violations: int = 0
    interrupted: int = 0  # first token delivered, cut mid-stream by an outage
    cpu_s: float | None = None  # CPU time of this policy's run, when it ran alone in its process

    def __post_init__(self) -> None:
        c, r, b = self.n_cells, self.n_regions, self.n_buckets
        self.requests = [0] * c
        self.served = [0] * c
        self.rejected = [0] * c
        self.failed = [0] * c
        self.spilled = [0] * c
        self.remote = [0] * c
        self.hist = [[0] * HIST_BINS for _ in range(c)]
        self.routed_region = [0] * r
        self.inbound_region = [0] * r
        self.wait_sum_s = [0.0] * r
        self.wait_n = [0] * r
        self.waited = [0] * r
        self.routed_bucket = [[0] * r for _ in range(b)]
        self.arrivals_bucket = [[0] * self.n_continents for _ in range(b)]
        self.busy_s = [[0.0] * r for _ in range(b)]
        self.cap_s = [[0.0] * r for _ in range(b)]

    # --- views ---------------------------------------------------------------------------------------
    def cells_of_continent(self, ci: int) -> range:
        return range(ci * self.n_regions, (ci + 1) * self.n_regions)

    def cells_of_home(self, ri: int) -> list[int]:
        return [ci * self.n_regions + ri for ci in range(self.n_cells // self.n_regions)]

    def total(self, counter: Sequence[int], cells: Iterable[int] | None = None) -> int:
        return sum(counter) if cells is None else sum(counter[i] for i in cells)

    def histogram(self, cells: Iterable[int] | None = None) -> list[int]:
        idx = range(self.n_cells) if cells is None else cells
        return merge(self.hist[i] for i in idx)

    def utilisation(self, ri: int) -> list[float | None]:
        """Busy share of the region's slots in each bucket; None while it has none (outage)."""
        return [
            (self.busy_s[b][ri] / self.cap_s[b][ri]) if self.cap_s[b][ri] > 0 else None
            for b in range(self.n_buckets)
        ]

    def mean_utilisation(self, ri: int) -> float | None:
        cap = sum(self.cap_s[b][ri] for b in range(self.n_buckets))
        return sum(self.busy_s[b][ri] for b in range(self.n_buckets)) / cap if cap > 0 else None

    def mean_wait_s(self, ri: int) -> float | None:
        return self.wait_sum_s[ri] / self.wait_n[ri] if self.wait_n[ri] else None
