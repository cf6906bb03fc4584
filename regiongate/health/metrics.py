"""Prometheus metrics, in a registry owned by the app (no module-level state).

Per-request work is one counter increment and, for streams, one histogram observation; fleet gauges
(capacity in use, health, smoothed TTFT) are read from the fleet only when ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from regiongate.state.fleet import Fleet


class _FleetCollector(Collector):
    def __init__(self) -> None:
        self.fleet: Callable[[], Fleet] | None = None  # read per scrape: a reload swaps the fleet

    def collect(self) -> Iterator[Metric]:
        if self.fleet is None:
            return
        fleet = self.fleet()
        in_use = GaugeMetricFamily("regiongate_capacity_in_use", "Leases held", labels=["model", "region"])
        limit = GaugeMetricFamily(
            "regiongate_capacity_limit", "Concurrency limit", labels=["model", "region"]
        )
        ttft = GaugeMetricFamily(
            "regiongate_ttft_smoothed_ms", "Smoothed time to first token", labels=["model", "region"]
        )
        healthy = GaugeMetricFamily(
            "regiongate_backend_healthy", "1 unless ejected", labels=["backend", "region"]
        )
        inflight = GaugeMetricFamily(
            "regiongate_backend_in_flight", "Requests in flight", labels=["backend", "region"]
        )
        now = fleet.clock()
        for d in fleet.deployments.values():
            labels = [d.model, d.region]
            in_use.add_metric(labels, fleet.capacity.in_use(d.key))
            limit.add_metric(labels, d.limit)
            ttft.add_metric(labels, d.ttft.value or 0.0)
            for b in d.backends:
                healthy.add_metric([b.id, d.region], 1.0 if b.healthy(now) else 0.0)
                inflight.add_metric([b.id, d.region], b.in_flight)
        yield from (in_use, limit, ttft, healthy, inflight)


class _ReceiptCollector(Collector):
    """Receipts signed and the signatures they took (receipts per signature: how well batching works)."""

    def __init__(self) -> None:
        self.counts: Callable[[], tuple[int, int] | None] | None = None  # (receipts, signatures)

    def collect(self) -> Iterator[Metric]:
        counts = self.counts() if self.counts is not None else None
        if counts is None:
            return
        yield CounterMetricFamily("regiongate_receipts", "Routed responses given a signed receipt", counts[0])
        yield CounterMetricFamily(
            "regiongate_receipt_signatures", "Ed25519 signatures made for those receipts", counts[1]
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "regiongate_requests",
            "Routed requests by where they ran and how they ended",
            ["model", "region", "route", "status"],
            registry=self.registry,
        )
        self._ttft = Histogram(
            "regiongate_ttft_seconds",
            "Time to first byte from the backend",
            ["region"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self._malformed = Counter(
            "regiongate_stream_malformed_events",
            "Stream events dropped because their data was not JSON, by the region that sent them",
            ["region"],
            registry=self.registry,
        )
        # Counted only when something goes wrong, so the hot path of a served request pays nothing more.
        self._failures = Counter(
            "regiongate_upstream_failures",
            "Attempts that failed before their first byte (the request moved on to the next candidate)",
            ["region", "backend"],
            registry=self.registry,
        )
        self._refusals = Counter(
            "regiongate_refusals",
            "Requests refused before routing (rate limits: code rate_limit_exceeded; shared state down)",
            ["code", "type"],
            registry=self.registry,
        )
        self._tiers = Counter(
            "regiongate_service_tier_requests",
            "Requests by service tier, where they ran and how they ended (status 503: refused for room)",
            ["tier", "region", "status"],
            registry=self.registry,
        )
        self._estimated = Counter(
            "regiongate_usage_estimated",
            "Requests whose backend reported no usage: their tokens are the gateway's estimate",
            ["region"],
            registry=self.registry,
        )
        self._hedges = Counter(
            "regiongate_hedges",
            "Hedged first-byte waits ([hedging]) by the region that was slow and how the hedge did: won (its "
            "answer kept, the slow attempt cancelled), lost (the slow one answered first), failed (no answer)",
            ["region", "outcome"],
            registry=self.registry,
        )
        self._fleet = _FleetCollector()
        self.registry.register(self._fleet)
        self._receipts = _ReceiptCollector()
        self.registry.register(self._receipts)
        self._children: dict[tuple[str, str, str, int, str], tuple[Counter, Counter]] = {}

    def watch(self, fleet: Callable[[], Fleet]) -> None:
        self._fleet.fleet = fleet

    def watch_receipts(self, counts: Callable[[], tuple[int, int] | None]) -> None:
        self._receipts.counts = counts

    def request(self, model: str, region: str, route: str, status: int, tier: str = "default") -> None:
        key = (model, region, route, status, tier)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self._requests.labels(model, region or "none", route or "none", str(status)),
                self._tiers.labels(tier, region or "none", str(status)),
            )
        children[0].inc()
        children[1].inc()

    def upstream_failure(self, region: str, backend: str) -> None:
        self._failures.labels(region, backend).inc()

    def usage_estimated(self, region: str) -> None:
        self._estimated.labels(region or "none").inc()

    def refused(self, code: str, type: str) -> None:
        self._refusals.labels(code, type).inc()

    def ttft(self, region: str, ms: float) -> None:
        self._ttft.labels(region).observe(ms / 1000.0)

    def hedge(self, region: str, outcome: str) -> None:
        self._hedges.labels(region, outcome).inc()

    def malformed(self, region: str, count: int) -> None:
        self._malformed.labels(region).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
