"""Prompt-cache affinity on real servers: two llama.cpp ``llama-server`` backends as two regions.

    python -m bench.affinity [--turns 8] [--conversations 2] [--out docs/bench/affinity.json]

Each region is one llama-server (tests/support/llama.py's tiny model, one slot, ``--cache-reuse``, the
host-RAM prompt cache off so a slot's cache is all it has) behind a gateway deployment of limit 1. The
client sits where both regions are near-equal (Kansas, 0.9 ms apart). ``--conversations`` conversations
with a long system prompt run side by side, one turn each at a time (a barrier per turn): two requests
meet two one-slot regions, so one of them lands in the second region. Without affinity which one does is
a race, and a conversation that lands on the other server prefills its whole history again; with
affinity each keeps the server that holds its prefix. Measured per turn 2..N: the client's time to the
answer of a one-token reply (prefill + one token: the time to first token; mean and median over the
turns, and split by hit and miss), and the server's own
``timings`` (``cache_n``: prompt tokens it reused, ``prompt_ms``: its prefill time). Run once with
``[affinity] enabled = true`` and once with ``false``, each with its own system prompt (no carried cache).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support import llama
from tests.support.procs import DEMO_KEY, Proc, free_port, spawn_gateway, wait_http
from tests.support.worlds import region_lines

KANSAS = "38.0,-98.9"
REGIONS = {"us-east-1": ("Ashburn", 39.04, -77.49, "us"), "us-west-2": ("Oregon", 45.84, -119.70, "us")}


def config(urls: dict[str, str], affinity: bool) -> str:
    out = ["[gateway]", "lat = 39.04", "lon = -77.49", "", "[health]", "probe_interval_s = 0", ""]
    out += ["[load]", "scrape_interval_s = 0", "", "[affinity]", f"enabled = {str(affinity).lower()}", ""]
    out += region_lines(REGIONS)
    for rid, url in urls.items():
        out += [
            "[[deployments]]",
            f'region = "{rid}"',
            f'models = ["{llama.MODEL}"]',
            "limit = 1",
            f'backends = [{{ kind = "http", url = "{url}/v1", metrics_url = "", prefill = "llama.cpp" }}]',
            "",
        ]
    out += ["[[teams]]", 'name = "demo"', 'keys = [{ id = "demo", env = "REGIONGATE_DEMO_API_KEY" }]']
    return "\n".join(out)


def system_prompt(tag: str) -> str:
    # ~2,000 GPT-2 tokens of plain English, distinct per conversation and run: no reuse across them
    line = "You are the archivist of a map library; answer from the catalogue, briefly and exactly. "
    return f"[{tag}] " + line * 100


def one_turn(gw: Proc, msgs: list[dict[str, str]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": llama.MODEL, "messages": msgs, "max_tokens": 1, "temperature": 0},
        headers={"Authorization": f"Bearer {DEMO_KEY}", "x-regiongate-client-location": KANSAS},
        timeout=120,
    )
    ms = (time.perf_counter() - t0) * 1000.0
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
    body = r.json()
    timings = body.get("timings") or {}
    return {
        "ms": ms,
        "region": r.headers["x-regiongate-region"],
        "cache_n": timings.get("cache_n"),
        "prompt_n": timings.get("prompt_n"),
        "prompt_ms": timings.get("prompt_ms"),
    }


def run(gw: Proc, turns: int, conversations: int, tag: str) -> list[dict[str, Any]]:
    """Every conversation's turns, side by side, with a barrier per turn."""
    # each conversation its own context (a user's documents): no prefix is shared between them
    histories = [[{"role": "system", "content": system_prompt(f"{tag}-{c}")}] for c in range(conversations)]
    rows: list[dict[str, Any]] = []
    barrier = threading.Barrier(conversations)
    lock = threading.Lock()

    def talk(c: int) -> None:
        for k in range(1, turns + 1):
            msgs = histories[c]
            msgs.append(
                {"role": "user", "content": f"Conversation {c}, question {k}: where is atlas {k * 7 + c}?"}
            )
            barrier.wait()
            got = one_turn(gw, msgs)
            msgs.append({"role": "assistant", "content": f"Shelf {k}."})
            with lock:
                rows.append({"conversation": c, "turn": k, **got})

    threads = [threading.Thread(target=talk, args=(c,)) for c in range(conversations)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    later = [r for r in rows if r["turn"] > 1]
    moved = 0
    last: dict[int, str] = {}
    for r in sorted(rows, key=lambda r: (r["conversation"], r["turn"])):
        if r["turn"] > 1 and last.get(r["conversation"]) != r["region"]:
            moved += 1
        last[r["conversation"]] = r["region"]
    hits = [r for r in later if (r["cache_n"] or 0) > (r["prompt_n"] or 0)]
    return {
        "turns_2_plus": len(later),
        "moved_region": moved,
        "cache_hits": len(hits),
        "ttft_p50_ms": statistics.median(r["ms"] for r in later),
        "ttft_mean_ms": statistics.fmean(r["ms"] for r in later),
        "server_prefill_p50_ms": statistics.median(r["prompt_ms"] or 0.0 for r in later),
        "cached_tokens_mean": statistics.fmean(r["cache_n"] or 0 for r in later),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--conversations", type=int, default=2)
    ap.add_argument("--out", default="")
    ap.add_argument("--width", type=int, default=256, help="model width (the tests' model: 64)")
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args(argv)
    # A wider model than the tests' (64 wide, 2 layers): its prefill, not the server's fixed costs, must
    # dominate the time to first token, as it does for a real model and a long prompt.
    llama.N_EMBD, llama.N_FF, llama.N_LAYER = args.width, args.width * 2, args.layers
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = llama.write_model(tmp / "tiny.gguf")
        servers: dict[str, Proc] = {}
        try:
            for rid in REGIONS:
                port = free_port()
                log = tmp / f"llama-{rid}.log"
                cmd = [*llama.server_args(model, port, slots=1), "--cache-ram", "0"]
                with log.open("wb") as out:
                    import subprocess

                    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
                servers[rid] = Proc(proc, port, log)
                wait_http(servers[rid].url + "/health", proc, timeout=60, log=log)
            urls = {rid: p.url for rid, p in servers.items()}
            result: dict[str, Any] = {"turns": args.turns, "conversations": args.conversations}
            for on in (False, True):
                gw = spawn_gateway(config(urls, on), tmp, name=f"gateway-{'on' if on else 'off'}")
                try:
                    one_turn(gw, [{"role": "user", "content": "warm up"}])  # connections, first-use costs
                    rows = run(gw, args.turns, args.conversations, f"run-{on}-{time.time_ns()}")
                finally:
                    gw.stop()
                result["on" if on else "off"] = {"summary": summary(rows), "rows": rows}
        finally:
            for p in servers.values():
                p.stop()
    on, off = result["on"]["summary"], result["off"]["summary"]
    result["ttft_ratio_on_over_off"] = on["ttft_mean_ms"] / off["ttft_mean_ms"]
    print(f"{'affinity':<9} {'turns 2+':>8} {'moved':>6} {'hits':>5} {'TTFT mean ms':>13} {'p50 ms':>8}")
    for name, s in (("off", off), ("on", on)):
        print(
            f"{name:<9} {s['turns_2_plus']:>8} {s['moved_region']:>6} {s['cache_hits']:>5} "
            f"{s['ttft_mean_ms']:>13.1f} {s['ttft_p50_ms']:>8.1f}"
        )
    for name in ("off", "on"):
        rows = [r for r in result[name]["rows"] if r["turn"] > 1]
        for hit in (True, False):
            ms = [r["ms"] for r in rows if ((r["cache_n"] or 0) > (r["prompt_n"] or 0)) == hit]
            if ms:
                print(
                    f"  {name}: {'hits' if hit else 'misses'} {len(ms)}, TTFT median {statistics.median(ms):.0f} ms"
                )
    print(f"turn 2+ TTFT mean, on / off: {result['ttft_ratio_on_over_off']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
