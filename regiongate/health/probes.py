"""Active health: every HTTP backend is probed on an interval (``GET <url><probe_path>``, by default the
OpenAI ``/models`` list that every compatible server has). A probe does two things:

- its round-trip time feeds ``Backend.rtt`` (an EWMA), which the policy uses as the measured network RTT
  to the region (see ``core.policy``);
- ``unhealthy_after`` failed probes in a row take the backend out of every plan until ``healthy_after``
  good ones bring it back. This is apart from passive outlier ejection (``health.Outlier``), which
  counts failed requests; a backend is used only when both say it is healthy.

The path is the backend's own (``probe_path`` of its dialect: ``/health`` at the root for llama.cpp, vLLM and
SGLang, see ``regiongate.upstream.dialect``), else ``[health].probe_path``.

A probe that gets no answer in time while the backend is visibly serving (a request to it in flight or one
answered since the previous probe, and no failure since its last success) is not counted, neither way:
a single-slot server (llama-server with one HTTP thread) answers nothing else while it generates, and
its requests succeeding say more about its health than a probe that waited behind them. A refused
connection or a 5xx always counts, and so does a timeout once its requests fail too.

In-process simulated backends are not probed (there is no network to measure).

``HealthCollector`` adds both kinds of health, the RTT and the shared-state link to ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from regiongate.config.scale import HealthConfig
from regiongate.state.outlier import Ewma

if TYPE_CHECKING:
    from regiongate.state.fleet import Backend, Fleet
    from regiongate.state.redis_link import RedisLink

log = logging.getLogger("regiongate.health")


class Prober:
    def __init__(self, fleet: Callable[[], Fleet], cfg: Callable[[], HealthConfig]) -> None:
        self.fleet = fleet  # read per round: a reload swaps the fleet
        self._cfg = cfg  # and the [health] settings
        self._ok: dict[str, int] = {}  # backend id -> good probes in a row
        self._bad: dict[str, int] = {}  # backend id -> failed probes in a row
        self._last: dict[str, float] = {}  # backend id -> when its previous probe started
        self.excused = 0  # probe timeouts not counted because the backend was serving (for tests, logs)
        self._task: asyncio.Task[None] | None = None

    @property
    def cfg(self) -> HealthConfig:
        return self._cfg()

    async def probe(self, b: Backend) -> bool:
        """Probe one backend now; True when it answered (or, busy serving, was excused)."""
        up = b.upstream
        if up.base_url is None:
            return True  # an engine in this process: no network between us to measure
        started = time.monotonic()
        since = self._last.get(b.id, float("-inf"))
        self._last[b.id] = self.fleet().clock()  # the clock Backend.served_at is read with
        ok = await up.probe(b.dialect.probe_path or self.cfg.probe_path, self.cfg.probe_timeout_s)
        now = time.monotonic()
        if ok is None and b.dialect.busy_probe_grace and self._serving(b, since):
            self.excused += 1
            log.info("probe timed out while the backend serves requests: not counted", extra={"backend": b.id})
            return True
        if ok:
            if b.rtt is None:
                # The first answer opened the connection: its time includes the TCP (and TLS) handshakes,
                # two or more round trips. It warms the pooled connection and is not counted.
                b.rtt = Ewma(self.cfg.rtt_halflife_s)
            else:
                b.rtt.add((now - started) * 1000.0, now)
            self._bad[b.id] = 0
            self._ok[b.id] = self._ok.get(b.id, 0) + 1
            if not b.probe_healthy and self._ok[b.id] >= self.cfg.healthy_after:
                b.probe_healthy = True
                log.info("backend healthy again (probe)", extra={"backend": b.id})
        else:
            self._ok[b.id] = 0
            self._bad[b.id] = self._bad.get(b.id, 0) + 1
            if b.probe_healthy and self._bad[b.id] >= self.cfg.unhealthy_after:
                b.probe_healthy = False
                log.warning("backend unhealthy (probe)", extra={"backend": b.id})
        return bool(ok)

    def _serving(self, b: Backend, since: float) -> bool:
        """Requests to ``b`` are succeeding: one in flight or answered since ``since``, none failed since."""
        if b.outlier.streak or b.outlier.ejected(self.fleet().clock()):
            return False
        return b.in_flight > 0 or b.served_at >= since

    async def round(self) -> None:
        backends = list(self.fleet().backends.values())
        await asyncio.gather(*(self.probe(b) for b in backends), return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await self.round()
            await asyncio.sleep(self.cfg.probe_interval_s)

    async def start(self) -> None:
        if self.cfg.probe_interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="probes")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class HealthCollector(Collector):
    """Gauges read at scrape time: per-backend health (passive and active), RTT, ejections; the link."""

    def __init__(self, fleet: Callable[[], Fleet], link: RedisLink | None = None) -> None:
        self.fleet = fleet
        self.link = link

    def collect(self) -> Iterator[Metric]:
        fleet = self.fleet()
        now = fleet.clock()
        labels = ["backend", "region"]
        ejected = GaugeMetricFamily(
            "regiongate_backend_ejected", "1 while passive outlier detection has ejected it", labels=labels
        )
        ejections = GaugeMetricFamily(
            "regiongate_backend_ejections",
            "Consecutive ejections (the back-off doubles with each)",
            labels=labels,
        )
        probe = GaugeMetricFamily(
            "regiongate_backend_probe_healthy", "1 unless active probes take it out", labels=labels
        )
        rtt = GaugeMetricFamily("regiongate_backend_rtt_ms", "Smoothed probe round-trip time", labels=labels)
        for d in fleet.deployments.values():
            for b in d.backends:
                lv = [b.id, d.region]
                ejected.add_metric(lv, 1.0 if b.outlier.ejected(now) else 0.0)
                ejections.add_metric(lv, b.outlier.ejections)
                probe.add_metric(lv, 1.0 if b.probe_healthy else 0.0)
                if b.rtt is not None and b.rtt.value is not None:
                    rtt.add_metric(lv, b.rtt.value)
        yield from (ejected, ejections, probe, rtt)
        if self.link is not None:
            up = GaugeMetricFamily("regiongate_shared_state_up", "1 while Redis answers")
            up.add_metric([], 1.0 if self.link.up else 0.0)
            outages = GaugeMetricFamily("regiongate_shared_state_outages", "Redis outages seen")
            outages.add_metric([], self.link.outages)
            replicas = GaugeMetricFamily("regiongate_replicas", "Live replicas registered in Redis")
            replicas.add_metric([], len(self.link.replicas))
            yield from (up, outages, replicas)


def backend_health(b: Backend, now: float) -> dict[str, object]:
    """One backend's health for ``/v1/regions``."""
    return {
        "id": b.id,
        "healthy": b.healthy(now),
        "ejected": b.outlier.ejected(now),
        "ejected_for_s": round(max(b.outlier.ejected_until - now, 0.0), 1),
        "probe_healthy": b.probe_healthy,
        "rtt_ms": round(b.rtt.value, 1) if b.rtt is not None and b.rtt.value is not None else None,
    }
