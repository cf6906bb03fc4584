"""Soak: a long run at a fixed share of the measured maximum, plain requests and streams mixed, watching
that the gateway's memory and open file descriptors stay flat.

    .venv/bin/python -m bench.soak [--minutes 10] [--share 0.7] [--workers 1] [--out docs/bench]

Starts the fake upstream and ``regiongate serve`` (the benchmark's config), measures its maximum rate of
plain requests (bench.probe, 32 connections, 3 s), then every second sends ``share`` x that many requests
(three plain requests for each 20-chunk stream, 16 connections) and sleeps what is left of the second.
Every 5 s it reads VmRSS and the number of open descriptors of each gateway process (/proc). Writes
``soak.md`` (the samples, first/last and the drift) and ``soak.png`` (the chart) to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import load, targets


def _rss_fds(pids: list[int]) -> tuple[float, int]:
    rss, fds = 0.0, 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) / 1024.0
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
    return rss, fds


def _streams(url: str, w: load.Workload, n: int, out: list[load.Sample]) -> None:
    out.append(load.run_probe(url, w, 0.9, requests=n)[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--share", type=float, default=0.7)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=str(targets.ROOT / "docs" / "bench"))
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rg-soak-"))
    up = targets.start_upstream(work, "soon", None)
    rg = targets.start_regiongate(work, up.port, a.workers, None, [])
    samples: list[tuple[float, float, int, int, int]] = []  # (t, rss MB, fds, requests, errors)
    try:
        peak = load.run_probe(rg.url, load.Workload("chat", 16, 0, 32), 3.0)[0].rps
        per_s = max(int(peak * a.share), 4)
        plain, stream = load.Workload("chat", 16, 0, 12), load.Workload("stream", 20, 0, 4)
        done = [0, 0]
        stop = time.monotonic() + a.minutes * 60
        started = time.monotonic()

        def watch() -> None:
            while time.monotonic() < stop:
                rg.refresh()
                rss, fds = _rss_fds(rg.pids)
                samples.append((time.monotonic() - started, rss, fds, done[0], done[1]))
                time.sleep(5.0)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        while time.monotonic() < stop:
            t0 = time.monotonic()
            n_stream = max(per_s // 4, 1)
            out: list[load.Sample] = []
            th = threading.Thread(target=_streams, args=(rg.url, stream, n_stream, out))
            th.start()
            s = load.run_probe(rg.url, plain, 0.9, requests=per_s - n_stream)[0]
            th.join()
            for x in (s, *out):
                done[0] += x.requests
                done[1] += x.errors
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        watcher.join(10)
    finally:
        rg.stop()
        up.stop()
        shutil.rmtree(work, ignore_errors=True)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    lines = [
        f"Soak {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `python -m bench.soak --minutes {a.minutes:g} "
        f"--share {a.share:g} --workers {a.workers}`; maximum {peak:,.0f} plain requests/s (c32), run at "
        f"{per_s:,} requests/s (1 stream of 20 chunks per 3 plain requests); {done[0]:,} requests, {done[1]} errors; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
        "",
        f"RSS {first[1]:.1f} MB at {first[0]:.0f} s -> {last[1]:.1f} MB at {last[0]:.0f} s "
        f"({last[1] - first[1]:+.1f} MB); open descriptors {first[2]} -> {last[2]} ({last[2] - first[2]:+d}).",
        "",
        "| t s | RSS MB | open fds | requests so far | errors |",
        "|--:|--:|--:|--:|--:|",
        *(f"| {t:.0f} | {r:.1f} | {f} | {n:,} | {e} |" for t, r, f, n, e in samples[:: max(1, len(samples) // 24)]),
    ]
    (out_dir / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax1 = plt.subplots(figsize=(9, 3.5))
        ts = [x[0] / 60 for x in samples]
        ax1.plot(ts, [x[1] for x in samples], color="#1565c0", label="RSS MB")
        ax1.set_xlabel("minutes")
        ax1.set_ylabel("RSS MB", color="#1565c0")
        ax1.set_ylim(bottom=0)
        ax2 = ax1.twinx()
        ax2.plot(ts, [x[2] for x in samples], color="#c62828", label="open fds")
        ax2.set_ylabel("open file descriptors", color="#c62828")
        ax2.set_ylim(bottom=0)
        ax1.set_title(f"regiongate soak: {per_s:,} req/s ({a.share:.0%} of max), plain + streams", fontsize=10)
        fig.tight_layout()
        fig.savefig(out_dir / "soak.png", dpi=72)
        plt.close(fig)
    except ImportError:
        print("no chart: matplotlib is not installed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
