"""``regiongate simulate``: the command line. Imports of the simulator happen when the command runs, so
building the ``regiongate`` parser stays cheap."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from regiongate.simulate.scenario import ALL_POLICY_NAMES

SUITE_REQUESTS = 200_000
TIERS_REQUESTS = 100_000


def register(subparsers: Any) -> None:
    """Add the ``simulate`` subcommand to the ``regiongate`` parser."""
    s = subparsers.add_parser(
        "simulate",
        help="simulate a day of global traffic through the routing policy and compare policies",
        description="Feed a day of synthetic global traffic through the gateway's routing policy and "
        "baselines (nearest-only, nearest-spill, least-loaded, power-of-two) and an oracle bound; write a "
        "markdown report and PNG charts.",
    )
    s.add_argument("--scenario", help="scenario TOML (default: the one shipped in the package)")
    s.add_argument(
        "--config", help="regiongate config for the fleet (default: the scenario's, else the demo world)"
    )
    s.add_argument("--requests", type=int, help="requests in the day (fewer: same shape, clock compressed)")
    s.add_argument("--out", default="simulate-report", help="directory for report.md, summary.json, charts")
    s.add_argument("--seed", type=int, help="random seed (default: the scenario's)")
    s.add_argument(
        "--policy",
        action="append",
        choices=list(ALL_POLICY_NAMES),
        help="policies to run (repeatable; default: the scenario's list)",
    )
    s.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run each policy in its own process, up to N at once (same trace; default 1: one core)",
    )
    s.add_argument(
        "--suite",
        action="store_true",
        help="run every scenario shipped in the package through every policy (--requests each, default "
        f"{SUITE_REQUESTS:,}) and write suite.md: one table per scenario and the gateway's target checked",
    )
    s.add_argument(
        "--tiers",
        action="store_true",
        help="service tiers (20%% priority, 30%% flex) and prompt-cache affinity on one trace with multi-turn "
        f"conversations (--requests, default {TIERS_REQUESTS:,}); writes tiers.md (docs/tiers.md)",
    )
    s.add_argument("--quiet", action="store_true", help="no progress on stderr")
    s.set_defaults(func=cmd_simulate)


class Progress:
    """One line on stderr, rewritten in place on a terminal, every couple of seconds otherwise."""

    def __init__(self, stream: Any, policies: int, time_scale: float) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.policies = policies
        self.time_scale = time_scale

    def __call__(self, done: int, total: int, sim_t: float, wall_s: float) -> None:
        from regiongate.simulate.runner import peak_rss_mb

        rate = done / wall_s if wall_s > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        day = sim_t / self.time_scale
        line = (
            f"simulate: {done:,}/{total:,} requests ({100.0 * done / total:.1f}%)  "
            f"day {int(day // 3600):02d}:{int(day % 3600 // 60):02d} UTC  "
            f"{rate:,.0f} req/s x {self.policies} policies  eta {int(eta // 60)}m{int(eta % 60):02d}s  "
            f"peak RSS {peak_rss_mb():.0f} MB"
        )
        if self.tty:
            end = "\n" if done >= total else ""
            self.stream.write("\r" + line.ljust(100) + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def cmd_simulate(args: argparse.Namespace) -> int:
    from regiongate.config import ConfigError, load_config
    from regiongate.simulate.fleet import build_world
    from regiongate.simulate.report import summary_table, write_report
    from regiongate.simulate.runner import simulate
    from regiongate.simulate.scenario import ScenarioError, load_scenario

    if args.requests is not None and args.requests < 1:
        print("regiongate: --requests must be at least 1", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print("regiongate: --jobs must be at least 1", file=sys.stderr)
        return 2
    if args.suite:
        return _suite(args)
    if args.tiers:
        return _tiers(args)
    try:
        scenario = load_scenario(args.scenario)
        config_path = args.config or (
            scenario.resolve(scenario.fleet.config) if scenario.fleet.config else None
        )
        cfg = load_config(config_path)
        world = build_world(cfg, scenario, args.requests)  # validates names before the long part
    except (ScenarioError, ConfigError) as e:
        print(str(e), file=sys.stderr)
        return 2
    policies = args.policy or list(scenario.run.policies)
    progress = None if args.quiet else Progress(sys.stderr, len(policies), world.time_scale)
    result = simulate(
        cfg,
        scenario,
        requests=args.requests,
        seed=args.seed,
        policies=policies,
        progress=progress,
        progress_every_s=2.0 if sys.stderr.isatty() else 15.0,
        jobs=args.jobs,
    )
    paths = write_report(
        result,
        args.out,
        args.scenario or "default scenario (regiongate/simulate/data/default.toml)",
        config_path or "demo world (regiongate/demo.toml)",
    )
    print("\n".join(summary_table(result)))
    print(
        f"\n{result.requests:,} requests x {len(policies)} policies in {result.wall_s:.1f}s "
        f"({result.rate:,.0f} requests/s simulated, CPU {result.cpu_s:.1f}s, peak RSS {result.peak_rss_mb:.0f} MB)"
    )
    print(f"report: {paths[0]}")
    return 0


def _tiers(args: argparse.Namespace) -> int:
    from pathlib import Path

    from regiongate.config import ConfigError, load_config
    from regiongate.simulate.scenario import ScenarioError, load_scenario
    from regiongate.simulate.sessions import (
        Mix,
        affinity_table,
        affinity_target,
        paired_table,
        run_sessions,
        tier_table,
    )

    try:
        scenario = load_scenario(args.scenario)
        cfg = load_config(
            args.config or (scenario.resolve(scenario.fleet.config) if scenario.fleet.config else None)
        )
    except (ScenarioError, ConfigError) as e:
        print(str(e), file=sys.stderr)
        return 2
    mix = Mix()
    res = run_sessions(cfg, scenario, mix, args.requests or TIERS_REQUESTS, args.seed)
    text = [
        f"# Service tiers and prompt-cache affinity ({res.requests:,} requests, seed {res.seed}, "
        f"{res.wall_s:.0f} s)",
        "",
        f"Mix: {mix.priority:.0%} priority, {mix.flex:.0%} flex; reserve {mix.reserve:.0%}, flex below "
        f"{mix.flex_below:.0%}; {mix.sessions:.0%} of requests are conversation turns (system prompt "
        f"{mix.system_tokens:,} tokens, ~{mix.mean_turns:g} turns), cache TTL {mix.ttl_s:g} s.",
        "",
        *tier_table(res),
        "",
        *affinity_table(res),
        "",
        *paired_table(res),
        "",
        affinity_target(res),
        "",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiers.md").write_text("\n".join(text))
    print("\n".join(text))
    print(f"report: {out / 'tiers.md'}")
    return 0


def _suite(args: argparse.Namespace) -> int:
    from regiongate.config import ConfigError, load_config
    from regiongate.simulate.suite import run_suite, short_table, verdict, write_suite

    if args.scenario or args.policy:
        print("regiongate: --suite runs the shipped scenarios with their own policies", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    requests = args.requests or SUITE_REQUESTS

    def started(name: str) -> None:
        if not args.quiet:
            print(f"simulate --suite: {name} ({requests:,} requests)", file=sys.stderr, flush=True)

    results = run_suite(cfg, requests, seed=args.seed, jobs=args.jobs, on_scenario=started)
    path = write_suite(results, args.out, requests)
    print("\n".join(short_table(results)))
    for res in results:
        print(f"{res.name}: {verdict(res)}")
    print(f"report: {path}")
    return 0 if all(not r.failures for r in results) else 1
