"""A newcomer's first minutes: the README's Python and Node examples run as written against the demo with
``--region-ports`` (only the port numbers are moved to free ones), a taken port is one line and exit 2,
``serve --help`` shows the defaults, and ``route explain`` says "refused" with a non-zero exit."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.procs import DEMO_KEY, Proc, free_ports
from tests.support.worlds import DEMO_REGIONS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DEMO_PORTS = 9  # six regions and three zones in the demo world
ENDPOINTS = [*DEMO_REGIONS, "us", "eu", "apac"]  # the order --region-ports numbers them in


def run(
    *cmd: str, cwd: Path | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, check=False
    )


def readme_block(lang: str, needle: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", README, re.S)
    found = [b for b in blocks if needle in b]
    assert len(found) == 1, f"one ```{lang} block with {needle!r} in README.md, found {len(found)}"
    return found[0]


def moved(code: str, gw: Proc, base: int) -> str:
    """The example with the demo's ports (8000, 8001...) moved to this test's free ones; nothing else changes."""

    def port(m: re.Match[str]) -> str:
        k = int(m.group(1)) - 8000
        return f"localhost:{gw.port if k == 0 else base + k - 1}"

    return re.sub(r"localhost:(80\d\d)\b", port, code)


@pytest.fixture
def demo(start_gateway: Callable[..., Proc]) -> tuple[Proc, int]:
    base = free_ports(DEMO_PORTS)
    return start_gateway(args=["--region-ports", str(base)]), base


def test_region_ports_are_listed_and_fix_the_endpoint_whatever_the_host(demo: tuple[Proc, int]) -> None:
    gw, base = demo
    out = gw.output()
    for k, name in enumerate(ENDPOINTS):
        assert re.search(rf"{re.escape(name)}\s+http://localhost:{base + k}/v1", out), out
    auth = {"Authorization": f"Bearer {DEMO_KEY}"}
    body = {"model": "grok-4", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    r = httpx.post(
        f"http://127.0.0.1:{base}/v1/chat/completions",
        json=body,
        headers={**auth, "Host": "eu-west-1.localhost"},
    )
    assert (r.status_code, r.headers["x-regiongate-region"], r.headers["x-regiongate-route"]) == (
        200,
        "us-east-1",
        "pinned",
    )
    eu = ENDPOINTS.index("eu")
    r = httpx.post(f"http://127.0.0.1:{base + eu}/v1/chat/completions", json=body, headers=auth)
    assert r.headers["x-regiongate-route"] == "zone" and r.headers["x-regiongate-region"].startswith("eu-")
    sydney = ENDPOINTS.index("ap-southeast-2")
    r = httpx.post(f"http://127.0.0.1:{base + sydney}/v1/chat/completions", json=body, headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(
        gw.url + "/v1/chat/completions", json=body, headers={**auth, "Host": "eu-west-1.localhost"}
    )
    assert r.headers["x-regiongate-region"] == "eu-west-1"  # the main port still resolves by Host


def test_readme_python_example_runs_as_written(demo: tuple[Proc, int]) -> None:
    gw, base = demo
    code = moved(readme_block("python", "from openai import OpenAI"), gw, base)
    out = run(sys.executable, "-c", code, KEY=DEMO_KEY)
    assert out.returncode == 0, out.stderr
    assert "simulated reply from grok-4 in us-east-1" in out.stdout


def test_readme_node_example_runs_as_written(demo: tuple[Proc, int], tmp_path: Path) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are needed for the README's Node example (.ci/run installs them)")
        pytest.skip("node / npm not installed")
    gw, base = demo
    work = tmp_path / "node-example"
    work.mkdir()
    (work / "package.json").write_text('{"name": "regiongate-readme-example", "private": true}\n')
    install = run(
        npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "openai", cwd=work, timeout=300
    )
    assert install.returncode == 0, install.stderr
    (work / "example.mjs").write_text(moved(readme_block("js", 'from "openai"'), gw, base))
    out = run(node, "example.mjs", cwd=work, KEY=DEMO_KEY)
    assert out.returncode == 0, out.stderr
    assert "simulated reply from grok-4 in us-east-1" in out.stdout


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "regiongate", "serve", *args, REGIONGATE_DEMO_API_KEY=DEMO_KEY)


@pytest.mark.parametrize("which", ["rest", "grpc", "region"])
def test_a_port_in_use_is_one_line_naming_it_and_exit_2(which: str, tmp_path: Path) -> None:
    base = free_ports(DEMO_PORTS + 2)
    rest, grpc, first = base, base + 1, base + 2
    taken = {"rest": rest, "grpc": grpc, "region": first + 2}[which]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen(1)
        extra = ["--region-ports", str(first)] if which == "region" else []
        out = _serve("--port", str(rest), "--grpc-port", str(grpc), *extra)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    flag = {"rest": "--port", "grpc": "--grpc-port", "region": "--region-ports"}[which]
    assert f"port {taken} " in out.stderr and "already in use" in out.stderr and flag in out.stderr


def test_serve_help_gives_text_and_defaults() -> None:
    out = _serve("--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for opt, default in (
        ("--host", "127.0.0.1"),
        ("--port", "8000"),
        ("--grpc-port", "50051"),
        ("--workers", "1"),
    ):
        assert re.search(rf"{opt} \S+ [^-]*\(default: {re.escape(default)}", text), (opt, text)
    assert "--region-ports" in text


def test_route_explain_exits_non_zero_for_a_refused_request() -> None:
    def explain(*args: str) -> subprocess.CompletedProcess[str]:
        return run(sys.executable, "-m", "regiongate", "route", "explain", "--model", "grok-4", *args)

    refused = explain("--endpoint", "ap-southeast-2.localhost")
    assert refused.returncode == 1 and "refused" in refused.stdout, refused.stdout + refused.stderr
    served = explain("--from", "35.68,139.69")
    assert served.returncode == 0 and "refused" not in served.stdout
