"""The product page's xAI SDK snippet, byte for byte, reaches the gateway over TLS and runs in us-east-1.

The snippet dials ``us-east-1.api.x.ai:443``. The test gives it what a real deployment gives it, without
touching DNS: an HTTP CONNECT proxy (``https_proxy``, honoured by gRPC) that always tunnels to the
gateway's gRPC port on loopback, and a test CA (``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``) that signed the
gateway's ``*.api.x.ai`` certificate. The gateway learns the region from the TLS server name.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.certs import make_certs
from tests.support.connect_proxy import ConnectProxy
from tests.support.procs import DEMO_KEY, free_port, spawn
from tests.support.product_page import SNIPPET
from tests.support.product_page import X_AI_WORLD as CONFIG

# Appended after the snippet, so its lines stay untouched: show where it ran, then ask the global endpoint.
EPILOGUE = """
print("regional:", completion.content)
glob = Client(api_key=os.getenv("XAI_API_KEY"), api_host="api.x.ai").chat.create(model="grok-4")
glob.append(user("What is the meaning of life?"))
print("global:", glob.sample().content)
"""

def wait_tls(port: int, ctx: ssl.SSLContext, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                ctx.wrap_socket(raw, server_hostname="api.x.ai"),
            ):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"TLS on port {port} did not come up")


@pytest.fixture
def tls_gateway(tmp_path: Path) -> Iterator[tuple[int, int, Path, ssl.SSLContext]]:
    ca, cert, key = make_certs(tmp_path)
    (tmp_path / "gateway.toml").write_text(CONFIG)
    port, grpc_port = free_port(), free_port()
    cmd = ["serve", "--config", str(tmp_path / "gateway.toml"), "--port", str(port)]
    cmd += ["--grpc-port", str(grpc_port), "--tls-cert", str(cert), "--tls-key", str(key)]
    log = tmp_path / "gateway.log"
    proc = spawn(cmd, log, {"REGIONGATE_DEMO_API_KEY": DEMO_KEY})
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        wait_tls(port, ctx, proc, log)  # REST starts after gRPC
        yield port, grpc_port, ca, ctx
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_product_page_snippet_unchanged_over_tls(
    tls_gateway: tuple[int, int, Path, ssl.SSLContext], tmp_path: Path
) -> None:
    port, grpc_port, ca, ctx = tls_gateway
    proxy = ConnectProxy(grpc_port)
    script = tmp_path / "snippet.py"
    script.write_text(SNIPPET + EPILOGUE)
    assert script.read_text().startswith(SNIPPET)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        XAI_API_KEY=DEMO_KEY,
        https_proxy=f"http://127.0.0.1:{proxy.port}",
        GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=str(ca),
    )
    try:
        done = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert "from grok-4 in us-east-1 " in lines["regional"]
    assert "from grok-4 in eu-west-1 " in lines["global"]  # nearest to this gateway (Dublin)
    assert proxy.seen == ["us-east-1.api.x.ai:443", "api.x.ai:443"]
    # The gateway's own books agree: one request pinned to us-east-1 by the name the client dialled.
    with httpx.Client(verify=ctx, timeout=5) as http:
        metrics = http.get(f"https://127.0.0.1:{port}/metrics", extensions={"sni_hostname": "api.x.ai"}).text
    assert 'model="grok-4",region="us-east-1",route="pinned",status="200"} 1.0' in metrics
    assert 'model="grok-4",region="eu-west-1",route="nearest",status="200"} 1.0' in metrics
