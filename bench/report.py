"""Turning rounds of samples into the medians, ratios, markdown table, target check and chart of a run."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import Sample, Workload


@dataclass
class Cell:
    """One (workload, target, round) measurement."""

    sample: Sample
    cpu_s: float  # proxy process tree CPU during the measurement
    rss_worker_mb: float  # largest VmHWM of one process of the tree, after the measurement
    rss_total_mb: float
    # (commands, script calls) the target's Redis executed meanwhile, and requests the client left in flight
    redis: tuple[int, int, int] | None = None

    @property
    def cpu_us_per_req(self) -> float | None:
        return self.cpu_s * 1e6 / self.sample.requests if self.sample.requests else None

    @property
    def redis_per_req(self) -> tuple[float, float] | None:
        if self.redis is None or not self.sample.requests:
            return None
        n = self.sample.requests + self.redis[2]
        return self.redis[0] / n, self.redis[1] / n


@dataclass
class Row:
    workload: Workload
    target: str
    rounds: int
    rps: float
    p50_ms: float
    p99_ms: float
    add_p50_ms: float | None
    add_p99_ms: float | None
    ttfb_p50_ms: float | None
    add_ttfb_p50_ms: float | None
    cpu_us: float | None
    rss_mb: float
    errors: int
    unfinished: int
    ratios: dict[str, float] = field(default_factory=dict)  # target -> this rps / that rps
    redis_cmds: float | None = None  # Redis commands per request (those inside Lua scripts included)
    redis_calls: float | None = None  # Redis calls per request (each a round trip the request waited on)


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _paired(cells: list[Cell], base: list[Cell], attr: str) -> float | None:
    """Median over rounds of (this - base) for the same round: pairs cancel drift of the shared machine."""
    diffs = []
    for a, b in zip(cells, base, strict=False):
        x, y = getattr(a.sample, attr), getattr(b.sample, attr)
        if x is not None and y is not None:
            diffs.append((x - y) / 1000.0)
    return _med(diffs) if diffs else None


def summarise(results: dict[Workload, dict[str, list[Cell]]], proxy: set[str]) -> list[Row]:
    rows = []
    for w, by_target in results.items():
        direct = by_target.get("direct", [])
        rps = {t: _med([c.sample.rps for c in cells]) for t, cells in by_target.items()}
        for t, cells in by_target.items():
            cpu = [c.cpu_us_per_req for c in cells if c.cpu_us_per_req is not None]
            ttfb = [c.sample.ttfb_p50_us for c in cells if c.sample.ttfb_p50_us is not None]
            row = Row(
                workload=w,
                target=t,
                rounds=len(cells),
                rps=rps[t],
                p50_ms=_med([c.sample.p50_us for c in cells]) / 1000.0,
                p99_ms=_med([c.sample.p99_us for c in cells]) / 1000.0,
                add_p50_ms=_paired(cells, direct, "p50_us") if t != "direct" else None,
                add_p99_ms=_paired(cells, direct, "p99_us") if t != "direct" else None,
                ttfb_p50_ms=_med(ttfb) / 1000.0 if ttfb else None,
                add_ttfb_p50_ms=_paired(cells, direct, "ttfb_p50_us") if t != "direct" and ttfb else None,
                cpu_us=_med(cpu) if cpu and t in proxy else None,
                rss_mb=max((c.rss_worker_mb for c in cells), default=0.0),
                errors=sum(c.sample.errors for c in cells),
                unfinished=sum(c.sample.unfinished for c in cells),
            )
            per = [c.redis_per_req for c in cells if c.redis_per_req is not None]
            if per:
                row.redis_cmds = _med([p[0] for p in per])
                row.redis_calls = _med([p[1] for p in per])
            for other in ("direct", "nginx", "litellm-w1"):
                if other in rps and other != t and rps[other] > 0:
                    row.ratios[other] = rps[t] / rps[other]
            rows.append(row)
    return rows


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None or v != v else fmt.format(v)


def markdown(rows: list[Row]) -> str:
    head = (
        "| workload | target | req/s | chunks/s | p50 ms | p99 ms | +p50 ms | +p99 ms | TTFB p50 ms | +TTFB ms "
        "| CPU µs/req | RSS MB | Redis cmds (calls) /req | % of direct | x nginx | x LiteLLM | errors |\n"
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    lines = []
    for r in rows:
        lines.append(
            f"| {r.workload.name} | {r.target} | {r.rps:,.0f} "
            f"| {_f(r.rps * r.workload.events if r.workload.events else None, '{:,.0f}')} | {_f(r.p50_ms)} | {_f(r.p99_ms)} "
            f"| {_f(r.add_p50_ms)} | {_f(r.add_p99_ms)} | {_f(r.ttfb_p50_ms)} | {_f(r.add_ttfb_p50_ms)} "
            f"| {_f(r.cpu_us, '{:.0f}')} | {_f(r.rss_mb if r.target != 'direct' else None, '{:.0f}')} "
            f"| {_f(r.redis_cmds, '{:.1f}')}{f' ({r.redis_calls:.2f})' if r.redis_calls is not None else ''} "
            f"| {_f(r.ratios['direct'] * 100 if 'direct' in r.ratios else None, '{:.0f}%')} "
            f"| {_f(r.ratios.get('nginx'), '{:.2f}')} | {_f(r.ratios.get('litellm-w1'), '{:.1f}')} "
            f"| {r.errors}{f' ({r.unfinished} cut)' if r.unfinished else ''} |"
        )
    return head + "\n".join(lines) + "\n"


def _find(rows: list[Row], target: str, pred: str) -> Row | None:
    return next((r for r in rows if r.target == target and r.workload.name == pred), None)


def targets(rows: list[Row], rg: str = "regiongate-w1") -> str:
    """The issue's targets against this run (ratios within the run; '-' when a peer was not measured)."""
    out = ["| target (issue 4) | goal | measured | met |", "|---|---|--:|:-:|"]

    def add(what: str, goal: str, value: float | None, ok: bool | None, fmt: str = "{:.2f}") -> None:
        met = "-" if ok is None else ("yes" if ok else "no")
        out.append(f"| {what} | {goal} | {_f(value, fmt)} | {met} |")

    chat = _find(rows, rg, "chat lat0 c32")
    ll = _find(rows, "litellm-w1", "chat lat0 c32")
    x = chat.rps / ll.rps if chat and ll and ll.rps else None
    add(
        "non-stream req/s, 1 worker vs LiteLLM 1 worker (c32)",
        ">= 30x",
        x,
        None if x is None else x >= 30,
        "{:.1f}x",
    )
    per_core = 1e6 / chat.cpu_us if chat and chat.cpu_us else None
    add(
        "req/s per core of proxy CPU (chat lat0 c32)",
        ">= 5000",
        per_core,
        None if per_core is None else per_core >= 5000,
        "{:,.0f}",
    )
    if chat:
        add("req/s, 1 worker (chat lat0 c32), shared 2-core box", "(info)", chat.rps, None, "{:,.0f}")
    one = _find(rows, rg, "chat lat0 c1")
    v = one.add_p50_ms if one else None
    add("added p50 latency, 1 client (ms)", "<= 0.3", v, None if v is None else v <= 0.3)
    busy = _find(rows, rg, "chat lat50 c128")
    v = busy.add_p99_ms if busy else None
    add("added p99 at 128 clients, 50 ms upstream (ms)", "<= 3", v, None if v is None else v <= 3)
    s1 = _find(rows, rg, "stream20 lat0 c1")
    v = s1.add_ttfb_p50_ms if s1 else None
    add("added TTFB p50, streams, 1 client (ms)", "<= 0.5", v, None if v is None else v <= 0.5)
    s32 = _find(rows, rg, "stream20 lat0 c32")
    l32 = _find(rows, "litellm-w1", "stream20 lat0 c32")
    x = s32.rps / l32.rps if s32 and l32 and l32.rps else None
    add("streams/s vs LiteLLM (stream20 lat0 c32)", ">= 20x", x, None if x is None else x >= 20, "{:.1f}x")
    rss = max((r.rss_mb for r in rows if r.target.startswith("regiongate")), default=None)
    add("peak RSS per worker under load (MB)", "<= 150", rss, None if rss is None else rss <= 150, "{:.0f}")
    w1 = _find(rows, "regiongate-w1", "chat lat0 c128")
    w2 = _find(rows, "regiongate-w2", "chat lat0 c128")
    x = w2.rps / w1.rps if w1 and w2 and w1.rps else None
    add("scaling 1 -> 2 workers (chat lat0 c128)", "(info)", x, None, "{:.2f}x")
    return "\n".join(out) + "\n"


