"""Synthetic global traffic: where requests come from, when, for which model, and how long they are.

Clients live in metro areas weighted by population times an adoption weight (per continent, per
country). Each metro follows the same diurnal curve in its own local time, so the world's load moves
with the sun. The day is cut into ``bins`` equal slices; within one the rate of every metro is constant.

Arrivals are a non-homogeneous Poisson process conditioned on exactly ``n`` requests: in the space of
cumulative intensity they are the order statistics of ``n`` uniforms, generated in ascending order one at
a time (Ross, *Simulation*: U(i+1) = U(i) + (1 - U(i)) * (1 - V ** (1 / (n - i)))), so the stream is exact,
needs no sort and no memory per request.
"""

from __future__ import annotations

import csv
import io
import math
import random
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from itertools import accumulate
from pathlib import Path

from regiongate.simulate.scenario import ScenarioError, TokenDist, TrafficConfig, parse_clock

FIELDS = ("name", "country", "continent", "lat", "lon", "population_m", "utc_offset")


@dataclass(frozen=True, slots=True)
class Metro:
    name: str
    country: str
    continent: str
    lat: float
    lon: float
    population_m: float
    utc_offset: float


def parse_metros(text: str, source: str = "metros.csv") -> list[Metro]:
    rows = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(rows)))
    if tuple(reader.fieldnames or ()) != FIELDS:
        raise ScenarioError(f"{source}: header must be {','.join(FIELDS)}")
    metros = []
    for i, r in enumerate(reader, start=2):
        try:
            m = Metro(
                r["name"],
                r["country"],
                r["continent"],
                float(r["lat"]),
                float(r["lon"]),
                float(r["population_m"]),
                float(r["utc_offset"]),
            )
        except (TypeError, ValueError) as e:
            raise ScenarioError(f"{source}: row {i}: {e}") from None
        if not (-90 <= m.lat <= 90 and -180 <= m.lon <= 180 and m.population_m >= 0):
            raise ScenarioError(f"{source}: row {i}: coordinates or population out of range")
        metros.append(m)
    if not metros:
        raise ScenarioError(f"{source}: no metro areas")
    return metros


def load_metros(path: str | None = None) -> list[Metro]:
    if path is None:
        text = resources.files("regiongate.simulate").joinpath("data/metros.csv").read_text(encoding="utf-8")
        return parse_metros(text)
    try:
        return parse_metros(Path(path).read_text(encoding="utf-8"), path)
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read metro table: {e.strerror}") from None


def metro_weights(metros: Sequence[Metro], traffic: TrafficConfig) -> list[float]:
    return [
        m.population_m
        * traffic.continent_weight.get(m.continent, 1.0)
        * traffic.country_weight.get(m.country, 1.0)
        for m in metros
    ]


def _surges(metros: Sequence[Metro], traffic: TrafficConfig) -> list[tuple[int, float, float, float]]:
    """(metro index, start hour, end hour, factor) of each flash crowd."""
    names = [m.name.lower() for m in metros]
    out = []
    for i, s in enumerate(traffic.surges):
        if s.metro.lower() not in names:
            raise ScenarioError(f"traffic.surges[{i}].metro: '{s.metro}' is no metro of the table")
        out.append(
            (names.index(s.metro.lower()), parse_clock(s.start) / 3600, parse_clock(s.end) / 3600, s.factor)
        )
    return out


def diurnal_at(curve: Sequence[float], local_hour: float) -> float:
    """The curve's hourly points joined by straight lines, wrapping at midnight."""
    h = local_hour % 24.0
    i = int(h)
    f = h - i
    return curve[i] * (1.0 - f) + curve[(i + 1) % 24] * f


_TWOPI = 2.0 * math.pi  # random.TWOPI


