"""A fault-injection upstream for tests: an OpenAI-compatible HTTP/1.1 server on loopback whose behaviour is
chosen per request (a queue of faults consumed in order) or per model, run on its own event loop in a
thread of the test process, so a test scripts it directly and reads what it received.

Its answer is deterministic: ``t0 t1 ... t59`` (``tokens`` words, one per event), so a test can compare a
continued answer with the uninterrupted one word for word. A request whose last message (Responses: last
input item) is the assistant's is a prefill: the server continues the same answer after the words already
there (as vLLM with ``continue_final_message``, llama.cpp with an assistant prefill, or a provider with
``prefix: true`` do), unless told to refuse it. Chat, Responses and Messages streams are served.

Faults (``Fault.kind``): ``ok``, ``cut`` (connection closed after ``at`` tokens), ``stall`` (silent after
``at`` tokens, connection open; for ``seconds`` when given, then it goes on; these two in chat and Responses streams),
``malformed`` (an event that is not JSON before token ``at``), ``no_done``
(finish_reason sent, then the chunked body ends without ``[DONE]``), ``slow_first`` (``seconds`` before the
head), ``status`` (``status`` with an OpenAI error body, optional ``retry_after`` / ``retry_after_ms``
headers), ``reset`` (TCP reset before any response byte), ``never`` (reads the request, never answers),
``hold_close`` (reads it, is silent for ``seconds``, then closes), ``refuse_prefill`` (400 to a prefill,
else ``ok``), ``error_event`` (an in-band error event after ``at`` tokens, then [DONE]), ``gate`` (reads
it, answers ``ok`` once the test sets ``gate``, a ``threading.Event``: a slow first token without a clock),
``hold`` (a chat stream that stops after ``at`` tokens until ``gate`` is set: a long stream without a clock).
``flap(seconds)`` answers 503 to everything for that long.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from xai_sdk import Client
from xai_sdk.chat import user

from tests.support.procs import DEMO_KEY, Proc, free_port
from tests.support.threaded import read_request, start_in_thread, stop_thread

TOKENS = 60
WHOLE = "".join(("" if i == 0 else " ") + f"t{i}" for i in range(TOKENS))  # the uninterrupted answer


@dataclass(frozen=True)
class Fault:
    kind: str = "ok"
    at: int = 0
    seconds: float = 0.0
    status: int = 500
    retry_after: str | None = None
    retry_after_ms: str | None = None
    gate: threading.Event | None = None  # for ``gate``


@dataclass
class Received:
    path: str
    payload: dict[str, Any]
    at: float  # time.monotonic() when the request had been read
    fault: Fault


@dataclass
class FaultServer:
    region: str = "fault"
    tokens: int = TOKENS
    token_delay_s: float = 0.0
    default: Fault = field(default_factory=Fault)
    by_model: dict[str, Fault] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _queue: deque[Fault] = field(default_factory=deque)
    _down_until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None

    # --- scripting (from the test's thread) --------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *faults: Fault) -> None:
        """The next requests get these faults, in order; then ``by_model`` / ``default`` again."""
        with self._lock:
            self._queue.extend(faults)

    def flap(self, seconds: float) -> None:
        with self._lock:
            self._down_until = time.monotonic() + seconds

    def posts(self, path: str = "/v1/chat/completions") -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def _choose(self, model: str) -> Fault:
        with self._lock:
            if time.monotonic() < self._down_until:
                return Fault("status", status=503)
            if self._queue:
                return self._queue.popleft()
        return self.by_model.get(model, self.default)

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> FaultServer:
        start_in_thread(self, f"the fault server of {self.region}")
        return self

    def stop(self) -> None:
        stop_thread(self)

    # --- HTTP/1.1 ---------------------------------------------------------------------------------
    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while (req := await read_request(reader)) is not None:
                method, path, _headers, body = req
                if not await self._request(method, path, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the server is stopping
        finally:
            writer.close()

    async def _request(self, method: str, path: str, body: bytes, w: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is to be dropped."""
        if method == "GET":
            if path.endswith("/models"):
                await _send_json(w, 200, {"object": "list", "data": []})
            else:
                await _send_json(w, 200 if path in ("/health", "/v1/health") else 404, {"status": "ok"})
            return True
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            await _send_json(w, 400, _error("invalid JSON"))
            return True
        fault = self._choose(str(payload.get("model", "")))
        with self._lock:
            self.received.append(Received(path, payload, time.monotonic(), fault))
        kind = fault.kind
        if kind == "slow_first":
            await asyncio.sleep(fault.seconds)
        elif kind == "gate":
            assert fault.gate is not None
            while not fault.gate.is_set():  # noqa: ASYNC110 (a threading.Event, set from the test)
                await asyncio.sleep(0.005)
        elif kind == "never":
            await asyncio.Event().wait()
        elif kind == "hold_close":
            await asyncio.sleep(fault.seconds)
            return False
        elif kind == "reset":
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
            return False
        elif kind == "status":
            extra = []
            if fault.retry_after is not None:
                extra.append(("retry-after", fault.retry_after))
            if fault.retry_after_ms is not None:
                extra.append(("retry-after-ms", fault.retry_after_ms))
            await _send_json(w, fault.status, _error(f"injected HTTP {fault.status}"), extra)
            return True
        prefill = _prefill(payload)
        if prefill is not None and kind == "refuse_prefill":
            await _send_json(w, 400, _error("this server cannot continue an assistant message"))
            return True
        start = len(prefill.split()) if prefill else 0
        if path.endswith("/responses"):
            return await self._responses(payload, fault, start, w)
        if path.endswith("/messages"):
            return await self._messages(payload, fault, start, w)
        if payload.get("stream") is not True:
            words = self._words(payload, start)
            text = "".join(words)
            await _send_json(w, 200, _completion(payload, text, len(words)))
            return True
        return await self._chat_stream(payload, fault, start, w)

    def _words(self, payload: dict[str, Any], start: int) -> list[str]:
        limit = (
            payload.get("max_tokens")
            or payload.get("max_completion_tokens")
            or payload.get("max_output_tokens")
            or self.tokens
        )
        end = min(self.tokens, start + int(limit))
        return [("" if i == 0 else " ") + f"t{i}" for i in range(start, end)]

    async def _chat_stream(
        self, payload: dict[str, Any], fault: Fault, start: int, w: asyncio.StreamWriter
    ) -> bool:
        words = self._words(payload, start)
        opts = payload.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        cid, created, model = f"chatcmpl-fault-{id(payload):x}", int(time.time()), payload.get("model")

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if usage is not None:
                obj["usage"] = usage
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        await _stream_head(w)
        for i, word in enumerate(words):
            if fault.kind in ("cut", "stall", "malformed", "error_event", "hold") and i == fault.at:
                if fault.kind == "hold":
                    assert fault.gate is not None
                    while not fault.gate.is_set():  # noqa: ASYNC110 (a threading.Event, set from the test)
                        await asyncio.sleep(0.005)
                if fault.kind == "cut":
                    await _chunk(w, b'data: {"id": "' + cid.encode())  # cut mid-event, no end of body
                    return False
                if fault.kind == "stall":  # for ``seconds`` (then the answer goes on), else for good
                    await (asyncio.sleep(fault.seconds) if fault.seconds else asyncio.Event().wait())
                if fault.kind == "malformed":
                    await _chunk(w, b"data: {this is not json\n\n")
                if fault.kind == "error_event":
                    err = _error("injected in-band failure", "server_error")
                    await _chunk(w, b"data: " + orjson.dumps(err) + b"\n\ndata: [DONE]\n\n")
                    await _chunk(w, b"")
                    return True
            delta: dict[str, Any] = {"content": word}
            if i == 0:
                delta["role"] = "assistant"
            await _chunk(w, chunk([{"index": 0, "delta": delta, "finish_reason": None}]))
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
        finish = "stop" if start + len(words) >= self.tokens else "length"
        await _chunk(w, chunk([{"index": 0, "delta": {}, "finish_reason": finish}]))
        if include_usage:
            prompt = _prompt_tokens(payload)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": len(words),
                "total_tokens": prompt + len(words),
            }
            await _chunk(w, chunk([], usage))
        if fault.kind != "no_done":
            await _chunk(w, b"data: [DONE]\n\n")
        await _chunk(w, b"")
        return True

    async def _responses(
        self, payload: dict[str, Any], fault: Fault, start: int, w: asyncio.StreamWriter
    ) -> bool:
        words = self._words(payload, start)
        rid = f"resp_fault{id(payload):x}"
        text = "".join(words)
        usage = {"input_tokens": 3, "output_tokens": len(words), "total_tokens": 3 + len(words)}
        response = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "model": payload.get("model"),
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage,
        }
        if payload.get("stream") is not True:
            await _send_json(w, 200, response)
            return True
        seq = 0

        def ev(obj: dict[str, Any]) -> bytes:
            nonlocal seq
            obj["sequence_number"] = seq
            seq += 1
            return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

        await _stream_head(w)
        # The OpenAI stream's shape: the item and its part opened, text deltas, each closed, the response.
        await _chunk(
            w,
            ev({"type": "response.created", "response": {**response, "status": "in_progress", "output": []}}),
        )
        item = {**response["output"][0], "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
        await _chunk(w, ev({"type": "response.output_item.added", "output_index": 0, "item": item}))
        await _chunk(w, ev({"type": "response.content_part.added", **where, "part": part}))
        for i, word in enumerate(words):
            if fault.kind in ("cut", "stall") and i == fault.at:
                if fault.kind == "cut":
                    await _chunk(w, b"event: response.output_text.delta\ndata: {")  # cut mid-event
                    return False
                await (asyncio.sleep(fault.seconds) if fault.seconds else asyncio.Event().wait())
            delta = {"type": "response.output_text.delta", **where, "delta": word, "logprobs": []}
            await _chunk(w, ev(delta))
        await _chunk(w, ev({"type": "response.output_text.done", **where, "text": text, "logprobs": []}))
        await _chunk(w, ev({"type": "response.content_part.done", **where, "part": {**part, "text": text}}))
        done = response["output"][0]
        await _chunk(w, ev({"type": "response.output_item.done", "output_index": 0, "item": done}))
        await _chunk(w, ev({"type": "response.completed", "response": response}))
        await _chunk(w, b"")
        return True

    async def _messages(
        self, payload: dict[str, Any], fault: Fault, start: int, w: asyncio.StreamWriter
    ) -> bool:
        words = self._words(payload, start)
        mid = f"msg_fault{id(payload):x}"
        if payload.get("stream") is not True:
            await _send_json(
                w,
                200,
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": payload.get("model"),
                    "content": [{"type": "text", "text": "".join(words)}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 3, "output_tokens": len(words)},
                },
            )
            return True

        def ev(obj: dict[str, Any]) -> bytes:
            return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

        await _stream_head(w)
        message = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": payload.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 0},
        }
        await _chunk(w, ev({"type": "message_start", "message": message}))
        await _chunk(
            w, ev({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        )
        for i, word in enumerate(words):
            if fault.kind == "cut" and i == fault.at:
                return False
            delta = {"type": "text_delta", "text": word}
            await _chunk(w, ev({"type": "content_block_delta", "index": 0, "delta": delta}))
        await _chunk(w, ev({"type": "content_block_stop", "index": 0}))
        await _chunk(
            w,
            ev(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": len(words)},
                }
            ),
        )
        await _chunk(w, ev({"type": "message_stop"}))
        await _chunk(w, b"")
        return True


def _prefill(payload: dict[str, Any]) -> str | None:
    msgs = payload.get("messages")
    if isinstance(payload.get("input"), list):  # the Responses API: a final assistant input item
        msgs = payload["input"]
    if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
        content = msgs[-1].get("content")
        return content if isinstance(content, str) else ""
    return None


def _prompt_tokens(payload: dict[str, Any]) -> int:
    msgs = payload.get("messages")
    return len(orjson.dumps(msgs)) // 4 if msgs else 1


def _error(message: str, type: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": None, "code": None}}


def _completion(payload: dict[str, Any], text: str, n: int) -> dict[str, Any]:
    prompt = _prompt_tokens(payload)
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": payload.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n},
    }


async def _send_json(
    w: asyncio.StreamWriter, status: int, obj: Any, extra: list[tuple[str, str]] | None = None
) -> None:
    body = orjson.dumps(obj)
    head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in extra or [])
    w.write(head.encode() + b"\r\n" + body)
    await w.drain()


