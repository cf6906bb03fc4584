"""Property-based fuzzing of the REST API from its OpenAPI document (schemathesis), through real HTTP on
loopback against a gateway process with fast simulated backends: no 5xx, answers that match the
document, no hang (each call has a timeout), and the process still alive at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from regiongate.rest.openapi import DOCUMENT
from tests.support.procs import DEMO_KEY, Proc, free_port, spawn, wait_http
from tests.support.scale import FAST_SIM, world

schema = schemathesis.openapi.from_dict(DOCUMENT)
EXAMPLES = 30  # per operation: bounded so the suite takes seconds
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp: Path = tmp_path_factory.mktemp("openapi")
    cfg = tmp / "gw.toml"
    cfg.write_text(world({"us-east-1": [FAST_SIM], "us-west-2": [FAST_SIM]}, limit=64))
    port, log = free_port(), tmp / "gw.log"
    args = ["serve", "--config", str(cfg), "--port", str(port), "--grpc-port", "0"]
    p = Proc(spawn(args, log, {"REGIONGATE_DEMO_API_KEY": DEMO_KEY}), port, log)
    wait_http(p.url + "/healthz", p.proc, log=log)
    yield p
    p.stop()


def test_the_served_document_is_the_one_fuzzed(gateway: Proc) -> None:
    r = httpx.get(gateway.url + "/openapi.json")
    assert r.status_code == 200
    assert r.json() == DOCUMENT


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_never_fails_on_fuzzed_input(case: schemathesis.Case, gateway: Proc) -> None:
    case.call_and_validate(
        base_url=gateway.url,
        headers={"Authorization": f"Bearer {DEMO_KEY}"},
        checks=CHECKS,
        timeout=10,
    )
    assert gateway.proc.poll() is None, "the gateway exited"
