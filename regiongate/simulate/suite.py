"""``regiongate simulate --suite``: every scenario shipped in the package, every policy, one table each,
and the check of the gateway's target against them.

The target, per scenario: the gateway's p50, p95 and p99 TTFT are no worse than any baseline's (within
``TOLERANCE``: percentiles come from a log histogram with 1% bins) at no more rejections
(within ``REJECT_SLACK`` of the requests), it beats nearest-spill where that one's p95 is more than
``TOLERANCE`` above the oracle's (regions differ in load or speed), its p95 is within ``ORACLE_SLACK`` of
the oracle's, and it makes no residency violation. ``oracle`` is the bound, not a baseline, and the
``gateway-*`` variants are the gateway without one of its parts: none is a baseline to beat.

"At no more rejections": percentiles over served requests reward refusing. nearest-only serves every
request it accepts in its nearest region and refuses the ones that would have had to travel, so its
served p50 is below what any policy serving them can reach (the oracle's included). Against a baseline
that refuses more than the gateway, latency is therefore compared over *all* requests, a refused or lost
one counting as slower than any served (``Row.all_requests``): refusing cannot buy a better number.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from regiongate.config import Config
from regiongate.simulate.report import QUANTILES, _quantiles, _table
from regiongate.simulate.runner import SimResult, simulate
from regiongate.simulate.scenario import load_shipped, shipped_scenarios
from regiongate.simulate.stats import percentile

TOLERANCE = 0.01
REJECT_SLACK = 0.0005  # 0.05% of the requests: the noise between two runs of a seed
ORACLE_SLACK = 0.10
NOT_BASELINES = ("gateway", "oracle", "gateway-greedy", "gateway-unreserved")
QS = ("p50", "p95", "p99")


@dataclass
class Row:
    policy: str
    p50: float
    p95: float
    p99: float
    rejected: float  # share of requests
    remote: float
    violations: int
    # The same quantiles over every request, a refused or lost one slower than any served (inf when
    # more than 1 - q of them got no first token).
    all_requests: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def quantile(self, q: str, everyone: bool = False) -> float:
        return self.all_requests[QS.index(q)] if everyone else float(getattr(self, q))


@dataclass
class ScenarioResult:
    name: str
    rows: list[Row]
    requests: int
    cpu_s: float
    failures: list[str] = field(default_factory=list)
    # The target's parts that the oracle, put in the gateway's place, misses too: what no policy that
    # sees only the present can reach (e.g. a baseline's rejections bought with latency).
    oracle_misses: list[str] = field(default_factory=list)

    def row(self, policy: str) -> Row | None:
        return next((r for r in self.rows if r.policy == policy), None)


def _rows(result: SimResult) -> list[Row]:
    rows = []
    for name, st in result.stats.items():
        n = sum(st.requests) or 1
        p50, p95, p99 = (q or 0.0 for q in _quantiles(st))
        h = st.histogram()
        served = sum(h)
        every = tuple(
            (percentile(h, q * n / served) or 0.0) if served and q * n <= served else math.inf
            for q in QUANTILES
        )
        row = Row(name, p50, p95, p99, sum(st.rejected) / n, sum(st.remote) / n, st.violations, every)  # type: ignore[arg-type]
        rows.append(row)
    return rows


def check(res: ScenarioResult, who: str = "gateway") -> list[str]:
    """The ways the gateway (or ``who``) misses its target in this scenario (empty: it meets it)."""
    gw, oracle = res.row(who), res.row("oracle")
    if gw is None:
        return []
    out = []
    if gw.violations:
        out.append(f"{gw.violations} residency violations")
    for b in res.rows:
        if b.policy in NOT_BASELINES:
            continue
        everyone = b.rejected > gw.rejected + REJECT_SLACK  # it refuses more: compare over all requests
        for q in QS:
            mine, theirs = gw.quantile(q, everyone), b.quantile(q, everyone)
            if mine > theirs * (1 + TOLERANCE):
                over = " over all requests" if everyone else ""
                out.append(f"{q}{over} {_ms(mine)} ms > {b.policy}'s {_ms(theirs)} ms")
        if gw.rejected > b.rejected + REJECT_SLACK:
            out.append(f"rejects {100 * gw.rejected:.2f}% > {b.policy}'s {100 * b.rejected:.2f}%")
    spill = res.row("nearest-spill")
    differ = spill is not None and oracle is not None and spill.p95 > oracle.p95 * (1 + TOLERANCE)
    if spill is not None and differ and not gw.p95 < spill.p95:
        out.append(f"p95 {gw.p95:,.0f} ms not better than nearest-spill's {spill.p95:,.0f} ms")
    if oracle is not None and who != "oracle" and gw.p95 > oracle.p95 * (1 + ORACLE_SLACK):
        out.append(f"p95 {gw.p95:,.0f} ms more than 10% above the oracle's {oracle.p95:,.0f} ms")
    return out


def _ms(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:,.0f}"


def run_suite(
    cfg: Config,
    requests: int,
    seed: int | None = None,
    jobs: int = 1,
    on_scenario: Callable[[str], None] | None = None,
) -> list[ScenarioResult]:
    out = []
    for name in shipped_scenarios():
        if on_scenario is not None:
            on_scenario(name)
        result = simulate(cfg, load_shipped(name), requests=requests, seed=seed, jobs=jobs)
        res = ScenarioResult(name, _rows(result), result.requests, result.cpu_s)
        res.failures = check(res)
        res.oracle_misses = [miss_kind(m) for m in check(res, "oracle")]
        out.append(res)
    return out


HEAD = (
    "policy",
    "p50 TTFT ms",
    "p95",
    "p99",
    "rejected",
    "remote",
    "residency violations",
    "p95 vs oracle",
    "all requests p50 / p95 / p99",
)


def scenario_table(res: ScenarioResult) -> list[str]:
    oracle = res.row("oracle")
    rows = []
    for r in res.rows:
        vs = f"{100 * (r.p95 / oracle.p95 - 1):+.1f}%" if oracle is not None and oracle.p95 else "-"
        name = f"**{r.policy}**" if r.policy == "gateway" else r.policy
        rows.append(
            [
                name,
                f"{r.p50:,.0f}",
                f"{r.p95:,.0f}",
                f"{r.p99:,.0f}",
                f"{100 * r.rejected:.2f}%",
                f"{100 * r.remote:.2f}%",
                str(r.violations),
                vs,
                " / ".join(_ms(v) for v in r.all_requests),
            ]
        )
    return _table(HEAD, rows)


def miss_kind(miss: str) -> str:
    """A miss without its numbers: the same comparison for two policies reads the same."""
    return (
        miss.split(" ", 1)[0] + " " + miss.rsplit(">", 1)[-1].split("'")[0].strip() if ">" in miss else miss
    )


def verdict(res: ScenarioResult) -> str:
    if not res.failures:
        return "meets the target"
    notes = [
        m + (" (the oracle misses this too)" if miss_kind(m) in res.oracle_misses else "")
        for m in res.failures
    ]
    return "misses the target: " + "; ".join(notes)


def short_table(results: list[ScenarioResult]) -> list[str]:
    """One row per scenario: the gateway against the best baseline and the oracle (for the README)."""
    rows = []
    for res in results:
        gw, oracle, spill = res.row("gateway"), res.row("oracle"), res.row("nearest-spill")
        if gw is None:
            continue
        rows.append(
            [
                res.name,
                f"{gw.p50:,.0f} / {gw.p95:,.0f} / {gw.p99:,.0f}",
                f"{spill.p50:,.0f} / {spill.p95:,.0f} / {spill.p99:,.0f}" if spill else "-",
                f"{oracle.p95:,.0f}" if oracle else "-",
                f"{100 * gw.rejected:.2f}%",
                "yes" if not res.failures else "no",
            ]
        )
    head = ("scenario", "gateway p50 / p95 / p99 ms", "nearest-spill", "oracle p95", "rejected", "target")
    return _table(head, rows)


def _plain(r: Row) -> dict[str, Any]:
    d = dict(r.__dict__)
    d["all_requests"] = [None if math.isinf(v) else v for v in r.all_requests]  # JSON has no infinity
    return d


def write_suite(results: list[ScenarioResult], out_dir: str, requests: int) -> str:
    os.makedirs(out_dir, exist_ok=True)
    lines = [
        "# regiongate simulate --suite",
        "",
        f"Every scenario shipped in `regiongate/simulate/data/`, {requests:,} requests each (the day's clock "
        "compressed, its load kept), every policy on the same trace. Made by "
        f"`regiongate simulate --suite --requests {requests} --out {out_dir}`.",
        "",
        "Target per scenario: the gateway's p50/p95/p99 no worse than every baseline's (1% tolerance: the "
        "histogram's bin) at no more rejections, better than nearest-spill where load or speed differ, p95 "
        "within 10% of the oracle's, no residency violation. Against a baseline that refuses more, latency "
        "is compared over all requests (the last column: a refused or lost request counts as slower than any "
        "served, `inf` when more than 1 - q of them got no first token), since served-only percentiles "
        "reward refusing the requests that would have had to travel. A miss marked *the oracle misses this "
        "too* is one that the oracle, put in the gateway's place, also has: not reachable by a policy that "
        "minimises each request's TTFT on the present state.",
        "",
    ]
    for res in results:
        lines += [f"## {res.name}", "", *scenario_table(res), "", f"Gateway: {verdict(res)}.", ""]
    lines += ["## All scenarios", "", *short_table(results), ""]
    path = os.path.join(out_dir, "suite.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    data: dict[str, Any] = {
        res.name: {
            "requests": res.requests,
            "cpu_s": round(res.cpu_s, 2),
            "failures": res.failures,
            "oracle_misses": res.oracle_misses,
            "policies": {r.policy: _plain(r) for r in res.rows},
        }
        for res in results
    }
    with open(os.path.join(out_dir, "suite.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    return path