async def _stream_head(w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    await w.drain()


async def _chunk(w: asyncio.StreamWriter, data: bytes) -> None:
    """One chunk of a chunked body; the empty chunk ends the body."""
    w.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await w.drain()


# --- clients the fault tests share ---------------------------------------------------------------
def grpc_gateway(start_gateway: Callable[..., Proc], config: str) -> tuple[Proc, Client]:
    port = free_port()
    gw = start_gateway(config, args=["--grpc-port", str(port)])
    return gw, Client(api_key=DEMO_KEY, api_host=f"localhost:{port}")


def grpc_text(c: Client) -> tuple[str, Any]:
    chat = c.chat.create(model="grok-4")
    chat.append(user("hello"))
    last, pieces = None, []
    for resp, chunk in chat.stream():
        last = resp
        pieces.append(chunk.content)
    return "".join(pieces), last


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A fault-injection upstream (see ``FaultServer``); more with ``fault_servers``."""
    server = FaultServer().start()
    yield server
    server.stop()


@pytest.fixture
def fault_servers() -> Iterator[list[FaultServer]]:
    """Three fault-injection upstreams, for worlds of several regions or backends."""
    servers = [FaultServer(region=f"f{i}").start() for i in range(3)]
    yield servers
    for s in servers:
        s.stop()
