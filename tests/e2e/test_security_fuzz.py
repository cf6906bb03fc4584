"""Generated requests through the REST listener into a raw capture backend (issue 12, item 1).

The property (hypothesis): whatever path, header name and value a client sends, the backend sees at most
one request for it, well-formed and on an allow-listed path, on pooled connections; every answer reaches
the client that asked (a victim on a kept-alive connection gets its own marker back after each example);
and no answer is a 5xx. ``test_fuzz_run`` is the bounded CI form of ``python -m bench.fuzz``.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import fuzz
from bench.capture import CaptureBackend, RawClient, chat_request
from tests.support.procs import DEMO_KEY, Proc, spawn_gateway
from tests.support.worlds import capture_world

PATH_PIECES = st.sampled_from([*fuzz.PIECES, b"chat", b"completions", b"embeddings", b"/", b"v1", b"models"])
PATHS = st.builds(
    lambda parts, raw: b"/v1/" + b"".join(parts) + raw,
    st.lists(PATH_PIECES, max_size=6),
    st.binary(max_size=8).filter(lambda b: b" " not in b and b"\r" not in b and b"\n" not in b),
)
NAMES = st.one_of(
    st.sampled_from(fuzz.HEADER_NAMES),
    st.text("abcdefghijklmnopqrstuvwxyz-_!#$%&'*+.^`|~0123456789", min_size=1, max_size=20).map(str.encode),
    st.binary(min_size=1, max_size=12).filter(lambda b: b":" not in b and b"\r" not in b and b"\n" not in b),
)
VALUES = st.one_of(
    st.sampled_from(fuzz.HEADER_VALUES),
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
)


@pytest.fixture(scope="module")
def gateway(capture_backend: CaptureBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    gw = spawn_gateway(capture_world(capture_backend.url), tmp_path_factory.mktemp("gw"))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def victim(gateway: Proc, capture_backend: CaptureBackend) -> Iterator[RawClient]:
    """A client with valid requests on one kept-alive connection, asked after every example."""
    client = RawClient(gateway.port)
    yield client
    client.close()
    # Pooled: hundreds of examples shared a handful of upstream connections, not one each.
    assert capture_backend.connections <= 16, capture_backend.connections


_seq = count()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=PATHS, name=NAMES, value=VALUES)
def test_no_request_shape_reaches_the_backend_but_ours(
    gateway: Proc, capture_backend: CaptureBackend, victim: RawClient, path: bytes, name: bytes, value: bytes
) -> None:
    n = next(_seq)
    before = len(capture_backend.requests)
    marker = f"h-{n}"
    raw = chat_request(path, marker, key=DEMO_KEY, extra=name + b": " + value + b"\r\nconnection: close\r\n")
    client = RawClient(gateway.port, reset=True)
    a = client.send(raw)
    client.close()
    seen = capture_backend.requests[before:]
    if a is not None:
        assert a.status < 500, (path, name, value, a)
        if a.status == 200:
            assert a.content == marker and len(seen) == 1, (path, a, seen)
    assert len(seen) <= 1, (path, name, value, seen)
    assert capture_backend.bad() == [], (path, name, value)
    v = victim.send(chat_request(b"/v1/chat/completions", f"victim-{n}", key=DEMO_KEY))
    assert v is not None and v.status == 200 and v.content == f"victim-{n}", (path, name, value, v)


def test_fuzz_run() -> None:
    counts = fuzz.run(requests=2000, clients=3, seed=11)
    report = fuzz.report(counts)
    assert counts.ok, report
    assert counts.echoed > 200 and counts.victims > 100, report  # enough of it reached the backend
