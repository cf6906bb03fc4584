"""What ``front.edge`` borrows from uvicorn's internals, named one by one, so that an upgrade that renames or
drops one fails here with its name rather than as a wrong answer on a socket.

``EdgeProtocol`` subclasses uvicorn's ``HttpToolsProtocol`` and ``EdgeCycle`` replaces its
``RequestResponseCycle`` without calling its ``__init__``: the module-level names imported, the protocol's
hooks overridden (and that uvicorn still calls them), the protocol attributes read, and every cycle
attribute uvicorn's own code that still runs reads (``run_asgi``, ``send_500_response``, the protocol's
``self.cycle.*`` outside the methods EdgeProtocol overrides) are checked against the installed uvicorn; pyproject pins the minor series these tests ran on."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from packaging.requirements import Requirement
from uvicorn.protocols.http import flow_control, httptools_impl
from uvicorn.server import ServerState

from regiongate.front.edge import EdgeCycle, EdgeLimits, EdgeProtocol, edge_protocol

ROOT = Path(__file__).resolve().parents[2]

# The module-level names front/edge.py imports from uvicorn.
MODULE_NAMES = {
    httptools_impl: ("HEADER_RE", "HEADER_VALUE_RE", "STATUS_LINE", "HttpToolsProtocol", "RequestResponseCycle"),
    flow_control: ("HIGH_WATER_LIMIT",),
}
# HttpToolsProtocol methods EdgeProtocol overrides or calls (uvicorn's parser and server call the hooks).
PROTOCOL_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_message_begin",
    "on_url",
    "on_header",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
    "_start_asgi_task",
    "_should_upgrade",
    "_unset_keepalive_if_required",
)
# HttpToolsProtocol attributes EdgeProtocol and EdgeCycle read (set by its __init__ or connection_made).
PROTOCOL_ATTRS = (
    "loop",
    "transport",
    "flow",
    "logger",
    "access_logger",
    "access_log",
    "server_state",
    "connections",
    "app",
    "app_state",
    "root_path",
    "asgi_version",
    "server",
    "client",
    "scheme",
    "parser",
    "pipeline",
    "cycle",
    "headers",
    "expect_100_continue",
    "timeout_keep_alive",
)
FLOW_ATTRS = ("resume_reading", "pause_reading", "write_paused", "drain")
SERVER_STATE_ATTRS = ("default_headers", "total_requests", "connections")


def test_the_installed_uvicorn_is_the_pinned_minor_series() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    req = next(Requirement(d) for d in deps if Requirement(d).name == "uvicorn")
    upper = [s for s in req.specifier if s.operator == "<"]
    assert upper, "pyproject must bound uvicorn above: front/edge.py reads its internals"
    assert importlib.metadata.version("uvicorn") in req.specifier


@pytest.mark.parametrize(
    ("module", "name"), [(m, n) for m, names in MODULE_NAMES.items() for n in names], ids=lambda x: str(x)
)
def test_the_module_names_edge_imports_exist(module: Any, name: str) -> None:
    assert hasattr(module, name), f"uvicorn {uvicorn.__version__}: {module.__name__}.{name} is gone"


def test_the_borrowed_values_keep_their_shape() -> None:
    assert httptools_impl.STATUS_LINE[200].startswith(b"HTTP/1.1 200 ")
    assert httptools_impl.STATUS_LINE[200].endswith(b"\r\n")
    assert httptools_impl.HEADER_RE.search(b"x a") and not httptools_impl.HEADER_RE.search(b"x-a")
    assert httptools_impl.HEADER_VALUE_RE.search(b"a\nb") and not httptools_impl.HEADER_VALUE_RE.search(b"a b")
    assert isinstance(flow_control.HIGH_WATER_LIMIT, int)


@pytest.mark.parametrize("name", PROTOCOL_METHODS)
def test_the_protocol_hooks_edge_overrides_exist(name: str) -> None:
    assert callable(getattr(httptools_impl.HttpToolsProtocol, name, None)), f"HttpToolsProtocol.{name} is gone"


def test_uvicorn_still_calls_the_keep_alive_hook_on_every_read() -> None:
    """EdgeProtocol moves the keep-alive wait onto its one timer through this hook."""
    src = inspect.getsource(httptools_impl.HttpToolsProtocol.data_received)
    assert "self._unset_keepalive_if_required()" in src


class _Transport:
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def _protocol() -> EdgeProtocol:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    config = uvicorn.Config(app, http="httptools", lifespan="off")
    config.load()
    cls = edge_protocol(EdgeLimits())
    return cls(config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop())


async def test_the_protocol_attributes_edge_reads_exist() -> None:
    proto = _protocol()
    proto.connection_made(_Transport())  # type: ignore[arg-type]
    try:
        missing = [a for a in PROTOCOL_ATTRS if not hasattr(proto, a)]
        assert not missing, f"uvicorn {uvicorn.__version__}: HttpToolsProtocol no longer sets {missing}"
        assert not [a for a in FLOW_ATTRS if not hasattr(proto.flow, a)]
        assert not [a for a in SERVER_STATE_ATTRS if not hasattr(proto.server_state, a)]
    finally:
        proto.connection_lost(None)


def _inherited(base: type, ours: type) -> list[Any]:
    """The functions of ``base`` that ``ours`` runs as they are (not overridden)."""
    return [fn for name, fn in vars(base).items() if inspect.isfunction(fn) and name not in vars(ours)]


def _self_attrs(fn: Any, prefix: str = "self.") -> set[str]:
    return set(re.findall(re.escape(prefix) + r"(\w+)", inspect.getsource(fn)))


async def test_every_cycle_attribute_uvicorn_reads_is_set_by_edge_cycle() -> None:
    """EdgeCycle does not call RequestResponseCycle.__init__: whatever uvicorn's inherited methods and the
    protocol read off a cycle must be set by EdgeCycle itself."""
    proto = _protocol()
    proto.connection_made(_Transport())  # type: ignore[arg-type]
    try:
        scope = {"method": "GET", "path": "/", "http_version": "1.1"}
        cycle = EdgeCycle(proto, scope, keep_alive=True)
        read: set[str] = set()
        for fn in _inherited(httptools_impl.RequestResponseCycle, EdgeCycle):
            read |= _self_attrs(fn)
        for fn in _inherited(httptools_impl.HttpToolsProtocol, EdgeProtocol):
            read |= _self_attrs(fn, "self.cycle.")
        assert {"run_asgi", "send_500_response"} <= {
            fn.__name__ for fn in _inherited(httptools_impl.RequestResponseCycle, EdgeCycle)
        }
        missing = sorted(a for a in read if not hasattr(cycle, a))
        assert not missing, f"uvicorn {uvicorn.__version__} reads cycle attributes EdgeCycle lacks: {missing}"
    finally:
        proto.connection_lost(None)
