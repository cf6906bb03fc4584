"""Recorded-protocol stand-ins for inference servers we cannot run here (no GPU, no weights): vLLM, SGLang
and llama-cpp-python's server, as asyncio HTTP/1.1 servers on loopback, each on its own event loop in a
thread of the test process (like ``tests.support.faults``), so a test scripts it and reads what it got.

They speak what each server's documentation and source say it speaks, including where it differs from
OpenAI; what they answer is deterministic text, not a model. API (all a test needs)::

    s = Standin("vllm", model="m").start()   # or the ``standin`` fixture: standin("sglang", model="m")
    s.url           # http://127.0.0.1:<port>/v1, for a [[deployments]] http backend
    s.received      # [Seen(method, path, headers, payload)]: every request, headers lower-cased
    s.posts(path)   # the POSTs to one path ("/v1/chat/completions" by default)
    s.fail(status, message, n=1)   # the next n generation requests answer status, in the server's shape
    s.hold()        # generation requests wait (after their head) until s.release(); s.busy: how many wait
    s.wait_busy()   # block until one waits (from a thread: ``await asyncio.to_thread(s.wait_busy)``)
    s.stop()
    Standin(..., no_usage=True)    # no usage in any answer, streamed or whole
    POISON          # a user message containing it gets a request-caused 500 from any server, every time

What differs by ``kind`` (the point of having three):

=========================  =================================  =================================  ===============================
                           ``vllm``                           ``sglang``                         ``llama-cpp-python`` (0.3.x)
=========================  =================================  =================================  ===============================
error body                 ``{"object": "error", "message",   same flat shape                    OpenAI's ``{"error": {...}}``
                           "type", "param", "code"}``
unknown model              404 ``NotFoundError``              400 ``BadRequestError``            answered anyway (one model)
``x-request-id``           any                                any                                UUID only, else 400, empty body
                                                                                                 (starlette-context RequestIdPlugin)
``max_completion_tokens``  honoured                           honoured                           ignored: only ``max_tokens``
``stream_options``         usage chunk if include_usage       usage chunk if include_usage       ignored: never a usage chunk
streamed tool calls        ``function.name`` once             ``function.name`` in every chunk   ``function.name`` once
``/health``                200, empty body                    200, empty body                    404 (no such route);
                                                                                                 ``/openapi.json`` answers (FastAPI)
``GET /v1/models``         answers                            answers                            waits while a generation runs
                                                                                                 (it takes the model lock)
``/metrics``               ``vllm:num_requests_running``,     ``sglang:num_running_reqs``,       404
                           ``vllm:num_requests_waiting``,     ``sglang:num_queue_reqs``,
                           ``vllm:kv_cache_usage_perc``       ``sglang:token_usage``
``single_slot=True``       --                                 --                                 -- (any kind: GETs wait while a
                                                                                                 generation runs, as llama-server
                                                                                                 with one HTTP thread does)
=========================  =================================  =================================  ===============================

Served by all three: ``POST /v1/chat/completions`` (plain, stream, ``n``, ``stop``, ``logprobs``, tools
and ``tool_choice`` auto / required / named / none, ``response_format`` json_object / json_schema),
``POST /v1/completions``, ``POST /v1/embeddings`` (``encoding_format`` float / base64), ``GET /v1/models``.
Not served (404 in the server's shape): ``/v1/responses`` and ``/v1/messages`` (use ``responses = "chat"``).

The answer is ``w0 w1 ... w<k-1>`` (one token per word, ``k`` = the honoured max tokens, at most
``Standin.tokens``), cut before the first ``stop`` string; usage counts words (prompt: words of the messages).
"""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import pytest

from tests.support.threaded import read_request, start_in_thread, stop_thread

Kind = Literal["vllm", "sglang", "llama-cpp-python"]
KINDS: tuple[Kind, ...] = ("vllm", "sglang", "llama-cpp-python")
POISON = "__standin_poison__"  # in a user message: a 500 caused by the request, on every server
GENERATION = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    payload: dict[str, Any] | None


