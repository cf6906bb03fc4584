"""Per-backend dialects (regiongate/upstream/dialect.py): each server kind's defaults, overrides from the
config, and what the dialect does to the request id and body."""

from __future__ import annotations

import uuid

import orjson
import pytest

from regiongate.config import ConfigError, HttpBackend, parse_config
from regiongate.upstream import dialect
from regiongate.upstream.dialect import REQUEST_ID_NAMESPACE, Dialect
from tests.support.worlds import world


def _spec(extra: str) -> HttpBackend:
    cfg = parse_config(world({"us-east-1": [f'{{ kind = "http", url = "http://h:1/v1"{extra} }}']}))
    spec = cfg.deployments[0].backends[0]
    assert isinstance(spec, HttpBackend)
    return spec


def _of(extra: str) -> Dialect:
    return dialect.of(_spec(extra))


def test_defaults_per_server_kind() -> None:
    assert _of("") == Dialect("generic", "as-is", "as-is", None, True)
    assert _of(', server = "vllm"').probe_path == "/health"
    assert _of(', server = "llama.cpp"').probe_path == "/health"
    assert _of(', server = "openai"').request_id == "off"
    lcp = _of(', server = "llama-cpp-python"')
    assert (lcp.request_id, lcp.max_tokens, lcp.probe_path) == ("uuid", "max_tokens", "/openapi.json")
    assert _spec(', server = "llama-cpp-python"').responses_mode == "chat"  # it has no /v1/responses


def test_each_field_overrides_its_default() -> None:
    d = _of(
        ', server = "llama-cpp-python", request_id = "off", probe_path = "/health", busy_probe_grace = false'
    )
    assert (d.request_id, d.max_tokens, d.probe_path, d.busy_probe_grace) == (
        "off",
        "max_tokens",
        "/health",
        False,
    )


@pytest.mark.parametrize(
    "bad", [', server = "tgi"', ', request_id = "random"', ', probe_path = "health"', ', probe_path = "/a b"']
)
def test_bad_values_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        _spec(bad)


def test_request_id_modes() -> None:
    assert Dialect(request_id="as-is").request_id_value("req_1") == "req_1"
    assert Dialect(request_id="off").request_id_value("req_1") is None
    derived = Dialect(request_id="uuid").request_id_value("req_1")
    assert derived == str(uuid.uuid5(REQUEST_ID_NAMESPACE, "req_1")) and uuid.UUID(derived or "")


def test_max_completion_tokens_mapping() -> None:
    d = Dialect(max_tokens="max_tokens")
    body = orjson.dumps({"model": "m", "max_completion_tokens": 3})
    assert orjson.loads(d.body(orjson.loads(body), body)) == {"model": "m", "max_tokens": 3}
    both = {"model": "m", "max_completion_tokens": 3, "max_tokens": 7}
    assert orjson.loads(d.body(both, orjson.dumps(both))) == {"model": "m", "max_tokens": 7}
    plain = orjson.dumps({"model": "m", "max_tokens": 3})
    assert d.body(orjson.loads(plain), plain) is plain, "nothing to rename: the same bytes"
    assert Dialect().body({"max_completion_tokens": 3}, b"x") == b"x"
