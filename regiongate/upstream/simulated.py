"""The embedded simulated engine: behaves like one regional inference cluster.

It has a fixed number of concurrent sequence slots (more requests queue, which raises their time to first
token, as on a real server), a time to first token, a decode speed in tokens/s and an emulated network
round trip. Its text is deterministic, says it is simulated and names its region and model; ``usage`` is
exact for the text it produced. It counts running and waiting requests under vLLM's metric names.

It speaks the APIs clients call (``DIALECTS``): chat and legacy completions (``sim_openai``), the Responses
API (``sim_responses``), Anthropic messages (``sim_messages``) and embeddings (floats or base64, any
``dimensions``). What a request asks for (``n``, ``stop``, logprobs, tools, a JSON schema) is honoured by
``sim_reply``; a request it cannot answer gets a 400 in its API's error shape, as from a real server.
"""

from __future__ import annotations

import asyncio
import base64
import random
import struct
import time
from collections.abc import AsyncGenerator, Iterator
from typing import Any, Protocol

import orjson

from regiongate.upstream.base import UpstreamCall, UpstreamResponse
from regiongate.upstream.sim_messages import Messages
from regiongate.upstream.sim_openai import Chat, Legacy, openai_error
from regiongate.upstream.sim_reply import Ask, BadRequest, Turn, reply, seed_of
from regiongate.upstream.sim_responses import Responses
from regiongate.upstream.simulated_media import MEDIA_PATHS, media

EMBEDDING_DIMS = 16  # without ``dimensions``: small, the vectors carry no meaning anyway
MAX_EMBEDDING_DIMS = 4096


class Dialect(Protocol):
    """One API the engine speaks: how it reads a request, renders an answer, a stream and an error."""

    path: str

    def ask(self, payload: dict[str, Any]) -> Ask: ...

    def body(self, turn: Turn) -> dict[str, Any]: ...

    def events(self, turn: Turn) -> Iterator[bytes]: ...  # one blob of SSE bytes per decode step

    def error(self, message: str, param: str | None) -> dict[str, Any]: ...


DIALECTS: dict[str, Dialect] = {d.path: d for d in (Chat(), Legacy(), Responses(), Messages())}
SERVED = ", ".join(f"/v1{p}" for p in [*DIALECTS, "/embeddings", *MEDIA_PATHS])


def count_prompt_tokens(payload: dict[str, Any]) -> int:
    """About four characters a token, over every text part of every message, prompt, input or system text."""
    chars = 0
    for name in ("messages", "input"):
        items = payload.get(name)
        if isinstance(items, str):
            chars += len(items)
        elif isinstance(items, list):
            for m in items:
                chars += _chars(m.get("content") if isinstance(m, dict) else m) + 4  # role and framing
    for name in ("prompt", "system", "instructions"):
        chars += _chars(payload.get(name))
    return max(1, (chars + 3) // 4)


def _chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_chars(p.get("text") if isinstance(p, dict) else p) for p in content)
    return 4 if isinstance(content, int) else 0  # a token id of a legacy prompt


