"""Load read from the backends themselves: each HTTP backend's Prometheus ``/metrics``, when it has one.

Understood metric names (the model is picked by the ``model_name`` label; series of several engines or
data-parallel ranks of one server are added up, cache occupancy takes the fullest):

====================  ===============================  ========================================
                      vLLM                             SGLang
====================  ===============================  ========================================
running requests      ``vllm:num_requests_running``    ``sglang:num_running_reqs``
waiting requests      ``vllm:num_requests_waiting``    ``sglang:num_queue_reqs``
                                                       (+ ``sglang:num_grammar_queue_reqs``)
KV cache occupancy    ``vllm:kv_cache_usage_perc``     ``sglang:token_usage``
                      (older: ``gpu_cache_usage_perc``)
====================  ===============================  ========================================

From a reading, per deployment:

- ``queue_depth`` = the waiting requests per healthy backend (rounded up); the policy ranks a deployment
  with a deep queue lower even while it has free capacity;
- ``reported_free`` = the backend's own headroom, in requests at the current mix:
  ``floor(running / occupancy) - running - waiting`` (the cache holds ``running / occupancy`` sequences
  like the ones running now), summed over the healthy backends; unknown (None) while nothing runs or any
  healthy backend did not report. The policy uses ``min(limit - in_use, reported_free)``.

A reading older than ``[load].stale_after_s`` counts as none. A URL that answers anything but Prometheus
text (404, HTML, JSON) is left alone for ``MISSING_RETRY_S``: a provider's API has no ``/metrics``. The
in-process simulated engine is read directly, under the same vLLM names, so the demo world queues the same
way. ``/metrics`` is fetched without credentials (vLLM and SGLang do not guard it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from regiongate.upstream.base import Upstream

if TYPE_CHECKING:
    from regiongate.config import Config, LoadConfig
    from regiongate.state.fleet import Backend, Deployment, Fleet

log = logging.getLogger("regiongate.load")

RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "sglang:num_grammar_queue_reqs")
OCCUPANCY = ("vllm:kv_cache_usage_perc", "sglang:token_usage", "vllm:gpu_cache_usage_perc")
_NAMES = frozenset(RUNNING + WAITING + OCCUPANCY)
_PREFIXES = tuple(sorted(_NAMES))  # lines worth parsing (also a few longer names; filtered after)
MODEL_LABELS = ("model_name", "name")  # vLLM and SGLang; ``name`` in older SGLang
MISSING_RETRY_S = 60.0


@dataclass(frozen=True, slots=True)
class Load:
    """What one backend says about its own load for one model."""

    running: float
    waiting: float
    occupancy: float | None = None  # KV cache in use, 0..1

    @property
    def free(self) -> int | None:
        """Requests it could still start now at the current mix; None when it cannot tell."""
        if self.occupancy is None or self.occupancy <= 0.0 or self.running < 1.0:
            return None
        fits = math.floor(self.running / min(self.occupancy, 1.0) + 0.01)  # 0.01: rounded gauges
        return max(fits - math.ceil(self.running) - math.ceil(self.waiting), 0)


def parse_load(text: str, model: str | None = None) -> Load | None:
    """Read a Prometheus text exposition; None when it has no running/waiting gauge we understand.

    Only the lines of the names above are handed to the parser: a vLLM exposition is mostly histograms."""
    lines = [ln for ln in text.splitlines() if ln.startswith(_PREFIXES)]
    series: list[tuple[str, str | None, float]] = []
    try:
        for family in text_string_to_metric_families("\n".join(lines) + "\n"):
            for s in family.samples:
                if s.name in _NAMES and not math.isnan(s.value):
                    tag = next((s.labels[k] for k in MODEL_LABELS if k in s.labels), None)
                    series.append((s.name, tag, s.value))
    except ValueError:
        return None
    if model is not None and any(tag == model for _, tag, _ in series):
        series = [x for x in series if x[1] == model]
    names = {name for name, _, _ in series}
    if not names & set(RUNNING + WAITING):
        return None
    running = sum(v for n, _, v in series if n in RUNNING)
    waiting = sum(v for n, _, v in series if n in WAITING)
    occupancy = None
    for name in OCCUPANCY:  # the first name present wins: vLLM releases that export both agree
        values = [v for n, _, v in series if n == name]
        if values:
            occupancy = max(values)
            break
    return Load(max(running, 0.0), max(waiting, 0.0), occupancy)


def default_metrics_url(api_url: str) -> str:
    """``http://host:port/v1`` -> ``http://host:port/metrics`` (where vLLM and SGLang serve it)."""
    parts = urlsplit(api_url)
    return f"{parts.scheme}://{parts.netloc}/metrics"


@dataclass(frozen=True, slots=True)
class DeploymentLoad:
    queue_depth: int
    reported_free: int | None


