"""The embedded simulated engine: behaves like one regional inference cluster.

It has a fixed number of concurrent sequence slots (more requests queue, which raises their time to first
token, as on a real server), a time to first token, a decode speed in tokens/s and an emulated network
round trip. Its text is deterministic, says it is simulated and names its region and model; ``usage`` is
exact for the text it produced. It counts running and waiting requests under vLLM's metric names.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from regiongate.upstream.base import UpstreamCall, UpstreamResponse

FILLER = [
    "regiongate",
    "routes",
    "each",
    "request",
    "to",
    "the",
    "region",
    "with",
    "the",
    "lowest",
    "latency",
    "that",
    "has",
    "capacity",
    "and",
    "keeps",
    "regional",
    "requests",
    "inside",
    "their",
    "region",
    "so",
    "that",
    "data",
    "stays",
    "where",
    "it",
    "must",
]
DEFAULT_MAX_TOKENS = 4096


def count_prompt_tokens(payload: dict[str, Any]) -> int:
    """About four characters a token, over every text part of every message (or the prompt)."""
    chars = 0
    messages = payload.get("messages")
    if isinstance(messages, list):
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        chars += len(part["text"])
            chars += 4  # role and framing
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    return max(1, (chars + 3) // 4)


def _max_tokens(payload: dict[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        v = payload.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return DEFAULT_MAX_TOKENS


class SimulatedEngine:
    """One simulated regional cluster; serves any model name it is asked for."""

    first_byte_timeout_s = 30.0
    base_url = None  # in this process: nothing to probe, load read directly
    first_byte_floor_s = 5.0
    first_byte_factor = 4.0
    idle_timeout_s = 60.0

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

    # --- text --------------------------------------------------------------------------------------
    def _tokens(self, model: str, payload: dict[str, Any]) -> tuple[list[str], str]:
        """The answer's tokens and finish reason. A request ending in an assistant message with
        ``continue_final_message`` (as vLLM takes it) continues that text: the same answer, after the
        words already there."""
        done = 0
        msgs = payload.get("messages")
        if (
            payload.get("continue_final_message") is True
            and isinstance(msgs, list)
            and msgs
            and isinstance(msgs[-1], dict)
            and msgs[-1].get("role") == "assistant"
        ):
            content = msgs[-1].get("content")
            done = len(content.split()) if isinstance(content, str) else 0
            payload = {**payload, "messages": msgs[:-1]}
        intro = f"This is a simulated reply from {model} in {self.region} ({self.region_name});"
        seed = zlib.crc32(orjson.dumps(payload.get("messages") or payload.get("prompt") or ""))
        natural = 24 + seed % 40
        n = min(natural, done + _max_tokens(payload))
        words = intro.split()
        words += [FILLER[i % len(FILLER)] for i in range(max(0, n - len(words)))]
        toks = [("" if i == 0 else " ") + w for i, w in enumerate(words[:n])][done:]
        if toks and n == natural:
            toks[-1] += "."
        return toks, ("stop" if n == natural else "length")

    def _usage(self, prompt: int, completion: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "text_tokens": prompt, "image_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

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
            return UpstreamResponse(200, "application/json", body=orjson.dumps(self.embed(call.payload)))
        if call.path not in ("/chat/completions", "/completions"):
            body = orjson.dumps(
                {
                    "error": {
                        "message": f"The simulated engine does not serve {call.path}; it serves "
                        "/v1/chat/completions and /v1/completions.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "unsupported_endpoint",
                    }
                }
            )
            return UpstreamResponse(404, "application/json", body=body)
        if call.stream:
            return UpstreamResponse(200, "text/event-stream", chunks=self.stream(call.payload))
        return UpstreamResponse(200, "application/json", body=orjson.dumps(await self.complete(call.payload)))

    async def complete(self, payload: dict[str, Any]) -> dict[str, Any]:
        model = str(payload.get("model", ""))
        toks, finish = self._tokens(model, payload)
        await asyncio.sleep(self.rtt_s)
        await self._admit()
        try:
            await asyncio.sleep(self.ttft_s + self.token_s * len(toks))
        finally:
            self._leave()
        prompt = count_prompt_tokens(payload)
        raw_n = payload.get("n")
        n = raw_n if isinstance(raw_n, int) and raw_n > 0 else 1
        text = "".join(toks)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": f"fp_sim_{self.region}",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for i in range(n)
            ],
            "usage": self._usage(prompt, len(toks) * n),
        }

    async def stream(self, payload: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        model = str(payload.get("model", ""))
        toks, finish = self._tokens(model, payload)
        opts = payload.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        fp = f"fp_sim_{self.region}"

        def event(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": fp,
                "choices": choices,
            }
            if usage is not None:
                obj["usage"] = usage
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        await asyncio.sleep(self.rtt_s)
        await self._admit()
        try:
            await asyncio.sleep(self.ttft_s)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i, tok in enumerate(toks):
                delta: dict[str, Any] = {"content": tok}
                if i == 0:
                    delta = {"role": "assistant", "content": tok}
                yield event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
                # Keep to the decode schedule without a timer per token when running behind.
                ahead = start + (i + 1) * self.token_s - loop.time()
                if ahead > 0.0005:
                    await asyncio.sleep(ahead)
                elif i % 64 == 63:
                    await asyncio.sleep(0)
            yield event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}])
            if include_usage:
                yield event([], self._usage(count_prompt_tokens(payload), len(toks)))
            yield b"data: [DONE]\n\n"
        finally:
            self._leave()

    def embed(self, payload: dict[str, Any], dims: int = 16) -> dict[str, Any]:
        """Deterministic unit vectors derived from each input's hash (no model runs)."""
        raw = payload.get("input")
        inputs = raw if isinstance(raw, list) else [raw]
        data = []
        for i, text in enumerate(inputs):
            seed = zlib.crc32(orjson.dumps(text))
            vec = [((seed >> (k % 32)) & 0xFF) / 255.0 - 0.5 for k in range(dims)]
            norm = sum(v * v for v in vec) ** 0.5 or 1.0
            data.append({"object": "embedding", "index": i, "embedding": [v / norm for v in vec]})
        tokens = sum(max(1, len(str(t)) // 4) for t in inputs)
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
