"""The simulated engine's tokenizer and image generator (kept apart from its chat engine).

``tokenize`` answers like vLLM's ``POST /tokenize`` (``tokens``, ``count``, ``max_model_len``,
``token_strs``): one token per word piece, ids from a hash, so the same text always gives the same ids.
``generate_images`` answers like ``POST /v1/images/generations``: small solid-colour PNGs whose colour
comes from the prompt, as ``b64_json`` or as a ``data:`` URL. ``generate_video`` answers
``POST /v1/videos/generations`` (and ``/extensions``) synchronously with a ``video`` whose URL is a
``data:`` URL of a text note: nothing is rendered, the engine only says what it would have made.
"""

from __future__ import annotations

import base64
import re
import struct
import time
import zlib
from typing import Any

MAX_MODEL_LEN = 131072
# The routes these functions answer (below /v1, but /tokenize sits at a server's root as on vLLM).
MEDIA_PATHS = ("/tokenize", "/images/generations", "/videos/generations", "/videos/extensions")
_PIECES = re.compile(r"\s*\S+|\s+")


def tokenize(payload: dict[str, Any]) -> dict[str, Any]:
    raw = payload.get("prompt", payload.get("content", ""))
    text = raw if isinstance(raw, str) else ""
    pieces = _PIECES.findall(text)
    ids = [zlib.crc32(p.encode()) % 100_000 for p in pieces]
    return {"count": len(ids), "max_model_len": MAX_MODEL_LEN, "tokens": ids, "token_strs": pieces}


def _png(rgb: tuple[int, int, int], size: int = 8) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * size))
        + chunk(b"IEND", b"")
    )


def generate_images(payload: dict[str, Any], region: str) -> dict[str, Any]:
    prompt = payload.get("prompt")
    text = prompt if isinstance(prompt, str) else ""
    n = payload.get("n")
    count = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 10 else 1
    b64 = payload.get("response_format") == "b64_json"
    data = []
    for i in range(count):
        seed = zlib.crc32(f"{i}:{text}".encode())
        png = base64.b64encode(_png((seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF))).decode()
        note = f"A simulated image from {region}: {text[:200]}"
        item = {"b64_json": png} if b64 else {"url": f"data:image/png;base64,{png}"}
        data.append({**item, "revised_prompt": note})
    return {"created": int(time.time()), "data": data}


def media(path: str, payload: dict[str, Any], region: str) -> dict[str, Any]:
    """The answer to one of ``MEDIA_PATHS``."""
    if path == "/tokenize":
        return tokenize(payload)
    if path == "/images/generations":
        return generate_images(payload, region)
    return generate_video(payload, region)


def generate_video(payload: dict[str, Any], region: str) -> dict[str, Any]:
    prompt = payload.get("prompt")
    raw = payload.get("duration")
    duration = raw if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= 60 else 5
    note = f"A simulated {duration}s video from {region}: {prompt if isinstance(prompt, str) else ''}"[:500]
    url = "data:text/plain;base64," + base64.b64encode(note.encode()).decode()
    return {"video": {"url": url, "duration": duration}, "model": str(payload.get("model", ""))}
