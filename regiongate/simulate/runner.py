"""Run a scenario: one trace of arrivals, fed in lockstep to one engine per policy."""

from __future__ import annotations

import gc
import random
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from regiongate.config import Config
from regiongate.core.request import new_route_request
from regiongate.simulate.engine import Engine
from regiongate.simulate.fleet import World, build_world
from regiongate.simulate.policies import make_policy
from regiongate.simulate.scenario import Scenario
from regiongate.simulate.stats import PolicyStats
from regiongate.simulate.traffic import TrafficModel, arrivals, token_sampler

ProgressFn = Callable[[int, int, float, float], None]  # done, total, simulated time, wall seconds


@dataclass
class SimResult:
    world: World
    scenario: Scenario
    stats: dict[str, PolicyStats]
    requests: int
    wall_s: float
    cpu_s: float
    seed: int
    peak_rss_mb: float
    traffic: TrafficModel
    jobs: int = 1  # processes that ran the policies (1: all in lockstep in this one)

    @property
    def rate(self) -> float:
        """Trace requests simulated per wall-clock second (each one routed once per policy)."""
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def simulate(
    cfg: Config,
    scenario: Scenario,
    *,
    requests: int | None = None,
    seed: int | None = None,
    policies: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
    progress_every_s: float = 2.0,
    jobs: int = 1,
) -> SimResult:
    """Run ``policies`` on one trace. With ``jobs`` > 1 each policy runs in its own process; the trace is
    a function of the seed alone (policies draw no random numbers: each request carries its salt), so every process sees the same one."""
    names = list(policies or scenario.run.policies)
    seed = scenario.run.seed if seed is None else seed
    if jobs > 1 and len(names) > 1:
        return _simulate_parallel(cfg, scenario, requests, seed, names, jobs, progress, progress_every_s)
    world = build_world(cfg, scenario, requests)
    n_buckets = scenario.run.samples
    traffic = TrafficModel(world.metros, scenario.traffic, world.duration_s, bins=max(n_buckets, 24))
    engines = [Engine(world, name, make_policy(name)) for name in names]
    for e in engines:
        e.start(n_buckets)
    rng = random.Random(seed)
    # The loop allocates many short-lived acyclic objects that reference counting frees; the cyclic
    # collector scanning them every 700 allocations costs ~5% for nothing. Restored afterwards.
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        return _run(world, scenario, engines, traffic, rng, seed, progress, progress_every_s)
    finally:
        gc.set_threshold(*thresholds)


def _one_policy(
    cfg: Config, scenario: Scenario, requests: int | None, seed: int, name: str, every_s: float, show: bool
) -> SimResult:
    def line(done: int, total: int, sim_t: float, wall_s: float) -> None:
        rate = done / wall_s if wall_s > 0 else 0.0
        print(
            f"simulate [{name}]: {done:,}/{total:,} requests, {rate:,.0f} req/s", file=sys.stderr, flush=True
        )

    return simulate(
        cfg,
        scenario,
        requests=requests,
        seed=seed,
        policies=[name],
        progress=line if show else None,
        progress_every_s=every_s,
    )


def _simulate_parallel(
    cfg: Config,
    scenario: Scenario,
    requests: int | None,
    seed: int,
    names: list[str],
    jobs: int,
    progress: ProgressFn | None,
    every_s: float,
) -> SimResult:
    from concurrent.futures import ProcessPoolExecutor

    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=min(jobs, len(names))) as pool:
        futures = [
            pool.submit(
                _one_policy, cfg, scenario, requests, seed, n, max(every_s, 15.0), progress is not None
            )
            for n in names
        ]
        parts = [f.result() for f in futures]
    wall = time.monotonic() - started
    first = parts[0]
    if progress is not None:
        progress(first.requests, first.requests, first.world.duration_s, wall)
    return SimResult(
        world=first.world,
        scenario=scenario,
        stats={n: p.stats[n] for n, p in zip(names, parts, strict=False)},
        requests=first.requests,
        wall_s=wall,
        cpu_s=sum(p.cpu_s for p in parts),
        seed=seed,
        peak_rss_mb=max(peak_rss_mb(), *(p.peak_rss_mb for p in parts)),
        traffic=first.traffic,
        jobs=min(jobs, len(names)),
    )


def _run(
    world: World,
    scenario: Scenario,
    engines: list[Engine],
    traffic: TrafficModel,
    rng: random.Random,
    seed: int,
    progress: ProgressFn | None,
    progress_every_s: float,
) -> SimResult:
    prompt = token_sampler(scenario.traffic.prompt_tokens, rng)
    completion = token_sampler(scenario.traffic.completion_tokens, rng)
    contexts = world.contexts
    n_models, n_kinds = len(world.models), len(world.endpoint_kinds)
    n = world.requests
    started = time.monotonic()
    cpu_started = time.process_time()
    next_report = started + progress_every_s
    done = 0
    stream = arrivals(traffic, n, world.model_shares, world.endpoint_shares, rng)
    replicas = world.replicas
    arrives = [e.arrive for e in engines]
    for t, metro, mi, ei in stream:
        ctx = contexts[(metro * n_models + mi) * n_kinds + ei]
        p, c = prompt(), completion()
        r = ctx.request
        # The salt is the request's own random number (the policy draws none), a function of its index
        # so every policy and every rerun sees the same one; the replica that decides takes turns.
        salt = (done * 0x9E3779B1) & 0xFFFFFFFF
        req = new_route_request(r.model, r.endpoint, r.client_location, r.access, p, salt)
        replica = done % replicas
        for arrive in arrives:
            arrive(t, ctx, req, p, c, replica)
        done += 1
        if progress is not None and not done & 0x3FFF and time.monotonic() >= next_report:
            progress(done, n, t, time.monotonic() - started)
            next_report = time.monotonic() + progress_every_s
    for e in engines:
        e.finish()
    wall = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    for e in engines:
        e.stats.cpu_s = cpu if len(engines) == 1 else None
    if progress is not None:
        progress(done, n, world.duration_s, wall)
    return SimResult(
        world=world,
        scenario=scenario,
        stats={e.name: e.stats for e in engines},
        requests=done,
        wall_s=wall,
        cpu_s=cpu,
        seed=seed,
        peak_rss_mb=peak_rss_mb(),
        traffic=traffic,
    )
