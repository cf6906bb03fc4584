"""``regiongate simulate`` end to end, as a user runs it: a real process, the default scenario scaled down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PNG = b"\x89PNG\r\n\x1a\n"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "regiongate", "simulate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=170,
    )


def test_simulate_writes_the_report_and_charts(tmp_path: Path) -> None:
    p = _run("--requests", "20000", "--out", "tmp", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "tmp"
    report = (out / "report.md").read_text()
    for policy in ("gateway", "nearest-only", "least-loaded"):
        assert f"**{policy}**" in report
        assert f"## {policy}: per client continent" in report
        assert f"## {policy}: per region" in report
    assert "residency violations" in report and "![utilisation](utilisation.png)" in report
    for chart in ("latency_cdf.png", "utilisation.png", "traffic.png"):
        data = (out / chart).read_bytes()
        assert data.startswith(PNG) and 10_000 < len(data) < 800_000, chart
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] == 20_000
    for name, pol in summary["policies"].items():
        assert pol["requests"] == 20_000, name
        assert pol["residency_violations"] == 0, name
        assert pol["served"] + pol["rejected"] + pol["failed"] == 20_000, name
    gw = summary["policies"]["gateway"]
    assert gw["rejected"] < summary["policies"]["nearest-only"]["rejected"]  # spillover saves requests
    assert gw["spillover"] > 0
    # The baselines always serve their own first choice (or refuse): never a spillover.
    assert summary["policies"]["nearest-only"]["spillover"] == 0
    assert summary["policies"]["least-loaded"]["spillover"] == 0
    assert "simulate: 20,000/20,000 requests" in p.stderr  # progress
    assert "requests/s simulated" in p.stdout


def test_simulate_refuses_a_bad_scenario(tmp_path: Path) -> None:
    bad = tmp_path / "s.toml"
    bad.write_text("[traffic]\nmodels = { grok-9 = 1 }\n")
    p = _run("--scenario", str(bad), "--out", "x", cwd=tmp_path)
    assert p.returncode == 2
    assert "'grok-9' is deployed in no region" in p.stderr
    assert not (tmp_path / "x").exists()


def test_the_gateway_never_loads_the_charting_library() -> None:
    code = (
        "import sys, regiongate.app.cli, regiongate.app.runtime; regiongate.app.cli.build_parser();"
        "import regiongate.simulate.runner;"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
