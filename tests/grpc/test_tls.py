"""The product page's xAI SDK snippet, byte for byte, reaches the gateway over TLS and runs in us-east-1.

The snippet dials ``us-east-1.api.x.ai:443``. The test gives it what a real deployment gives it, without
touching DNS: an HTTP CONNECT proxy (``https_proxy``, honoured by gRPC) that always tunnels to the
gateway's gRPC port on loopback, and a test CA (``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``) that signed the
gateway's ``*.api.x.ai`` certificate. The gateway learns the region from the TLS server name.
"""

from __future__ import annotations

import os
import re
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.certs import make_certs
from tests.support.procs import DEMO_KEY, free_port, spawn

SNIPPET = """import os

from xai_sdk import Client
from xai_sdk.chat import user

client = Client(
api_key=os.getenv("XAI_API_KEY"),
api_host="us-east-1.api.x.ai" # Without the https://
)

chat = client.chat.create(model="grok-4")
chat.append(user("What is the meaning of life?"))

completion = chat.sample()
"""
# Appended after the snippet, so its lines stay untouched: show where it ran, then ask the global endpoint.
EPILOGUE = """
print("regional:", completion.content)
glob = Client(api_key=os.getenv("XAI_API_KEY"), api_host="api.x.ai").chat.create(model="grok-4")
glob.append(user("What is the meaning of life?"))
print("global:", glob.sample().content)
"""

CONFIG = """
[gateway]
lat = 53.35
lon = -6.26
base_domains = ["api.x.ai"]

[[regions]]
id = "us-east-1"
lat = 39.04
lon = -77.49
zone = "us"

[[regions]]
id = "eu-west-1"
lat = 53.35
lon = -6.26
zone = "eu"

[[deployments]]
region = "us-east-1"
models = ["grok-4"]
backends = [{ kind = "simulated", ttft_ms = 5, tokens_per_s = 4000 }]

[[deployments]]
region = "eu-west-1"
models = ["grok-4"]
backends = [{ kind = "simulated", ttft_ms = 5, tokens_per_s = 4000 }]

[[teams]]
name = "demo"
keys = [{ id = "demo", env = "REGIONGATE_DEMO_API_KEY" }]
"""


class ConnectProxy:
    """An HTTP CONNECT proxy that records the host each CONNECT names and always tunnels to one loopback
    port, whatever that host is: the test never reaches the network."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.seen: list[str] = []
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)  # accept() wakes up to notice close()
        self.port = int(self.listener.getsockname()[1])
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._tunnel, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _tunnel(self, client: socket.socket) -> None:
        with client:
            client.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = client.recv(4096)
                if not data:
                    return
                head += data
            request, _, rest = head.partition(b"\r\n\r\n")
            m = re.match(rb"CONNECT (\S+) HTTP/1\.[01]", request)
            if not m:
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
                return
            self.seen.append(m.group(1).decode())
            with socket.create_connection(("127.0.0.1", self.target_port), timeout=10) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
                self._pipe(client, upstream)

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        while not self.stopped.is_set():
            ready, _, _ = select.select(list(peers), [], [], 0.2)
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                peers[s].sendall(data)

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        for t in self.threads:
            t.join(5)


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
