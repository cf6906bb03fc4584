"""A small HTTP/1.1 load client for what wrk cannot see: time to first byte and chunks of a stream.

    python -m bench.probe URL --body '{"model":...,"stream":true}' [--conns 1] [--duration 2] [--requests N]

Each connection is keep-alive and sends its next request when the previous response has ended (closed
loop, like wrk). Responses are parsed by httptools (llhttp, C) on uvloop, so the client costs a few tens of
microseconds per request and per read; it runs in its own process, beside wrk when both are used. It prints
one JSON line: requests, errors, statuses, requests/s, p50/p99 of time to first body byte and of the whole
response (microseconds), and the median number of SSE events per response.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson


@dataclass
class Totals:
    ttfb_us: list[float] = field(default_factory=list)
    total_us: list[float] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    unfinished: int = 0  # responses still running when the drain time ran out (not errors)
    samples: list[bytes] = field(default_factory=list)  # the first response body (for --show)
    receipts: int = 0  # x-regiongate-receipt headers seen, and their distinct signatures (batching)
    signatures: set[bytes] = field(default_factory=set)
    counted_from: float = 0.0  # responses to requests sent before this (perf_counter) are not counted
    deadline: float = float("inf")  # no request is sent from this on


class Conn(asyncio.Protocol):
    def __init__(self, request: bytes, totals: Totals, budget: list[int], done: asyncio.Future[None]) -> None:
        self.request = request
        self.totals = totals
        self.budget = budget  # shared remaining request count ([-1]: unbounded)
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sent = 0.0
        self.first = 0.0
        self.nevents = 0
        self.tail = b""
        self.body: list[bytes] = []

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.totals.errors += 1
            self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if self.sent:
                self.totals.errors += 1
            self.done.set_result(None)

    def abort(self) -> None:
        """Give up on the response in flight (the drain time after the deadline ran out)."""
        if not self.done.done():
            self.totals.unfinished += 1
            self.done.set_result(None)
        if self.transport is not None:
            self.transport.abort()

    # --- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 20 and name.lower() == b"x-regiongate-receipt":
            self.totals.receipts += 1
            self.totals.signatures.add(value.rpartition(b".")[2])

    def on_body(self, body: bytes) -> None:
        if not self.first:
            self.first = time.perf_counter()
        scan = self.tail + body
        self.nevents += scan.count(b"\n\n")
        self.tail = scan[-1:]  # an event boundary split across two reads
        if not self.totals.samples:
            self.body.append(body)

    def on_message_complete(self) -> None:
        end = time.perf_counter()
        t = self.totals
        if self.sent < t.counted_from:  # still warming up: the connection goes on, nothing is counted
            self.body = []
            self._send()
            return
        status = self.parser.get_status_code()
        t.statuses[status] = t.statuses.get(status, 0) + 1
        t.ttfb_us.append(((self.first or end) - self.sent) * 1e6)
        t.total_us.append((end - self.sent) * 1e6)
        t.events.append(self.nevents)
        if not t.samples:
            t.samples.append(b"".join(self.body))
        self.body = []
        if not self.parser.should_keep_alive():
            self._finish()
            return
        self._send()

    def _send(self) -> None:
        if time.perf_counter() >= self.totals.deadline or self.budget[0] == 0:
            self._finish()
            return
        if self.budget[0] > 0:
            self.budget[0] -= 1
        self.first = 0.0
        self.nevents = 0
        self.tail = b""
        self.sent = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.request)

    def _finish(self) -> None:
        self.sent = 0.0
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)


def build_request(url: str, body: bytes, headers: list[str]) -> bytes:
    u = urlsplit(url)
    lines = [
        f"POST {u.path or '/'} HTTP/1.1",
        f"Host: {u.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100.0 * (len(s) - 1)))]


async def run(
    url: str,
    body: bytes,
    headers: list[str],
    conns: int,
    duration: float,
    requests: int,
    drain: float = 5.0,
    warm: float = 0.0,
    on_mark: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Closed loop on ``conns`` connections until ``duration`` (or ``requests``) is done; responses in flight
    at the deadline get ``drain`` more seconds (with a floor of the duration), then are abandoned. With
    ``warm`` the connections first run that many seconds uncounted (``on_mark`` is called as counting
    starts), so the window opens in steady state rather than on ``conns`` connections opened at once."""
    loop = asyncio.get_running_loop()
    u = urlsplit(url)
    request = build_request(url, body, headers)
    totals = Totals()
    budget = [requests if requests > 0 else -1]

    def open_window() -> None:
        # One instant for the caller's counters, the first counted send and the deadline: a window
        # computed ahead and a separate timer for the mark disagree by however late the timer fires.
        if warm > 0 and on_mark is not None:
            on_mark()
        totals.counted_from = time.perf_counter()
        if duration > 0:
            totals.deadline = totals.counted_from + duration

    if warm > 0:
        totals.counted_from = float("inf")
        loop.call_later(warm, open_window)
    else:
        open_window()
    waits, protos = [], []
    for _ in range(conns):
        done: asyncio.Future[None] = loop.create_future()
        try:
            _, proto = await loop.create_connection(
                lambda d=done: Conn(request, totals, budget, d),  # type: ignore[misc]
                u.hostname or "127.0.0.1",
                u.port or 80,
            )
            protos.append(proto)
        except OSError:
            totals.errors += 1
            done.set_result(None)
        waits.append(done)
    # A slow target must not stretch the run: what is still in flight after the drain time is abandoned.
    limit = warm + ((duration + max(drain, duration)) if duration > 0 else 60.0)
    _, pending = await asyncio.wait(waits, timeout=limit)
    if pending:
        for proto in protos:
            proto.abort()
    elapsed = max(0.0, time.perf_counter() - totals.counted_from)
    n = len(totals.total_us)
    return {
        "requests": n,
        "errors": totals.errors,
        "unfinished": totals.unfinished,
        "statuses": {str(k): v for k, v in totals.statuses.items()},
        "elapsed_s": elapsed,
        "rps": n / elapsed if elapsed > 0 else 0.0,
        "ttfb_p50_us": pct(totals.ttfb_us, 50),
        "ttfb_p99_us": pct(totals.ttfb_us, 99),
        "p50_us": pct(totals.total_us, 50),
        "p99_us": pct(totals.total_us, 99),
        "events": int(pct([float(e) for e in totals.events], 50)),
        "receipts": totals.receipts,
        "signatures": len(totals.signatures),
        "sample": totals.samples[0][:4000].decode("utf-8", "replace") if totals.samples else "",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--body", required=True)
    p.add_argument("-H", "--header", action="append", default=[])
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--duration", type=float, default=2.0, help="seconds (0: until --requests are done)")
    p.add_argument("--requests", type=int, default=0, help="stop after this many requests (0: no limit)")
    p.add_argument("--show", action="store_true", help="include the start of the first response body")
    args = p.parse_args()
    import uvloop

    out = uvloop.run(run(args.url, args.body.encode(), args.header, args.conns, args.duration, args.requests))
    if not args.show:
        out.pop("sample")
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    main()
