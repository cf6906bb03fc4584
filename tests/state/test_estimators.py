"""The latency model's estimators, with injected clocks and no sleeps: smoothing (RTT, TTFT), the queue
estimate, load read from vLLM and SGLang expositions, and the X-Forwarded-For trust walk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from regiongate.app.runtime import build_fleet
from regiongate.config import parse_config
from regiongate.core import (
    ALL_ACCESS,
    GLOBAL,
    BackendState,
    DeploymentState,
    Location,
    Plan,
    Region,
    RouteRequest,
    WorldSnapshot,
    decide,
)
from regiongate.core.latency import UNMEASURED_ERROR_MS
from regiongate.health.load import (
    MISSING_RETRY_S,
    Load,
    LoadScraper,
    combine,
    default_metrics_url,
    parse_load,
)
from regiongate.pipeline.caller import TrustedProxies
from regiongate.pipeline.geoip import GeoIP, client_address
from regiongate.state.outlier import Ewma
from regiongate.state.ttft import (
    CLIP_FLOOR_MS,
    CLIP_SCALES,
    QUEUE_STEP_MS,
    TtftEstimate,
    Typical,
    explain_header,
    explain_rows,
)
from regiongate.upstream.simulated import SimulatedEngine
from tests.support.worlds import world


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --- smoothing ------------------------------------------------------------------------------------
def test_ewma_weights_samples_by_the_time_between_them() -> None:
    e = Ewma(halflife_s=10.0)
    assert e.add(100.0, 0.0) == 100.0  # the first sample is the estimate
    assert e.add(200.0, 10.0) == pytest.approx(150.0)  # one half-life later: halfway
    assert e.add(200.0, 10.0) == pytest.approx(155.0)  # a burst at the same instant moves it 10%
    assert e.add(0.0, 1010.0) == pytest.approx(0.0, abs=1e-9)  # long after, the new sample is all


def test_ttft_takes_the_network_round_trip_out() -> None:
    t = TtftEstimate(halflife_s=10.0)
    t.add(230.0, 0.0, rtt_ms=150.0)
    assert t.base == pytest.approx(80.0)  # the policy adds the 150 ms network part itself
    t.add(80.0, 10.0, rtt_ms=None)  # not measured: the whole sample counts
    assert t.base == pytest.approx(80.0)
    t.add(10.0, 20.0, rtt_ms=50.0)  # never below zero
    assert t.base is not None and 0.0 < t.base < 80.0


def _fed(t: TtftEstimate, n: int, *, base: float, per_token: float, start: float = 0.0) -> float:
    """``n`` samples a second apart from a server whose TTFT is exactly ``base + prompt * per_token``."""
    prompts = [50, 400, 1200, 3000, 150, 800]
    now = start
    for i in range(n):
        now = start + i
        p = prompts[i % len(prompts)]
        t.add(base + p * per_token, now, prompt=p)
    return now


def test_the_fit_separates_base_ttft_from_this_requests_prefill() -> None:
    """Prompt lengths no longer pass for load: the base and the prefill rate are fitted apart."""
    t = TtftEstimate(halflife_s=10.0)
    _fed(t, 30, base=80.0, per_token=0.125)
    base, prefill, _, error = t.params(t.at, Typical())
    assert base == pytest.approx(80.0, abs=0.5) and prefill == pytest.approx(0.125, rel=0.01)
    assert error < 1.0  # consistent samples: a narrow margin


def test_ttft_clips_a_lone_spike_but_follows_a_lasting_rise() -> None:
    t = TtftEstimate(halflife_s=10.0)
    now = _fed(t, 30, base=80.0, per_token=0.125)
    t.add(60_000.0, now + 1.0, prompt=100)  # one pathological request: clipped to the bound
    assert t.base is not None and t.base < 80.0 + CLIP_SCALES * 1.0 + CLIP_FLOOR_MS
    t2 = TtftEstimate(halflife_s=10.0)
    now = _fed(t2, 30, base=80.0, per_token=0.125)
    _fed(t2, 60, base=2000.0, per_token=0.125, start=now + 1.0)  # the backend really got slow
    assert t2.base == pytest.approx(2000.0, rel=0.05)


def test_ttft_relaxes_toward_the_prior_while_no_samples_arrive() -> None:
    t = TtftEstimate(halflife_s=10.0)
    assert t.current(0.0, prior=80.0) == 80.0  # never measured: the model's typical TTFT
    t.add(880.0, 0.0)
    assert t.current(0.0, prior=80.0) == pytest.approx(880.0)
    assert t.current(60.0, prior=80.0) == pytest.approx(480.0)  # one idle half-life (6 x 10 s)
    assert t.current(600.0, prior=80.0) == pytest.approx(80.0, abs=1.0)  # measured slow once, retried
    _fed(t, 30, base=80.0, per_token=0.1, start=1000.0)
    narrow = t.params(t.at, Typical())[3]
    wide = t.params(t.at + 600.0, Typical())[3]
    assert narrow < 1.0 and wide > 0.9 * UNMEASURED_ERROR_MS  # unsure again after a long silence


def test_the_wait_per_queued_request_is_learned_from_queued_samples() -> None:
    t = TtftEstimate(halflife_s=10.0)
    now = _fed(t, 30, base=80.0, per_token=0.1)
    assert t.params(now, Typical())[2] == pytest.approx(max(80.0, QUEUE_STEP_MS))  # unmeasured: one TTFT
    for i in range(20):
        q = 1 + i % 4
        t.add(80.0 + 100 * 0.1 + q * 40.0, now + 1 + i, prompt=100, queued=q)
    base, _, wait, _ = t.params(t.at, Typical())
    assert wait == pytest.approx(40.0, rel=0.01) and base == pytest.approx(80.0, abs=0.5)


def test_fleet_ttft_uses_the_backend_rtt_and_the_injected_clock() -> None:
    cfg = parse_config(world({"us-east-1": ['{ kind = "http", url = "http://127.0.0.1:9/v1" }']}))
    fleet = build_fleet(cfg)
    clock = Clock(0.0)
    fleet.clock = clock
    dep = fleet.deployments[("grok-4", "us-east-1")]
    backend = dep.backends[0]
    backend.rtt = Ewma(30.0)
    backend.rtt.add(40.0, 0.0)
    fleet.record_ttft(dep, 140.0, backend)
    clock.t = 0.0  # no idle time: the base is exactly the sample
    assert fleet.snapshot_for("grok-4").deployment("grok-4", "us-east-1").ttft_ms == pytest.approx(100.0)  # type: ignore[union-attr]
    assert fleet.snapshot_for("grok-4").deployment("grok-4", "us-east-1").backends[0].rtt_ms == 40.0  # type: ignore[union-attr]


def test_fleet_snapshot_follows_every_sample_though_it_keeps_the_typical_numbers() -> None:
    """The model's typical numbers are kept between snapshots (time does not move them): a sample in one
    region still reaches a region without samples of its own in the next snapshot, as if built anew."""
    http = '{ kind = "http", url = "http://127.0.0.1:9/v1" }'
    fleet = build_fleet(parse_config(world({"us-east-1": [http], "us-west-2": [http]})))
    clock = Clock(0.0)
    fleet.clock = clock
    east, west = fleet.deployments[("grok-4", "us-east-1")], fleet.deployments[("grok-4", "us-west-2")]
    fleet.record_ttft(east, 100.0)
    assert fleet.snapshot_for("grok-4").deployment("grok-4", "us-west-2").ttft_ms == 100.0  # type: ignore[union-attr]
    clock.t = 5.0
    fleet.record_ttft(east, 300.0)  # the median of one fit moves, so does the unmeasured region's
    snap = fleet.snapshot_for("grok-4")
    assert snap.deployment("grok-4", "us-west-2").ttft_ms == pytest.approx(east.ttft.base)  # type: ignore[union-attr]
    assert east.ttft.base is not None and east.ttft.base > 100.0
    east.ttft.base = 50.0  # even a fit set by hand is seen
    assert fleet.snapshot_for("grok-4").deployment("grok-4", "us-west-2").ttft_ms == 50.0  # type: ignore[union-attr]
    assert west.ttft.base is None


# --- the queue estimate -------------------------------------------------------------------------------
REGIONS = {
    "near": Region("near", Location(39.04, -77.49), "us"),
    "far": Region("far", Location(45.84, -119.70), "us"),
}


def _snapshot(near: DeploymentState, far: DeploymentState) -> WorldSnapshot:
    return WorldSnapshot.build(REGIONS, {("m", "near"): near, ("m", "far"): far}, Location(39.04, -77.49))


def _dep(region: str, **kw: object) -> DeploymentState:
    return DeploymentState("m", region, 8, backends=(BackendState(f"{region}/b"),), **kw)  # type: ignore[arg-type]


def test_queue_estimate_ranks_a_deep_queue_lower_before_it_is_full() -> None:
    req = RouteRequest("m", GLOBAL, None, ALL_ACCESS)
    calm = decide(_snapshot(_dep("near", ttft_ms=80.0), _dep("far", ttft_ms=80.0)), req)
    assert isinstance(calm, Plan) and calm.candidates[0].region == "near"
    deep = _dep("near", ttft_ms=80.0, queue_depth=2, wait_ms_per_queued=80.0)
    queued = decide(_snapshot(deep, _dep("far", ttft_ms=80.0)), req)
    assert isinstance(queued, Plan)
    assert [c.region for c in queued.candidates] == ["far", "near"]  # both kept: near has room
    near = queued.candidates[1]
    assert near.free == 8 and near.estimate.queue_ms == pytest.approx(2 * 80.0)
    assert near.estimate.base_ms == 80.0 and near.estimate.total_ms == pytest.approx(
        near.estimate.network_ms + 240.0
    )


def test_backend_reported_capacity_binds_below_the_configured_limit() -> None:
    req = RouteRequest("m", GLOBAL, None, ALL_ACCESS)
    plan = decide(_snapshot(_dep("near", reported_free=0, queue_depth=3), _dep("far")), req, explain=True)
    assert isinstance(plan, Plan) and [c.region for c in plan.candidates] == ["far"]
    dropped = next(c for c in plan.considered if c.region == "near")
    assert dropped.verdict == "dropped" and dropped.free == 0
    assert dropped.reason == "full (its backends report no free capacity; 0/8 in use here)"
    rows = json.loads(explain_header(plan))
    assert rows == explain_rows(plan)
    near = next(r for r in rows if r["region"] == "near")
    assert near["free"] == 0 and near["rtt_source"] == "gateway-distance" and near["verdict"] == "dropped"


# --- reading load from the backends --------------------------------------------------------------------
VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 6.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.4
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 9.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 9.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.2
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 1234.0
"""

