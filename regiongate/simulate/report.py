"""The report of a run: ``report.md``, ``summary.json`` and PNG charts in one directory.

matplotlib is imported here, inside the chart functions, and nowhere else: the gateway never loads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from regiongate.simulate.runner import SimResult
from regiongate.simulate.stats import PolicyStats, cdf_points, percentile

QUANTILES = (0.5, 0.95, 0.99)
CHARTS = ("latency_cdf.png", "utilisation.png", "traffic.png")


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.2f}%" if whole else "-"


def _ms(v: float | None) -> str:
    return f"{v:,.0f}" if v is not None else "-"


def _util(v: float | None) -> str:
    return f"{100.0 * v:.0f}%" if v is not None else "-"


def _clock(seconds_of_day: float) -> str:
    m = round(seconds_of_day / 60.0)
    return f"{m // 60:02d}:{m % 60:02d}"


def _duration(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    align = ["---" if i == 0 else "---:" for i in range(len(head))]
    return [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _quantiles(st: PolicyStats, cells: Sequence[int] | range | None = None) -> list[float | None]:
    h = st.histogram(cells)
    return [percentile(h, q) for q in QUANTILES]


def peak_utilisation(st: PolicyStats, ri: int) -> float | None:
    vals = [u for u in st.utilisation(ri) if u is not None]
    return max(vals) if vals else None


def summary(result: SimResult) -> dict[str, Any]:
    """The numbers of the run as plain data (``summary.json``)."""
    w = result.world
    out: dict[str, Any] = {
        "requests": result.requests,
        "duration_s": w.duration_s,
        "time_scale": w.time_scale,
        "seed": result.seed,
        "wall_s": round(result.wall_s, 3),
        "cpu_s": round(result.cpu_s, 3),
        "requests_per_s": round(result.rate, 1),
        "peak_rss_mb": round(result.peak_rss_mb, 1),
        "jobs": result.jobs,
        "policies": {},
    }
    for name, st in result.stats.items():
        p50, p95, p99 = _quantiles(st)
        out["policies"][name] = {
            "requests": sum(st.requests),
            "served": sum(st.served),
            "rejected": sum(st.rejected),
            "failed": sum(st.failed),
            "interrupted": st.interrupted,
            "spillover": sum(st.spilled),
            "remote": sum(st.remote),
            "residency_violations": st.violations,
            "reject_codes": dict(st.reject_codes),
            "cpu_s": st.cpu_s,
            "ttft_ms": {"p50": p50, "p95": p95, "p99": p99},
            "regions": {
                rid: {
                    "routed": st.routed_region[ri],
                    "inbound": st.inbound_region[ri],
                    "mean_utilisation": st.mean_utilisation(ri),
                    "peak_utilisation": peak_utilisation(st, ri),
                    "mean_queue_wait_s": st.mean_wait_s(ri),
                }
                for ri, rid in enumerate(w.region_ids)
            },
        }
    return out


def _summary_rows(result: SimResult) -> list[list[str]]:
    rows = []
    for name, st in result.stats.items():
        n = sum(st.requests)
        p50, p95, p99 = _quantiles(st)
        busy = sum(sum(b) for b in st.busy_s)
        cap = sum(sum(c) for c in st.cap_s)
        rows.append(
            [
                f"**{name}**",
                f"{n:,}",
                _ms(p50),
                _ms(p95),
                _ms(p99),
                _pct(sum(st.spilled), n),
                _pct(sum(st.remote), n),
                _pct(sum(st.rejected), n),
                _pct(sum(st.failed), n),
                f"{st.violations}",
                _util(busy / cap if cap else None),
            ]
        )
    return rows


SUMMARY_HEAD = (
    "policy",
    "requests",
    "p50 TTFT ms",
    "p95",
    "p99",
    "spillover",
    "remote",
    "rejected",
    "lost to outage",
    "residency violations",
    "mean utilisation",
)


def summary_table(result: SimResult) -> list[str]:
    return _table(SUMMARY_HEAD, _summary_rows(result))


def _continent_rows(result: SimResult, st: PolicyStats) -> list[list[str]]:
    total = sum(st.requests)
    rows = []
    for ci, name in enumerate(result.world.continents):
        cells = st.cells_of_continent(ci)
        n = st.total(st.requests, cells)
        if n == 0:
            continue
        rows.append([name, f"{n:,}", _pct(n, total), *_outcome_cells(st, cells, n)])
    return rows


def _outcome_cells(st: PolicyStats, cells: Sequence[int], n: int) -> list[str]:
    """p50/p95/p99 time to first token and the spillover, remote and rejected shares of ``cells``."""
    p50, p95, p99 = _quantiles(st, cells)
    return [
        _ms(p50),
        _ms(p95),
        _ms(p99),
        _pct(st.total(st.spilled, cells), n),
        _pct(st.total(st.remote, cells), n),
        _pct(st.total(st.rejected, cells), n),
    ]


def _region_rows(result: SimResult, st: PolicyStats) -> list[list[str]]:
    w = result.world
    rows = []
    for ri, rid in enumerate(w.region_ids):
        cells = st.cells_of_home(ri)
        n = st.total(st.requests, cells)
        wait = st.mean_wait_s(ri)
        rows.append(
            [
                f"{rid} ({w.regions[rid].zone})",
                f"{n:,}",
                *_outcome_cells(st, cells, n),
                f"{st.routed_region[ri]:,}",
                _pct(st.inbound_region[ri], st.routed_region[ri]),
                _util(st.mean_utilisation(ri)),
                _util(peak_utilisation(st, ri)),
                f"{wait * 1000:,.1f}" if wait is not None else "-",
            ]
        )
    return rows


def _day_rows(result: SimResult, st: PolicyStats, block_h: int = 3) -> list[list[str]]:
    """Utilisation per region in blocks of ``block_h`` hours: the utilisation chart as a table."""
    n = st.n_buckets
    blocks = 24 // block_h
    rows = []
    for ri, rid in enumerate(result.world.region_ids):
        busy, cap = [0.0] * blocks, [0.0] * blocks
        for b in range(n):
            k = min(int((b + 0.5) * 24.0 / n / block_h), blocks - 1)
            busy[k] += st.busy_s[b][ri]
            cap[k] += st.cap_s[b][ri]
        rows.append([rid, *(_util(busy[k] / cap[k] if cap[k] > 0 else None) for k in range(blocks))])
    return rows


def _run_line(result: SimResult) -> str:
    n_pol = len(result.stats)
    where = "one core" if result.jobs == 1 else f"{result.jobs} processes, one policy each"
    line = (
        f"- run: {_duration(result.wall_s)} wall, {_duration(result.cpu_s)} CPU ({where}): "
        f"{result.rate:,.0f} requests/s simulated through {n_pol} "
        f"{'policy' if n_pol == 1 else 'policies'}; peak RSS {result.peak_rss_mb:.0f} MB"
    )
    alone = [(n, st.cpu_s) for n, st in result.stats.items() if st.cpu_s]
    if alone:
        line += "; per policy on one core: " + ", ".join(
            f"{n} {result.requests / cpu:,.0f} requests/s" for n, cpu in alone if cpu
        )
    return line


def render_markdown(result: SimResult, scenario_name: str, config_name: str, charts: Sequence[str]) -> str:
    w = result.world
    hours = w.duration_s / 3600.0
    lines = [
        "# regiongate simulate: report",
        "",
        f"- scenario: `{scenario_name}`; fleet: `{config_name}` ({len(w.region_ids)} regions, "
        f"{len(w.deployments)} deployments); seed {result.seed}",
        f"- trace: {result.requests:,} requests over one day of traffic"
        + (f" on a clock compressed to {hours:.2f} h (x{w.time_scale:.4g})" if w.time_scale != 1 else "")
        + f", from {len(w.metros)} metro areas; the same trace for every policy",
        _run_line(result),
        "",
        "## Summary",
        "",
        *summary_table(result),
        "",
        "TTFT is time to first token at the client: network round trip + queueing at the backend + the "
        "backend's own time to first token (base + prompt prefill). *Spillover*: not served by the policy's "
        "own first choice (it was full or down). *Remote*: served outside the client's nearest region that "
        "offers the model. *Rejected*: refused by the policy (HTTP 429/503). *Lost to outage*: admitted, "
        "then the region went down before the first token. *Residency violations*: requests served outside "
        "the region or zone their endpoint or key allows, checked per request.",
        "",
    ]
    for c in charts:
        lines += [f"![{c[:-4]}]({c})", ""]
    if w.events:
        lines += ["## Scheduled events", ""]
        rows = [
            [
                e.kind,
                e.region,
                e.model,
                _clock(e.start_s / w.time_scale),
                _clock(e.end_s / w.time_scale),
                f"{e.factor:g}" if e.kind == "capacity" else "-",
            ]
            for e in w.events
        ]
        lines += [*_table(("event", "region", "model", "start UTC", "end UTC", "factor"), rows), ""]
    for name, st in result.stats.items():
        lines += [f"## {name}: per client continent", ""]
        lines += _table(
            ("continent", "requests", "share", "p50 ms", "p95", "p99", "spillover", "remote", "rejected"),
            _continent_rows(result, st),
        )
        lines += ["", f"## {name}: per region", ""]
        lines += [
            "Left: clients whose nearest region (offering their model) is this one. Right: the region's own "
            "load (requests routed to it, the share that came from clients of another home region, slot "
            "utilisation and the mean wait for a backend slot).",
            "",
        ]
        lines += _table(
            (
                "home region",
                "requests",
                "p50 ms",
                "p95",
                "p99",
                "spillover",
                "remote",
                "rejected",
                "routed here",
                "from elsewhere",
                "mean util",
                "peak util",
                "wait ms",
            ),
            _region_rows(result, st),
        )
        lines += ["", f"Slot utilisation of each region through the day (UTC, {name}):", ""]
        lines += _table(("region", *(f"{h:02d}-{h + 3:02d}" for h in range(0, 24, 3))), _day_rows(result, st))
        if st.reject_codes:
            codes = ", ".join(f"{k} {v:,}" for k, v in sorted(st.reject_codes.items()))
            lines += ["", f"Refusals by error code: {codes}."]
        lines.append("")
    return "\n".join(lines)


# --- charts ------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart_latency_cdf(result: SimResult, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, st in result.stats.items():
        xs, ys = cdf_points(st.histogram())
        served = sum(st.served) / max(1, sum(st.requests))  # refused and lost requests never arrive
        ax.plot(xs, [y * served for y in ys], label=f"{name} (served {100 * served:.1f}%)", linewidth=1.6)
    ax.set_xscale("log")
    ax.set_xlabel("time to first token at the client (ms, log scale)")
    ax.set_ylabel("share of all requests")
    ax.set_ylim(0, 1.0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Latency CDF per policy, same trace")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _hours(n: int) -> list[float]:
    return [(b + 0.5) * 24.0 / n for b in range(n)]


def _shade_events(ax: Any, result: SimResult) -> None:
    w = result.world
    for e in w.events:
        a, b = e.start_s / w.time_scale / 3600.0, e.end_s / w.time_scale / 3600.0
        ax.axvspan(a, b, color="red" if e.kind == "outage" else "orange", alpha=0.12, linewidth=0)


def chart_utilisation(result: SimResult, path: str) -> None:
    plt = _pyplot()
    n_pol = len(result.stats)
    fig, axes = plt.subplots(n_pol, 1, figsize=(8, 2.3 * n_pol + 0.6), dpi=80, sharex=True, squeeze=False)
    w = result.world
    for ax, (name, st) in zip(axes[:, 0], result.stats.items(), strict=False):
        xs = _hours(st.n_buckets)
        for ri, rid in enumerate(w.region_ids):
            ys = [float("nan") if u is None else 100.0 * u for u in st.utilisation(ri)]
            ax.plot(xs, ys, label=rid, linewidth=1.0)
        _shade_events(ax, result)
        ax.set_ylim(0, 105)
        ax.set_ylabel("slots busy %")
        ax.set_title(name, fontsize=10, loc="left")
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=3, loc="upper left")
    axes[-1, 0].set_xlabel("hour of the day (UTC); shaded: scheduled outage (red) and capacity cut (orange)")
    axes[-1, 0].set_xlim(0, 24)
    axes[-1, 0].set_xticks(range(0, 25, 3))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def chart_traffic(result: SimResult, path: str) -> None:
    plt = _pyplot()
    st = next(iter(result.stats.values()))
    w = result.world
    xs = _hours(st.n_buckets)
    bucket_s = w.duration_s / st.n_buckets
    series = [[b[ci] / bucket_s for b in st.arrivals_bucket] for ci in range(len(w.continents))]
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    ax.stackplot(xs, series, labels=w.continents, alpha=0.85)
    ax.set_xlim(0, 24)
    ax.set_xticks(range(0, 25, 3))
    ax.set_xlabel("hour of the day (UTC)")
    ax.set_ylabel("requests/s")
    ax.set_title("Offered traffic by client continent", fontsize=10, loc="left")
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(result: SimResult, out_dir: str, scenario_name: str, config_name: str) -> list[str]:
    """Write the report, its charts and ``summary.json`` into ``out_dir``; return the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    charts = [
        ("latency_cdf.png", chart_latency_cdf),
        ("utilisation.png", chart_utilisation),
        ("traffic.png", chart_traffic),
    ]
    written = []
    for name, draw in charts:
        draw(result, os.path.join(out_dir, name))
        written.append(os.path.join(out_dir, name))
    md = os.path.join(out_dir, "report.md")
    with open(md, "w", encoding="utf-8") as f:
        f.write(render_markdown(result, scenario_name, config_name, [c for c, _ in charts]))
    js = os.path.join(out_dir, "summary.json")
    with open(js, "w", encoding="utf-8") as f:
        json.dump(summary(result), f, indent=2)
    return [md, js, *written]
