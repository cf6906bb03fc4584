"""The product page's four snippets, unchanged, against one ``regiongate serve --listen :443`` process.

The page (``regional-endpoints.md``) gives one name per region to every client: the xAI SDK dials
``us-east-1.api.x.ai`` (gRPC over TLS on 443), the OpenAI SDKs and curl ``https://us-east-1.api.x.ai/v1``.
Here all four run inside a network namespace of their own where that name (and ``api.x.ai``) is loopback
(``ip netns exec`` lays ``/etc/netns/<ns>/hosts`` over ``/etc/hosts``) and the gateway listens on port 443 of
that namespace's loopback, so nothing on this machine or beyond can be reached or disturbed. Each client trusts
the test CA through its own variable: ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` (grpc), ``SSL_CERT_FILE`` (openai
Python), ``NODE_EXTRA_CA_CERTS`` (Node), ``CURL_CA_BUNDLE`` (curl).

The snippets are the page's text byte for byte, with two kinds of additions outside them: a first line that
defines ``XAI_API_KEY`` where the page uses it as a bare name, and a last line that prints the answer. The
page's markdown source writes the curl line continuations as ``\\\\``; the rendered page shows (and a reader
copies) ``\\``, which is what runs here.

Needs root and iproute2 (``.ci/run`` installs iproute2, curl, and the openai npm package under tests/js):
skipped without them on a developer machine, a failure under CI.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.certs import make_certs
from tests.support.procs import DEMO_KEY, Proc, need, sh
from tests.support.product_page import CURL, OPENAI_JS, OPENAI_PY
from tests.support.product_page import ONE_PORT_WORLD as CONFIG
from tests.support.product_page import SNIPPET as XAI_SDK

pytestmark = pytest.mark.timeout(180)
HERE = Path(__file__).parent.parent  # tests/
JS_DIR = HERE / "js"

SEED = Path("/work/shared/seed/regional-endpoints.md")


def test_snippets_are_the_pages() -> None:
    """When the page is at hand (a developer's machine), the four texts above are its blocks."""
    if not SEED.exists():
        pytest.skip("the product page is not on this machine")
    blocks = re.findall(r"```[A-Za-z]*\n(.*?)```", SEED.read_text(), re.S)
    assert blocks[:4] == [XAI_SDK, OPENAI_PY, OPENAI_JS, CURL.replace("\\\n", "\\\\\n")]


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[str]:
    need(os.geteuid() == 0, "needs root for a network namespace")
    need(shutil.which("ip") is not None, "needs iproute2")
    ns = f"rg-one-{secrets.token_hex(3)}"
    made = sh("ip", "netns", "add", ns, check=False)
    need(made.returncode == 0, f"'ip netns add' fails here: {made.stderr.strip()}")
    etc = Path("/etc/netns") / ns
    try:
        etc.mkdir(parents=True)
        (etc / "hosts").write_text("127.0.0.1 localhost api.x.ai us-east-1.api.x.ai\n::1 localhost\n")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns
    finally:
        sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(etc, ignore_errors=True)


def test_four_snippets_against_one_server_on_443(namespace: str, tmp_path: Path) -> None:
    curl, node = shutil.which("curl"), shutil.which("node")
    need(curl is not None and node is not None, "needs curl and node")
    need((JS_DIR / "node_modules" / "openai").exists(), "needs `npm install --prefix tests/js`")
    ca, cert, key = make_certs(tmp_path)
    (tmp_path / "gateway.toml").write_text(CONFIG)
    log = tmp_path / "gateway.log"
    inns = ["ip", "netns", "exec", namespace]
    env = {**os.environ, "REGIONGATE_DEMO_API_KEY": DEMO_KEY}
    with log.open("wb") as out:
        gw = subprocess.Popen(
            [*inns, sys.executable, "-m", "regiongate", "serve", "--config", str(tmp_path / "gateway.toml"),
             "--listen", ":443", "--tls-cert", str(cert), "--tls-key", str(key)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    try:
        client_env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        client_env.update(
            XAI_API_KEY=DEMO_KEY,
            GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=str(ca),
            SSL_CERT_FILE=str(ca),
            NODE_EXTRA_CA_CERTS=str(ca),
            CURL_CA_BUNDLE=str(ca),
        )
        health = [str(curl), "-sf", "https://api.x.ai/healthz"]
        deadline = time.monotonic() + 60
        while subprocess.run([*inns, *health], env=client_env, capture_output=True, check=False).returncode:
            assert gw.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"gateway did not come up:\n{log.read_text()}"
            time.sleep(0.1)

        def run(cmd: list[str], cwd: Path = tmp_path) -> str:
            done = subprocess.run(
                [*inns, *cmd], env=client_env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
            )
            assert done.returncode == 0, f"{cmd}: {done.stderr}\n{log.read_text()[-2000:]}"
            return done.stdout

        py_key = 'import os\nXAI_API_KEY = os.environ["XAI_API_KEY"]\n'
        (tmp_path / "xai.py").write_text(XAI_SDK + "print(completion.content)\n")
        (tmp_path / "openai_sdk.py").write_text(py_key + OPENAI_PY + "print(completion.choices[0].message.content)\n")
        js = JS_DIR / f"snippet-{secrets.token_hex(3)}.mjs"  # beside tests/js/node_modules
        js.write_text(
            "const XAI_API_KEY = process.env.XAI_API_KEY;\n"
            + OPENAI_JS
            + "console.log(completion.choices[0].message.content);\n"
        )
        (tmp_path / "curl.sh").write_text(CURL)
        try:
            answers = {
                "xai-sdk (gRPC)": run([sys.executable, str(tmp_path / "xai.py")]),
                "openai (Python)": run([sys.executable, str(tmp_path / "openai_sdk.py")]),
                "openai (Node)": run([str(node), str(js)]),
                "curl": json.loads(run(["bash", str(tmp_path / "curl.sh")]))["choices"][0]["message"]["content"],
            }
        finally:
            js.unlink()
        for who, text in answers.items():
            assert "from grok-4 in us-east-1 " in text, (who, text)
        metrics = run([str(curl), "-sf", "https://api.x.ai/metrics"])
        assert 'model="grok-4",region="us-east-1",route="pinned",status="200"} 4.0' in metrics
    finally:
        Proc(gw, 443, log).stop()