@dataclass
class Standin:
    kind: Kind
    model: str = "m"
    tokens: int = 16  # the longest answer (llama-cpp-python without max_tokens: until this)
    single_slot: bool = False
    no_usage: bool = False  # never any usage, streamed or whole (a server or proxy that drops it)
    received: list[Seen] = field(default_factory=list)
    port: int = 0
    running: int = 0  # generations in progress (its /metrics reports them)
    _fails: list[tuple[int, str]] = field(default_factory=list)
    _held: asyncio.Event | None = None
    _waiting: int = 0
    _busy: threading.Event = field(default_factory=threading.Event)
    _idle: asyncio.Event | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None

    # --- scripting (from the test's thread) --------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def posts(self, path: str = "/v1/chat/completions") -> list[Seen]:
        with self._lock:
            return [r for r in self.received if r.method == "POST" and r.path == path]

    def fail(self, status: int, message: str = "injected failure", n: int = 1) -> None:
        with self._lock:
            self._fails.extend([(status, message)] * n)

    def hold(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._set_held, True)

    def release(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._set_held, False)

    @property
    def busy(self) -> int:
        return self._waiting

    def wait_busy(self, timeout: float = 10.0) -> None:
        if not self._busy.wait(timeout):
            raise TimeoutError("no generation request is waiting in the stand-in")

    def _set_held(self, on: bool) -> None:
        if on and self._held is None:
            self._held = asyncio.Event()
        elif not on and self._held is not None:
            self._held.set()
            self._held = None
            self._busy.clear()

    # --- lifecycle --------------------------------------------------------------------------------
    def _make_idle(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> Standin:
        assert self.kind in KINDS, self.kind
        start_in_thread(self, f"the {self.kind} stand-in", setup=self._make_idle)
        return self

    def stop(self) -> None:
        stop_thread(self)

    # --- HTTP/1.1 ---------------------------------------------------------------------------------
    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (req := await read_request(reader)) is not None:
                method, path, headers, body = req
                await self._request(method, path, headers, body, _Out(writer))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _request(self, method: str, path: str, headers: dict[str, str], body: bytes, out: _Out) -> None:
        payload: dict[str, Any] | None = None
        if method == "POST":
            try:
                loaded = orjson.loads(body)
                payload = loaded if isinstance(loaded, dict) else None
            except orjson.JSONDecodeError:
                payload = None
        with self._lock:
            self.received.append(Seen(method, path, headers, payload))
        rid = headers.get("x-request-id")
        if self.kind == "llama-cpp-python" and rid is not None and not _is_uuid(rid):
            await out.send(400, b"", "text/plain")  # starlette-context: "Wrong uuid", no body
            return
        if method == "GET":
            locked = self.kind == "llama-cpp-python" and path == "/v1/models"  # Depends(get_llama_proxy)
            if (self.single_slot or locked) and self._idle is not None:
                await self._idle.wait()  # busy with the generation
            await self._get(path, out)
            return
        if path not in GENERATION:
            await out.json(404, self._error(404, f"Not Found: {path}", "NotFoundError"))
            return
        if payload is None:
            await out.json(
                400, self._error(400, "Expecting value: line 1 column 1 (char 0)", "BadRequestError")
            )
            return
        self.running += 1
        if self._idle is not None:
            self._idle.clear()
        try:
            if self._held is not None:
                self._waiting += 1
                self._busy.set()
                try:
                    await self._held.wait()
                finally:
                    self._waiting -= 1
            await self._generate(path, payload, out)
        finally:
            self.running -= 1
            if self.running == 0 and self._idle is not None:
                self._idle.set()

    async def _get(self, path: str, out: _Out) -> None:
        if path == "/v1/models":
            card = {"id": self.model, "object": "model", "created": 1700000000, "owned_by": self.kind}
            await out.json(200, {"object": "list", "data": [card]})
        elif path == "/health" and self.kind != "llama-cpp-python":
            await out.send(200, b"", "application/json")
        elif path == "/openapi.json" and self.kind == "llama-cpp-python":
            await out.json(200, {"openapi": "3.1.0", "info": {"title": "🦙 llama.cpp Python API"}, "paths": {}})
        elif path == "/metrics" and self.kind != "llama-cpp-python":
            await out.send(200, self._metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            await out.json(404, self._error(404, f"Not Found: {path}", "NotFoundError"))

    def _metrics(self) -> str:
        lab = f'{{model_name="{self.model}"}}'
        if self.kind == "vllm":
            names = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
        else:
            names = ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage")
        values = (float(self.running - self._waiting), float(self._waiting), 0.01 * self.running)
        return "".join(f"# TYPE {n} gauge\n{n}{lab} {v}\n" for n, v in zip(names, values, strict=True))

    def _error(self, status: int, message: str, type_: str) -> dict[str, Any]:
        if self.kind == "llama-cpp-python":
            t = "internal_server_error" if status >= 500 else "invalid_request_error"
            return {"error": {"message": message, "type": t, "param": None, "code": None}}
        return {"object": "error", "message": message, "type": type_, "param": None, "code": status}

    # --- generation ------------------------------------------------------------------------------
    async def _generate(self, path: str, p: dict[str, Any], out: _Out) -> None:
        with self._lock:
            scripted = self._fails.pop(0) if self._fails else None
        if scripted is not None:
            status, message = scripted
            kind = "BadRequestError" if status < 500 else "InternalServerError"
            await out.json(status, self._error(status, message, kind))
            return
        if POISON in orjson.dumps(p.get("messages", p.get("prompt", p.get("input")))).decode():
            # What each server says when the request breaks it (a template or grammar it cannot build).
            await out.json(
                500, self._error(500, "poisoned request: cannot build the prompt", "InternalServerError")
            )
            return
        if p.get("model") != self.model and self.kind != "llama-cpp-python":
            msg = f"The model `{p.get('model')}` does not exist."
            status = 404 if self.kind == "vllm" else 400
            await out.json(
                status, self._error(status, msg, "NotFoundError" if status == 404 else "BadRequestError")
            )
            return
        if path == "/v1/embeddings":
            await out.json(200, self._embeddings(p))
            return
        chat = path == "/v1/chat/completions"
        answer = _Answer.of(self, p, chat)
        if p.get("stream") is True:
            await self._stream(p, answer, chat, out)
        else:
            await out.json(200, answer.whole())

    def _limit(self, p: dict[str, Any]) -> int:
        keys = ("max_tokens",) if self.kind == "llama-cpp-python" else ("max_completion_tokens", "max_tokens")
        for k in keys:
            v = p.get(k)
            if isinstance(v, int) and v > 0:
                return min(v, self.tokens)
        return self.tokens

    def _embeddings(self, p: dict[str, Any]) -> dict[str, Any]:
        inputs = p.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for i, item in enumerate(items):
            vec = [round(((len(str(item)) + i + j) % 7) / 7.0, 4) for j in range(8)]
            emb: Any = vec
            if p.get("encoding_format") == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(len(str(x).split()) for x in items)
        return {
            "object": "list",
            "data": data,
            "model": self.model,
            "usage": {"prompt_tokens": n, "total_tokens": n},
        }

    async def _stream(self, p: dict[str, Any], a: _Answer, chat: bool, out: _Out) -> None:
        opts = p.get("stream_options")
        usage = (
            self.kind != "llama-cpp-python" and isinstance(opts, dict) and opts.get("include_usage") is True
        )
        await out.stream_head()
        for event in a.events():
            await out.chunk(b"data: " + orjson.dumps(event) + b"\n\n")
        if usage and not self.no_usage:
            await out.chunk(b"data: " + orjson.dumps(a.frame([], a.usage())) + b"\n\n")
        await out.chunk(b"data: [DONE]\n\n")
        await out.chunk(b"")


@dataclass
class _Answer:
    """One deterministic answer to a chat or legacy completion request, whole or as stream events."""

    server: Standin
    payload: dict[str, Any]
    chat: bool
    texts: list[str]  # per choice index
    finish: list[str]
    tool: tuple[str, str] | None  # (name, arguments JSON) when the answer is a tool call
    prompt_tokens: int
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex[:12]}")

    @classmethod
    def of(cls, server: Standin, p: dict[str, Any], chat: bool) -> _Answer:
        limit = server._limit(p)
        words = [f"w{i}" for i in range(limit)]
        text = " ".join(words)
        fmt = p.get("response_format")
        if chat and isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            schema = (
                (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
            )
            text = orjson.dumps(
                _instance(schema if isinstance(schema, dict) else {"type": "object"})
            ).decode()
        finish = "length" if limit < server.tokens and not fmt else "stop"
        stops = p.get("stop")
        for s in [stops] if isinstance(stops, str) else stops if isinstance(stops, list) else []:
            if isinstance(s, str) and s and s in text:
                text, finish = text[: text.index(s)], "stop"
        tool = _tool_call(p) if chat else None
        n = p.get("n") if isinstance(p.get("n"), int) and p.get("n", 1) > 0 else 1
        source = p.get("messages") if chat else p.get("prompt")
        prompt = max(len(orjson.dumps(source).decode().split()), 1)
        finishes = ["tool_calls" if tool else finish] * n
        return cls(server, p, chat, [text] * n, finishes, tool, prompt)

    def usage(self) -> dict[str, int]:
        done = sum(len(t.split()) for t in self.texts) + (len(self.tool[1].split()) if self.tool else 0)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }

    def frame(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": ("chatcmpl-" if self.chat else "cmpl-") + self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.server.model,
            "choices": choices,
        }
        if usage is not None:
            obj["usage"] = usage
        return obj

    def _logprobs(self, text: str) -> dict[str, Any] | None:
        if not self.payload.get("logprobs"):
            return None
        return {
            "content": [
                {"token": w, "logprob": -0.25, "bytes": list(w.encode()), "top_logprobs": []}
                for w in text.split()
            ]
        }

    def whole(self) -> dict[str, Any]:
        choices = []
        for i, (text, fin) in enumerate(zip(self.texts, self.finish, strict=True)):
            if not self.chat:
                choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": fin})
                continue
            msg: dict[str, Any] = {"role": "assistant", "content": None if self.tool else text}
            if self.tool:
                call = {
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {"name": self.tool[0], "arguments": self.tool[1]},
                }
                msg["tool_calls"] = [call]
            choices.append(
                {"index": i, "message": msg, "logprobs": self._logprobs(text), "finish_reason": fin}
            )
        obj = self.frame(choices, None if self.server.no_usage else self.usage())
        obj["object"] = "chat.completion" if self.chat else "text_completion"
        return obj

    def events(self) -> Iterator[dict[str, Any]]:
        """Chunks interleaved over the choices, a word (or an arguments piece) at a time."""
        for i in range(len(self.texts)):
            if self.chat:
                yield self.frame(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
        if self.tool:
            name, args = self.tool
            pieces = [args[k : k + 8] for k in range(0, len(args), 8)] or [""]
            for k, piece in enumerate(pieces):
                for i in range(len(self.texts)):
                    fn: dict[str, Any] = {"arguments": piece}
                    call: dict[str, Any] = {"index": 0, "function": fn}
                    if k == 0:
                        call.update(id=f"call_{i}", type="function")
                    if k == 0 or self.server.kind == "sglang":  # SGLang repeats the name in every chunk
                        fn["name"] = name
                    yield self.frame(
                        [
                            {
                                "index": i,
                                "delta": {"tool_calls": [call]},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ]
                    )
        else:
            split = [t.split(" ") if t else [] for t in self.texts]
            for k in range(max((len(s) for s in split), default=0)):
                for i, parts in enumerate(split):
                    if k >= len(parts):
                        continue
                    piece = parts[k] if k == 0 else " " + parts[k]
                    if self.chat:
                        choice: dict[str, Any] = {
                            "index": i,
                            "delta": {"content": piece},
                            "logprobs": self._logprobs(parts[k]),
                            "finish_reason": None,
                        }
                    else:
                        choice = {"index": i, "text": piece, "logprobs": None, "finish_reason": None}
                    yield self.frame([choice])
        for i, fin in enumerate(self.finish):
            end: dict[str, Any] = {"index": i, "finish_reason": fin, "logprobs": None}
            end.update({"delta": {}} if self.chat else {"text": ""})
            yield self.frame([end])


def _tool_call(p: dict[str, Any]) -> tuple[str, str] | None:
    tools = [t for t in p.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    choice = p.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    fn = tools[0]["function"]
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name")
        fn = next((t["function"] for t in tools if t["function"].get("name") == named), fn)
    params = fn.get("parameters")
    return str(fn.get("name", "")), orjson.dumps(
        _instance(params if isinstance(params, dict) else {})
    ).decode()


def _instance(schema: dict[str, Any]) -> Any:
    """A small value that satisfies a JSON schema's common keywords (type, properties, required, enum)."""
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    t = schema.get("type", "object")
    t = t[0] if isinstance(t, list) and t else t
    if t == "object":
        props = schema.get("properties") or {}
        return {k: _instance(v if isinstance(v, dict) else {}) for k, v in props.items()}
    if t == "array":
        return []
    return {"string": "w0", "integer": 0, "number": 0, "boolean": True, "null": None}.get(str(t), "w0")


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class _Out:
    def __init__(self, w: asyncio.StreamWriter) -> None:
        self.w = w

    async def send(self, status: int, body: bytes, ctype: str) -> None:
        head = f"HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n"
        self.w.write(head.encode() + body)
        await self.w.drain()

    async def json(self, status: int, obj: Any) -> None:
        await self.send(status, orjson.dumps(obj), "application/json")

    async def stream_head(self) -> None:
        self.w.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        await self.w.drain()

    async def chunk(self, data: bytes) -> None:
        self.w.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await self.w.drain()


@pytest.fixture
def standin() -> Iterator[Callable[..., Standin]]:
    """Start stand-ins: ``standin("vllm", model="m", single_slot=False)``; all stopped after the test."""
    started: list[Standin] = []

    def start(kind: Kind, **kw: Any) -> Standin:
        s = Standin(kind, **kw).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
