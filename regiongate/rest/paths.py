"""The request path as the REST listener routes it: normalised from the raw bytes, or refused.

uvicorn hands over ``raw_path`` (the bytes on the request line) and ``path`` (percent-decoded, so
``%0D%0A`` is already a line break there). Routing on the decoded form let a client smuggle a second request
line into the upstream request and ``..`` walk out of ``/v1``. Here the raw bytes are normalised as RFC 3986
section 6.2.2 says (percent-encoded *unreserved* characters decoded); a dot segment (``.`` or ``..``, raw
or encoded), anything else that is encoded (``/``, ``\\``, controls, spaces, bytes outside ASCII) or any byte
outside the path character set makes the path unroutable: such a path never names a route we serve, so it
is a 404, whatever it would have resolved to.

``FORWARDED`` is the allow-list of what is sent upstream; the upstream request line is built from its
entries, never from the client's bytes.
"""

from __future__ import annotations

import functools
import re

# The OpenAI-compatible routes a POST may be forwarded to (below /v1/).
FORWARDED = frozenset({"chat/completions", "completions", "embeddings", "responses", "messages"})

# RFC 3986 pchar plus "/": unreserved / sub-delims / ":" / "@" / pct-encoded.
_PATH_CHARS = re.compile(rb"^/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$")
_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _decode_unreserved(m: re.Match[bytes]) -> bytes:
    byte = int(m.group(1), 16)
    if byte not in _UNRESERVED:
        raise ValueError("encoded reserved or non-ASCII byte")
    return bytes((byte,))


def normalise(raw_path: bytes) -> str | None:
    """The normalised path, or None when it cannot name anything we serve."""
    # A pure function of the bytes: the few short paths clients use stay cached (bounded in count and
    # size, so that distinct hostile paths cannot grow it).
    return _cached(raw_path) if len(raw_path) <= 64 else _normalise(raw_path)


def _normalise(raw_path: bytes) -> str | None:
    if not _PATH_CHARS.match(raw_path):
        return None
    try:
        decoded = _PCT.sub(_decode_unreserved, raw_path) if b"%" in raw_path else raw_path
    except ValueError:
        return None
    path = decoded.decode("ascii")
    if "/./" in path or "/../" in path or path.endswith(("/.", "/..")):
        return None  # a dot segment: clients resolve them before sending; a raw one is probing
    return path


_cached = functools.lru_cache(maxsize=256)(_normalise)


def forwarded(path: str) -> str | None:
    """``/chat/completions`` for ``/v1/chat/completions`` when that route is forwarded, else None."""
    if path.startswith("/v1/") and path[4:] in FORWARDED:
        return path[3:]
    return None