def targets20(rows: list[Row]) -> str:
    """Issue 20's targets against this run: ratios within the run, '-' when a row was not measured."""
    out = ["| target (issue 20) | goal | measured | met |", "|---|---|--:|:-:|"]

    def add(what: str, goal: str, value: float | None, ok: bool | None, fmt: str = "{:.2f}") -> None:
        met = "-" if ok is None else ("yes" if ok else "no")
        out.append(f"| {what} | {goal} | {_f(value, fmt)} | {met} |")

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    rg, ng = _find(rows, "regiongate-w1", "chat lat0 c32"), _find(rows, "nginx", "chat lat0 c32")
    x = ratio(rg.cpu_us if rg else None, ng.cpu_us if ng else None)
    add("CPU/request vs nginx, 1 worker (chat lat0 c32)", "<= 4x", x, None if x is None else x <= 4, "{:.1f}x")
    per_core = 1e6 / rg.cpu_us if rg and rg.cpu_us else None
    add("req/s per worker core (chat lat0 c32)", ">= 15,000", per_core, None if per_core is None else per_core >= 15000, "{:,.0f}")
    busy, nb = _find(rows, "regiongate-w1", "chat lat50 c128"), _find(rows, "nginx", "chat lat50 c128")
    v = busy.add_p99_ms - nb.add_p99_ms if busy and nb and busy.add_p99_ms is not None and nb.add_p99_ms is not None else None
    add("+p99 over nginx's +p99, 128 clients x 50 ms (ms)", "<= 1", v, None if v is None else v <= 1)
    busy, nb = _find(rows, "regiongate-w1", "chat lat50 c128 steady"), _find(rows, "nginx", "chat lat50 c128 steady")
    v = busy.add_p99_ms - nb.add_p99_ms if busy and nb and busy.add_p99_ms is not None and nb.add_p99_ms is not None else None
    add("the same, connections warm for 1 s first (info: no opening burst)", "(info)", v, None)
    s32, n32 = _find(rows, "regiongate-w1", "stream20 lat0 c32"), _find(rows, "nginx", "stream20 lat0 c32")
    x = ratio(s32.rps if s32 else None, n32.rps if n32 else None)
    add("stream chunks/s vs nginx (stream20 lat0 c32)", ">= 0.8x", x, None if x is None else x >= 0.8, "{:.2f}x")
    v = s32.add_ttfb_p50_ms if s32 else None
    add("+TTFB p50, streams at 32 clients (ms)", "<= 1", v, None if v is None else v <= 1)
    g = _find(rows, "regiongate-w1", "grpc-unary lat0 c32")
    x = ratio(g.cpu_us if g else None, rg.cpu_us if rg else None)
    add("gRPC unary CPU/call vs REST's (c32)", "<= 1.5x", x, None if x is None else x <= 1.5, "{:.2f}x")
    gs = _find(rows, "regiongate-w1", "grpc-stream20 lat0 c32")
    x = ratio(gs.cpu_us if gs else None, s32.cpu_us if s32 else None)
    add("gRPC stream CPU/stream vs REST's (20 chunks, c32)", "(info)", x, None, "{:.2f}x")
    rr = _find(rows, "regiongate-w1-redis", "chat lat0 c32")
    x = ratio(rr.cpu_us if rr else None, rg.cpu_us if rg else None)
    add("CPU/request with [shared] redis vs in process (c32)", "<= 1.3x", x, None if x is None else x <= 1.3, "{:.2f}x")
    v = rr.redis_calls if rr else None
    add("Redis round trips per request (chat lat0 c32)", "<= 2", v, None if v is None else v <= 2.05)
    v = rr.redis_cmds if rr else None
    add("Redis commands per request, scripts' included (info)", "(info)", v, None, "{:.1f}")
    w1, w2 = _find(rows, "regiongate-w1-redis", "chat lat0 c128"), _find(rows, "regiongate-w2-redis", "chat lat0 c128")
    x = ratio(w2.rps if w2 else None, w1.rps if w1 else None)
    add("scaling 1 -> 2 workers with [shared] redis (chat lat0 c128)", ">= 1.8x", x, None if x is None else x >= 1.8, "{:.2f}x")
    return "\n".join(out) + "\n"