SGLANG = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="Qwen/Qwen2.5-7B-Instruct",tp_rank="0",pp_rank="0",dp_rank="0"} 10.0
sglang:num_running_reqs{model_name="Qwen/Qwen2.5-7B-Instruct",tp_rank="0",pp_rank="0",dp_rank="1"} 6.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="Qwen/Qwen2.5-7B-Instruct",tp_rank="0",pp_rank="0",dp_rank="0"} 7.0
sglang:num_queue_reqs{model_name="Qwen/Qwen2.5-7B-Instruct",tp_rank="0",pp_rank="0",dp_rank="1"} 0.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="Qwen/Qwen2.5-7B-Instruct",tp_rank="0",pp_rank="0",dp_rank="0"} 0.98
sglang:token_usage{model_name="Qwen/Qwen2.5-7B-Instruct",tp_rank="0",pp_rank="0",dp_rank="1"} 0.31
# HELP sglang:gen_throughput The generation throughput (token/s).
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{model_name="Qwen/Qwen2.5-7B-Instruct",tp_rank="0",pp_rank="0",dp_rank="0"} 412.5
"""


def test_parse_vllm_adds_engines_and_takes_the_fullest_cache() -> None:
    load = parse_load(VLLM, "meta-llama/Llama-3.1-8B-Instruct")
    assert load == Load(running=12.0, waiting=4.0, occupancy=0.5)
    assert load.free == 24 - 12 - 4  # 12 running fill half the cache: 24 fit at this mix
    assert parse_load(VLLM, "another-model") == load  # no series for it: the server's whole load


def test_parse_sglang_queue_metrics() -> None:
    load = parse_load(SGLANG, "Qwen/Qwen2.5-7B-Instruct")
    assert load == Load(running=16.0, waiting=7.0, occupancy=0.98)
    assert load.free == 0  # 16 / 0.98 -> 16 fit, all running, 7 waiting


def test_parse_picks_the_model_by_label_and_reads_the_simulated_engine() -> None:
    text = (
        'vllm:num_requests_running{model_name="a"} 1\nvllm:num_requests_waiting{model_name="a"} 0\n'
        'vllm:num_requests_running{model_name="b"} 4\nvllm:num_requests_waiting{model_name="b"} 9\n'
    )
    assert parse_load(text, "a") == Load(1.0, 0.0, None)
    assert parse_load(text, "b") == Load(4.0, 9.0, None)
    engine = SimulatedEngine("e", "us-east-1", slots=4)
    engine.running, engine.waiting = 2, 0
    load = parse_load(engine.metrics_text("grok-4"), "grok-4")
    assert load == Load(2.0, 0.0, 0.5) and load.free == 2  # slots - running
    engine.running, engine.waiting = 4, 3
    assert parse_load(engine.metrics_text("grok-4"), "grok-4").free == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<html><body>Not Found</body></html>",
        "regiongate_requests_total 5\n",  # metrics, but not an inference engine's
        'vllm:num_requests_running{model_name="x" 3\n',  # malformed
    ],
)
def test_parse_without_engine_gauges_is_no_reading(text: str) -> None:
    assert parse_load(text, "x") is None


def test_free_is_unknown_when_the_backend_cannot_tell() -> None:
    assert Load(0.0, 0.0, 0.0).free is None  # idle: nothing to extrapolate from
    assert Load(3.0, 2.0, None).free is None  # no cache gauge
    assert Load(1.0, 0.0, 0.3333).free == 2  # a rounded gauge still gives 3 that fit


def test_combine_per_deployment() -> None:
    assert combine([]) == combine([None]) == combine([None, None])
    assert combine([None]).reported_free is None and combine([None]).queue_depth == 0
    two = combine([Load(4.0, 3.0, 0.5), Load(2.0, 0.0, 0.25)])
    assert (two.queue_depth, two.reported_free) == (2, 1 + 6)  # ceil(3 / 2) waiting per backend
    partial = combine([Load(4.0, 3.0, 0.5), None])  # one healthy backend did not report
    assert partial.queue_depth == 3 and partial.reported_free is None


def test_default_metrics_url() -> None:
    assert default_metrics_url("http://10.0.0.5:8000/v1") == "http://10.0.0.5:8000/metrics"
    assert default_metrics_url("https://gpu.example.net/openai/v1") == "https://gpu.example.net/metrics"


async def test_scraper_reads_in_process_engines_and_forgets_stale_readings() -> None:
    cfg = parse_config(world({"us-east-1": ['{ kind = "simulated", slots = 2 }']}, limit=8))
    fleet = build_fleet(cfg)
    clock = Clock()
    fleet.clock = clock
    scraper = LoadScraper(lambda: fleet, lambda: cfg, clock)
    dep = fleet.deployments[("grok-4", "us-east-1")]
    engine = dep.backends[0].upstream
    assert isinstance(engine, SimulatedEngine)
    engine.running, engine.waiting = 2, 5
    await scraper.round()
    assert (dep.queue_depth, dep.reported_free) == (5, 0)
    state = fleet.snapshot_for("grok-4").deployment("grok-4", "us-east-1")
    assert state is not None and state.free == 0 and state.queue_depth == 5  # limit 8, nothing in use
    clock.t += cfg.load.stale_after_s + 1  # no fresh reading since: it counts as none
    scraper.apply(fleet, clock.t)
    assert (dep.queue_depth, dep.reported_free) == (0, None)
    await scraper.aclose()
    await fleet.aclose()


# --- X-Forwarded-For ----------------------------------------------------------------------------
TRUSTED = TrustedProxies(["127.0.0.0/8", "10.0.0.0/8", "::1/128"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("198.51.100.1", ["203.0.113.7"], "198.51.100.1"),  # untrusted peer: its header is ignored
        ("127.0.0.1", [], "127.0.0.1"),  # trusted, nothing forwarded
        ("127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["203.0.113.7, 10.1.2.3"], "203.0.113.7"),  # skip trusted hops from the right
        ("127.0.0.1", ["1.1.1.1, 203.0.113.7, 10.1.2.3"], "203.0.113.7"),  # never the forged leftmost
        ("127.0.0.1", ["1.1.1.1", "203.0.113.7"], "203.0.113.7"),  # several headers: in order
        ("127.0.0.1", ["10.9.9.9, 10.1.2.3"], "10.9.9.9"),  # all trusted: the leftmost
        ("127.0.0.1", ["203.0.113.7:5123"], "203.0.113.7"),  # with a port
        ("127.0.0.1", ["[2001:db8::7]:443"], "2001:db8::7"),
        ("::1", ["2001:db8::7"], "2001:db8::7"),
        ("127.0.0.1", ["unknown"], None),  # malformed: no guessing
        ("127.0.0.1", ["203.0.113.7, garbage"], None),
        (None, ["203.0.113.7"], None),  # no peer (a unix socket)
    ],
)
def test_forwarded_for_trust_walk(peer: str | None, forwarded: list[str], client: str | None) -> None:
    assert client_address(peer, forwarded, TRUSTED) == client


def test_geoip_reader_locates_and_caches(tmp_path: Path) -> None:
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    w.insert_network(IPSet(["203.0.113.0/24"]), {"location": {"latitude": 35.68, "longitude": 139.69}})
    w.insert_network(IPSet(["198.51.100.0/24"]), {"country": {"iso_code": "ZZ"}})  # no coordinates
    w.to_db_file(str(tmp_path / "t.mmdb"))
    geo = GeoIP(str(tmp_path / "t.mmdb"))
    assert geo.locate("203.0.113.7") == Location(35.68, 139.69)
    assert geo.locate("198.51.100.1") is None
    assert geo.locate("192.0.2.1") is None
    assert geo.locate("not-an-ip") is None
    geo.close()


async def test_scraper_fetches_prometheus_text_and_leaves_other_urls_alone() -> None:
    hits: dict[str, int] = {"/metrics": 0, "/missing": 0}

    async def metrics(request: web.Request) -> web.Response:
        hits[request.path] += 1
        if request.path == "/missing":
            return web.Response(status=404, text="not found")
        return web.Response(text=VLLM, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/missing", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    cfg = parse_config(world({"us-east-1": ['{ kind = "simulated" }']}))
    clock = Clock()
    scraper = LoadScraper(lambda: build_fleet(cfg), lambda: cfg, clock)
    try:
        assert await scraper._fetch(f"http://127.0.0.1:{port}/metrics") == VLLM
        for _ in range(3):  # 404: tried once, then left alone
            assert await scraper._fetch(f"http://127.0.0.1:{port}/missing") is None
        assert hits["/missing"] == 1
        clock.t += MISSING_RETRY_S + 1
        assert await scraper._fetch(f"http://127.0.0.1:{port}/missing") is None
        assert hits["/missing"] == 2
        assert await scraper._fetch("http://127.0.0.1:9/metrics") is None  # refused: no reading
    finally:
        await scraper.aclose()
        await runner.cleanup()