def token_sampler(spec: TokenDist, rng: random.Random) -> Callable[[], int]:
    """A function drawing integer token counts from ``spec`` (clipped to its min and max)."""
    lo, hi = spec.min, spec.max
    if spec.dist == "lognormal":
        assert spec.median is not None
        mu, sigma, rand, exp = math.log(spec.median), spec.sigma, rng.random, math.exp
        log, sqrt, cos, sin = math.log, math.sqrt, math.cos, math.sin

        def lognormal() -> int:
            # ``rng.gauss()`` written out (CPython's ``random.gauss``: a pair from two uniforms, the second
            # kept in ``gauss_next``, shared with any other caller of ``rng.gauss``): the same numbers.
            z = rng.gauss_next  # type: ignore[attr-defined]  # random.Random sets it in __init__
            rng.gauss_next = None  # type: ignore[attr-defined]
            if z is None:
                x2pi = rand() * _TWOPI
                g2rad = sqrt(-2.0 * log(1.0 - rand()))
                z = cos(x2pi) * g2rad
                rng.gauss_next = sin(x2pi) * g2rad  # type: ignore[attr-defined]
            n = int(exp(mu + sigma * (0.0 + z * 1.0)) + 0.5)
            return lo if n < lo else hi if n > hi else n

        return lognormal
    assert spec.mean is not None
    if spec.dist == "exponential" and spec.mean > 0:
        expo, rate = rng.expovariate, 1.0 / spec.mean

        def exponential() -> int:
            n = int(expo(rate) + 0.5)
            return lo if n < lo else hi if n > hi else n

        return exponential
    fixed = int(spec.mean + 0.5) if spec.dist == "fixed" else 0
    fixed = lo if fixed < lo else hi if fixed > hi else fixed
    return lambda: fixed


class TrafficModel:
    """The rate of every metro in every slice of the day, and the mixes to draw from."""

    def __init__(
        self,
        metros: Sequence[Metro],
        traffic: TrafficConfig,
        duration_s: float,
        bins: int = 288,
    ) -> None:
        weights = metro_weights(metros, traffic)
        if sum(weights) <= 0:
            raise ScenarioError("traffic: every metro area has weight 0")
        self.duration_s = duration_s
        self.bins = bins
        self.bin_s = duration_s / bins
        # Per slice: the cumulative weights of the metros (to draw one) and the slice's total rate.
        self.metro_cum: list[list[float]] = []
        totals = []
        surges = _surges(metros, traffic)
        for b in range(bins):
            utc_hour = (b + 0.5) * 24.0 / bins
            w = [
                wm * diurnal_at(traffic.diurnal, utc_hour + m.utc_offset)
                for wm, m in zip(weights, metros, strict=False)
            ]
            for i, start_h, end_h, factor in surges:
                if start_h <= utc_hour < end_h:
                    w[i] *= factor
            cum = list(accumulate(w))
            self.metro_cum.append(cum)
            totals.append(cum[-1])
        if sum(totals) <= 0:
            raise ScenarioError("traffic: the diurnal curve and weights give no traffic at all")
        total = sum(totals)
        self.bin_share = [t / total for t in totals]  # share of the day's requests in each slice
        self.cum_share = [0.0, *accumulate(self.bin_share)]

    def expected_metro_share(self) -> list[float]:
        """Share of the day's requests from each metro (for the report and tests)."""
        n = len(self.metro_cum[0])
        out = [0.0] * n
        for b, cum in enumerate(self.metro_cum):
            if cum[-1] <= 0:
                continue
            prev = 0.0
            for i, c in enumerate(cum):
                out[i] += self.bin_share[b] * (c - prev) / cum[-1]
                prev = c
        return out


def arrivals(
    model: TrafficModel,
    n: int,
    model_shares: Sequence[float],
    endpoint_shares: Sequence[float],
    rng: random.Random,
) -> Iterator[tuple[float, int, int, int]]:
    """Yield ``n`` arrivals ``(t, metro, model, endpoint)`` in time order."""
    model_cum = list(accumulate(model_shares))
    ep_cum = list(accumulate(endpoint_shares))
    m_total, e_total = model_cum[-1], ep_cum[-1]
    m_last, e_last = len(model_cum) - 1, len(ep_cum) - 1
    cum_share, bin_share, metro_cum = model.cum_share, model.bin_share, model.metro_cum
    bin_s, bins = model.bin_s, model.bins
    rand = rng.random
    u = 0.0
    b = 0
    for i in range(n):
        # Next order statistic of n uniforms on [0, 1): where in the day's cumulative intensity it falls.
        u += (1.0 - u) * (1.0 - rand() ** (1.0 / (n - i)))
        while b < bins - 1 and (u >= cum_share[b + 1] or bin_share[b] <= 0.0):
            b += 1
        share = bin_share[b]
        frac = (u - cum_share[b]) / share if share > 0 else 0.0
        t = (b + (frac if frac < 1.0 else 1.0)) * bin_s
        cum = metro_cum[b]
        metro = bisect_right(cum, rand() * cum[-1])
        if metro >= len(cum):
            metro = len(cum) - 1
        mi = bisect_right(model_cum, rand() * m_total)
        ei = bisect_right(ep_cum, rand() * e_total)
        yield t, metro, (mi if mi <= m_last else m_last), (ei if ei <= e_last else e_last)