COLORS = {
    "direct": "#9e9e9e",
    "nginx": "#2e7d32",
    "regiongate-w1": "#1565c0",
    "regiongate-w2": "#64b5f6",
    "litellm-w1": "#c62828",
    "regiongate-w1-redis": "#6a1b9a",
    "regiongate-w2-redis": "#ba68c8",
}


def chart(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.workload.name for r in rows))
    present = {r.target for r in rows}
    tnames = [t for t in COLORS if t in present] + sorted(present - set(COLORS))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    width = 0.8 / max(len(tnames), 1)
    for i, t in enumerate(tnames):
        by = {r.workload.name: r for r in rows if r.target == t}
        xs = [j + i * width for j in range(len(names))]
        ax1.bar(xs, [by[n].rps if n in by else 0 for n in names], width, label=t, color=COLORS.get(t))
        if t != "direct":
            # Added latency at or below zero (within noise of direct) is drawn at the 0.01 ms floor.
            pts = [(x, by[n].add_p50_ms) for x, n in zip(xs, names, strict=True) if n in by]
            pts = [(x, max(a, 0.01)) for x, a in pts if a is not None]
            ax2.bar([x for x, _ in pts], [a for _, a in pts], width, color=COLORS.get(t))
    ax1.set_yscale("log")
    ax1.set_ylabel("requests/s (log)")
    ax1.legend(fontsize=8, ncol=len(tnames))
    ax1.set_title(title, fontsize=10)
    ax2.set_yscale("log")
    ax2.set_ylabel("p50 latency added\nover direct, ms (log)")
    ax2.set_ylim(bottom=0.01)
    ax2.set_xticks([j + width * (len(tnames) - 1) / 2 for j in range(len(names))])
    ax2.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
