"""The benchmark (bench/run.py) must keep running: its --quick smoke starts the fake upstream and
regiongate, drives both for a fraction of a second and prints the table. No timing is asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_runs_and_prints_the_table(tmp_path: Path) -> None:
    missing = [exe for exe in ("redis-server", "h2load") if shutil.which(exe) is None]
    if missing and os.environ.get("CI") == "true":  # .ci/run installs both
        pytest.fail(f"not installed: {', '.join(missing)}")
    out = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--no-chart", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "| workload | target | req/s | chunks/s |" in out.stdout
    for target in ("direct", "regiongate-w1"):
        assert f"| chat lat0 c8 | {target} |" in out.stdout
        assert f"| stream20 lat0 c4 | {target} |" in out.stdout
    if shutil.which("redis-server"):  # the production configuration: leases and a rate limit in Redis
        assert "| chat lat0 c8 | regiongate-w1-redis |" in out.stdout
    if shutil.which("h2load"):  # gRPC shaped like the xAI SDK's calls
        assert "| grpc-unary lat0 c8 | regiongate-w1 |" in out.stdout
        assert "| grpc-stream20 lat0 c4 | regiongate-w1 |" in out.stdout
    assert "excluded from the run" not in out.stdout  # every request of the check was answered
    table = (tmp_path / "results.md").read_text()
    assert "| target (issue 4) | goal | measured | met |" in table
    assert "| target (issue 20) | goal | measured | met |" in table
    rows = json.loads((tmp_path / "results.json").read_text())
    assert rows and all(r["errors"] == 0 for r in rows), rows
