"""bench.probe's warm start (the benchmark's ``steady`` rows): the connections run uncounted first, and
only requests sent after the mark are in the result. Against the benchmark's own fake upstream, in
one event loop; what is asserted is bookkeeping, never a time."""

from __future__ import annotations

import asyncio
import time

from bench import probe
from bench.upstream import Answers, HttpProtocol

BODY = b'{"model":"bench-0ms","messages":[{"role":"user","content":"hi"}],"max_tokens":4}'
CONNS = 4


class Counted(Answers):
    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []

    def get(self, body: bytes) -> tuple[float, list[bytes]] | None:
        self.arrivals.append(time.perf_counter())
        return super().get(body)


async def _run(warm: float) -> tuple[dict[str, object], Counted, list[float]]:
    answers = Counted()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(answers, "soon"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    marks: list[float] = []
    try:
        r = await probe.run(
            f"http://127.0.0.1:{port}/v1/chat/completions", BODY, [], CONNS, 0.2, 0, warm=warm,
            on_mark=lambda: marks.append(time.perf_counter()),
        )
    finally:
        server.close()
    return r, answers, marks


def test_warm_requests_are_not_counted() -> None:
    r, answers, marks = asyncio.run(_run(0.2))
    assert len(marks) == 1  # the caller reads its counters once, as the counted window opens
    before = sum(1 for t in answers.arrivals if t < marks[0])
    after = len(answers.arrivals) - before
    assert before > 0  # the warm-up ran on the same connections
    # Counted: requests sent after the mark. One per connection may have been sent just before it and
    # arrived after; none sent before it is counted.
    assert after - CONNS <= r["requests"] <= after
    assert r["errors"] == 0 and r["statuses"] == {"200": r["requests"]}


def test_without_warm_every_request_counts() -> None:
    r, answers, marks = asyncio.run(_run(0.0))
    assert marks == []  # no warm-up, no mark: the caller read its counters before
    assert r["requests"] == len(answers.arrivals)
