"""Secrets never reach a log at any level (issue 12, item 4).

One gateway at ``--log-level debug`` with every listener on (REST with the access log, gRPC, the admin API)
in front of an http backend with its own upstream key. Each secret is used through the listener that takes
it; the whole log is then searched for every one of them. hpack's debug log (every decoded header of every
gRPC call) and uvicorn's are part of what is searched.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import grpc
import httpx
import pytest
from xai_sdk.proto import chat_pb2, chat_pb2_grpc

from bench.capture import CaptureBackend
from tests.support.procs import DEMO_KEY, Proc, free_port, spawn_gateway
from tests.support.worlds import world

UPSTREAM_KEY = "sk-upstream-very-secret-0123"
ADMIN_KEY = "rg-admin-secret-key-0123456789"
CLIENT_SECRET = "client-password-abcdef"  # sent by a client as a bad key: must not be logged either


@pytest.fixture
def capture() -> Iterator[CaptureBackend]:
    backend = CaptureBackend().start()
    yield backend
    backend.stop()


def test_no_key_appears_in_a_debug_log(
    capture: CaptureBackend, tmp_path_factory: pytest.TempPathFactory
) -> None:
    spec = f'{{ kind = "http", url = "{capture.url}", metrics_url = "", api_key = "{UPSTREAM_KEY}" }}'
    grpc_port = free_port()
    gw: Proc = spawn_gateway(
        world({"us-east-1": [spec]}),
        tmp_path_factory.mktemp("logs"),
        args=["--log-level", "debug", "--access-log", "--grpc-port", str(grpc_port)],
        env={"REGIONGATE_ADMIN_KEY": ADMIN_KEY, "GRPC_VERBOSITY": "debug"},
    )
    try:
        with httpx.Client(timeout=30) as client:
            chat = {"model": "grok-4", "messages": [{"role": "user", "content": "hi"}]}
            r = client.post(
                gw.url + "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {DEMO_KEY}"}
            )
            assert r.status_code == 200, r.text
            r = client.post(
                gw.url + "/v1/chat/completions",
                json=chat,
                headers={"authorization": f"Bearer {CLIENT_SECRET}"},
            )
            assert r.status_code == 401
            r = client.get(gw.url + "/admin/teams", headers={"authorization": f"Bearer {ADMIN_KEY}"})
            assert r.status_code == 200, r.text
            r = client.post(gw.url + "/v1/%C4%80", json=chat, headers={"authorization": f"Bearer {DEMO_KEY}"})
            assert r.status_code == 404, r.text  # a non-Latin-1 path: refused, and in the access log
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = chat_pb2_grpc.ChatStub(channel)
            req = chat_pb2.GetCompletionsRequest(
                model="grok-4", messages=[chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[{"text": "hi"}])]
            )
            for key in (DEMO_KEY, CLIENT_SECRET):
                try:
                    stub.GetCompletion(req, metadata=(("authorization", f"Bearer {key}"),), timeout=30)
                except grpc.RpcError as e:
                    assert key == CLIENT_SECRET, e
        assert any(r.header(b"authorization") == f"Bearer {UPSTREAM_KEY}".encode() for r in capture.requests)
    finally:
        gw.proc.send_signal(signal.SIGINT)
        gw.proc.wait(30)
        gw.stop()
    out = gw.output()
    assert '"logger":"grpc' in out and '"level":"debug"' in out  # debug on, third-party loggers too
    assert '"path":"/v1/\u0100","status":404' in out or '"path":"/v1/Ā","status":404' in out
    for secret in (DEMO_KEY, UPSTREAM_KEY, ADMIN_KEY, CLIENT_SECRET):
        assert secret not in out, (
            f"{secret} in the log: ...{out[max(0, out.find(secret) - 300) : out.find(secret) + 100]}"
        )
