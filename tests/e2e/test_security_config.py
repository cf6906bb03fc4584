"""A bad config never crashes a command (issue 12, item 6): one line naming the file and the problem,
exit 2; a SIGHUP reload with a bad file keeps serving and logs ``config reload rejected``."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.procs import DEMO_KEY, Proc, wait_until
from tests.support.worlds import world

BAD = {
    "not-utf8.toml": b"\xff\xfe[[regions]]\nid = 'x'\n",
    "latin1.toml": "[gateway]\nbase_domains = ['caf\u00e9.example']\n".encode("latin-1"),
    "not-toml.toml": b"[[regions]\n",
    "invalid.toml": b"[[regions]]\nid = 'Bad Id'\nlat = 100\nlon = 0\nzone = 'us'\n",
    "nul.toml": b"\x00\x00\x00",
}
COMMANDS = [
    ["check-config"],
    ["serve", "--port", "0", "--grpc-port", "0"],
    ["route", "explain", "--model", "grok-4"],
    ["teams", "list"],
    ["simulate", "--requests", "10", "--quiet", "--out", "/nonexistent/never-written"],
]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "regiongate", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("name", sorted(BAD))
def test_every_command_refuses_a_bad_config_in_one_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(BAD[name])
    for cmd in COMMANDS if name == "not-utf8.toml" else COMMANDS[:2]:  # every command reads it one way
        r = _cli(*cmd, "--config", str(path))
        assert r.returncode == 2, (cmd, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, (cmd, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0], (cmd, r.stderr)
    r = _cli("reload", "--pid-file", str(tmp_path / "none.pid"), "--config", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(path) in r.stderr, r.stderr


def test_sighup_with_a_non_utf8_config_keeps_serving(
    start_gateway: Callable[..., Proc], tmp_path: Path
) -> None:
    path = tmp_path / "live.toml"
    path.write_text(world({"us-east-1": ['{ kind = "simulated", ttft_ms = 1 }']}))
    gw = start_gateway(args=["--config", str(path)])
    path.write_bytes(b"\xff\xfe not a config")
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "config reload rejected" in gw.output(), timeout=30, what="the rejection to be logged")
    assert "Traceback" not in gw.output()
    assert gw.proc.poll() is None
    chat = {"model": "grok-4", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = httpx.post(
        gw.url + "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {DEMO_KEY}"}
    )
    assert r.status_code == 200, r.text