class SimulatedEngine:
    """One simulated regional cluster; serves any model name it is asked for."""

    first_byte_timeout_s = 30.0
    base_url = None  # in this process: nothing to probe, load read directly
    first_byte_floor_s = 5.0
    first_byte_factor = 4.0
    idle_timeout_s = 30.0

    def __init__(
        self,
        id: str,
        region: str,
        region_name: str = "",
        *,
        ttft_ms: float = 80.0,
        tokens_per_s: float = 100.0,
        slots: int = 8,
        rtt_ms: float = 0.0,
    ) -> None:
        self.id = id
        self.region = region
        self.region_name = region_name or region
        self.ttft_s = ttft_ms / 1000.0
        self.token_s = 1.0 / tokens_per_s
        self.rtt_s = rtt_ms / 1000.0
        self.slots = slots
        self._sem = asyncio.Semaphore(slots)
        self.running = 0
        self.waiting = 0
        self.served = 0
        self.peak_running = 0

    def turn(self, dialect: Dialect, payload: dict[str, Any]) -> Turn:
        """The answer to ``payload`` (BadRequest when it cannot be answered), before any time has passed.
        A chat request ending in an assistant message with ``continue_final_message`` (as vLLM takes it)
        continues that text: the same answer as without it, after the words already there."""
        asked, done = _continued(payload)
        ask = dialect.ask(asked)
        ask.max_tokens += done
        intro = f"This is a simulated reply from {ask.model} in {self.region} ({self.region_name});"
        choices = reply(ask, intro)
        if done:
            for c in choices:
                c.tokens = c.tokens[done:]
                c.text = "".join(c.tokens)
        return Turn(
            ask,
            choices,
            payload,
            count_prompt_tokens(payload),
            f"fp_sim_{self.region}",
            int(time.time()),
        )

    # --- scheduling ----------------------------------------------------------------------------------
    async def _admit(self) -> None:
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)

    def _leave(self) -> None:
        self.running -= 1
        self.served += 1
        self._sem.release()

    # --- the Upstream protocol ---------------------------------------------------------------------
    async def send(self, call: UpstreamCall) -> UpstreamResponse:
        if call.path == "/embeddings":
            await asyncio.sleep(self.rtt_s)
            try:
                return _json(200, self.embed(call.payload))
            except BadRequest as e:
                return _json(400, openai_error(str(e), e.param))
        if call.path in MEDIA_PATHS:  # tokenizer, images, video: simulated_media.py
            await asyncio.sleep(self.rtt_s + (self.ttft_s if call.path != "/tokenize" else 0.0))
            return _json(200, media(call.path, call.payload, self.region))
        dialect = DIALECTS.get(call.path)
        if dialect is None:
            message = f"The simulated engine does not serve {call.path}; it serves {SERVED}."
            return _json(404, openai_error(message, None, "unsupported_endpoint"))
        try:
            turn = self.turn(dialect, call.payload)
        except BadRequest as e:
            return _json(400, dialect.error(str(e), e.param))
        if call.stream:
            return UpstreamResponse(200, "text/event-stream", chunks=self._paced(dialect.events(turn)))
        await self._generate(turn.steps)
        return _json(200, dialect.body(turn))

    async def _generate(self, steps: int) -> None:
        await asyncio.sleep(self.rtt_s)
        await self._admit()
        try:
            await asyncio.sleep(self.ttft_s + self.token_s * steps)
        finally:
            self._leave()

    async def _paced(self, steps: Iterator[bytes]) -> AsyncGenerator[bytes, None]:
        """Each decode step's events on the decode schedule, holding a slot from admission to the end."""
        await asyncio.sleep(self.rtt_s)
        await self._admit()
        try:
            await asyncio.sleep(self.ttft_s)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i, blob in enumerate(steps):
                yield blob
                # Keep to the decode schedule without a timer per token when running behind.
                ahead = start + (i + 1) * self.token_s - loop.time()
                if ahead > 0.0005:
                    await asyncio.sleep(ahead)
                elif i % 64 == 63:
                    await asyncio.sleep(0)
        finally:
            self._leave()

    def embed(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Deterministic unit vectors seeded by each input (no model runs), as floats or base64 of float32."""
        inputs = _embedding_inputs(payload.get("input"))
        fmt = payload.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise BadRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
        dims = payload.get("dimensions", EMBEDDING_DIMS)
        if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= MAX_EMBEDDING_DIMS:
            raise BadRequest(f"'dimensions' must be an integer from 1 to {MAX_EMBEDDING_DIMS}.", "dimensions")
        data = []
        for i, item in enumerate(inputs):
            rng = random.Random(seed_of(item))
            vec = [rng.random() - 0.5 for _ in range(dims)]
            norm = sum(v * v for v in vec) ** 0.5 or 1.0
            unit = [v / norm for v in vec]
            emb: list[float] | str = unit
            if fmt == "base64":
                emb = base64.b64encode(struct.pack(f"<{dims}f", *unit)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(len(t) if isinstance(t, list) else max(1, len(str(t)) // 4) for t in inputs)
        return {
            "object": "list",
            "data": data,
            "model": str(payload.get("model", "")),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def probe(self, path: str, timeout_s: float) -> bool:
        return True

    def metrics_text(self, model: str) -> str:
        """vLLM-named gauges, so the gateway scrapes a simulated cluster exactly as a real one."""
        labels = f'model_name="{model}"'
        return (
            f"vllm:num_requests_running{{{labels}}} {self.running}\n"
            f"vllm:num_requests_waiting{{{labels}}} {self.waiting}\n"
            f"vllm:kv_cache_usage_perc{{{labels}}} {self.running / self.slots:.4f}\n"
        )

    async def aclose(self) -> None:
        return None


def _json(status: int, obj: dict[str, Any]) -> UpstreamResponse:
    return UpstreamResponse(status, "application/json", body=orjson.dumps(obj))


def _embedding_inputs(raw: Any) -> list[Any]:
    """A string, strings, a token array or token arrays, as the embeddings API takes them."""
    if isinstance(raw, str) and raw:
        return [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(t, str) and t for t in raw) or all(isinstance(t, list) and t for t in raw):
            return list(raw)
        if all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
            return [raw]
    raise BadRequest("'input' must be a non-empty string, array of strings, or token array(s).", "input")


def _continued(payload: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The request without the assistant text it asks to continue, and how many words that text has."""
    msgs = payload.get("messages")
    if (
        payload.get("continue_final_message") is not True
        or not isinstance(msgs, list)
        or not msgs
        or not isinstance(msgs[-1], dict)
        or msgs[-1].get("role") != "assistant"
    ):
        return payload, 0
    content = msgs[-1].get("content")
    done = len(content.split()) if isinstance(content, str) else 0
    return {**payload, "messages": msgs[:-1]}, done