def combine(loads: list[Load | None]) -> DeploymentLoad:
    """One deployment's load from the readings of its healthy backends (None: no fresh reading)."""
    known = [x for x in loads if x is not None]
    if not known:
        return DeploymentLoad(0, None)
    depth = math.ceil(sum(x.waiting for x in known) / len(known))
    frees = [x.free for x in known]
    free = sum(f for f in frees if f is not None) if len(known) == len(loads) and None not in frees else None
    return DeploymentLoad(depth, free)


class LoadScraper:
    """Reads every backend's load on an interval and writes it into the fleet's deployments."""

    def __init__(
        self,
        fleet: Callable[[], Fleet],
        config: Callable[[], Config],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet  # read per round: a reload swaps the fleet and the config
        self.config = config
        self.clock = clock
        self.readings: dict[str, tuple[float, Load | None]] = {}  # backend id -> (when, reading)
        self._missing: dict[str, float] = {}  # metrics URL -> not before (no Prometheus text there)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def cfg(self) -> LoadConfig:
        return self.config().load

    def _targets(self, fleet: Fleet) -> Iterator[tuple[Backend, str, str | Upstream]]:
        """(backend, model name upstream, metrics URL or in-process engine) for every readable backend."""
        overrides = {
            b.url: b.metrics_url for d in self.config().deployments for b in d.backends if b.kind == "http"
        }
        for d in fleet.deployments.values():
            for b in d.backends:
                model = b.upstream_model or d.model
                up = b.upstream
                if up.base_url is None:
                    yield b, model, up
                else:
                    url = overrides.get(up.base_url)
                    if url is None:
                        url = default_metrics_url(up.base_url)
                    if url:  # "" turns scraping off for that backend
                        yield b, model, url

    async def _fetch(self, url: str) -> str | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(skip_auto_headers=("User-Agent",))
        now = self.clock()
        if self._missing.get(url, 0.0) > now:
            return None
        try:
            timeout = aiohttp.ClientTimeout(total=self.cfg.scrape_timeout_s)
            async with self._session.get(url, timeout=timeout) as resp:
                text = await resp.text(errors="replace")
                ctype = resp.headers.get("content-type", "")
                ok = resp.status == 200 and ctype.startswith(("text/plain", "application/openmetrics-text"))
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None  # down or slow: the reading goes stale; probes judge health
        if not ok:
            if url not in self._missing:  # said once; retried quietly every MISSING_RETRY_S
                log.info("no Prometheus metrics at backend; its load is not read", extra={"url": url})
            self._missing[url] = now + MISSING_RETRY_S
            return None
        return text

    async def round(self) -> None:
        """Read every backend once (each URL once, however many models it serves) and apply."""
        fleet = self.fleet()
        targets = list(self._targets(fleet))
        urls = sorted({t for _, _, t in targets if isinstance(t, str)})
        texts = dict(zip(urls, await asyncio.gather(*(self._fetch(u) for u in urls)), strict=True))
        now = self.clock()
        for b, model, source in targets:
            if not isinstance(source, str):
                self.readings[b.id] = (now, parse_load(source.metrics_text(model) or "", model))
            elif texts.get(source) is not None:
                self.readings[b.id] = (now, parse_load(texts[source] or "", model))
        self.apply(fleet, now)

    def apply(self, fleet: Fleet, now: float) -> None:
        stale = self.cfg.stale_after_s
        for d in fleet.deployments.values():
            loads = []
            for b in d.backends:
                if not b.healthy(now):
                    continue
                at, load = self.readings.get(b.id, (0.0, None))
                loads.append(load if now - at <= stale else None)
            result = combine(loads)
            d.queue_depth, d.reported_free = result.queue_depth, result.reported_free

    async def _loop(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:  # never let one bad round end scraping for good
                log.exception("load scrape round failed")
            await asyncio.sleep(self.cfg.scrape_interval_s)

    async def start(self) -> None:
        if self.cfg.scrape_interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="load-scrape")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None


class LoadCollector(Collector):
    """Gauges read at scrape time: what each deployment's backends report about their load."""

    def __init__(self, fleet: Callable[[], Fleet]) -> None:
        self.fleet = fleet

    def collect(self) -> Iterable[Metric]:
        labels = ["model", "region"]
        depth = GaugeMetricFamily(
            "regiongate_backend_queue_depth",
            "Requests waiting per backend, as the backends report",
            labels=labels,
        )
        free = GaugeMetricFamily(
            "regiongate_backend_reported_free",
            "Free capacity the backends report (absent: unknown)",
            labels=labels,
        )
        deps: Iterable[Deployment] = self.fleet().deployments.values()
        for d in deps:
            depth.add_metric([d.model, d.region], d.queue_depth)
            if d.reported_free is not None:
                free.add_metric([d.model, d.region], d.reported_free)
        return [depth, free]
