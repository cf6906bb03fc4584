"""Authentication: an API key becomes a principal (team, key id, access) by a hash lookup in memory.

Keys are stored only as SHA-256 digests: API keys are long random strings, so a fast unsalted hash is
enough to make a leaked store useless while keeping the per-request lookup to one dict probe.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Protocol

from regiongate.core import Access

KEY_PREFIX = "rg-"


@dataclass(frozen=True, slots=True)
class Principal:
    team: str
    key_id: str
    access: Access
    # The key's stream settings (config ``keys``): whether a stream broken mid-answer may be continued
    # elsewhere in scope, and a first-byte budget that tightens the learned one (as a request's can).
    continuation: bool = True
    ttft_budget_ms: float | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh API key with a recognisable prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyStore(Protocol):
    def lookup(self, key: str) -> Principal | None:
        """The principal for ``key``; never does I/O (implementations cache)."""


class StaticKeys:
    """Keys from the config file (and the demo key), immutable for the life of the process."""

    def __init__(self, by_hash: dict[str, Principal] | None = None) -> None:
        self._by_hash: dict[str, Principal] = dict(by_hash or {})

    def add(self, key_hash: str, principal: Principal) -> None:
        self._by_hash[key_hash] = principal

    def lookup(self, key: str) -> Principal | None:
        return self._by_hash.get(hash_key(key))

    def by_hash(self, key_hash: str) -> Principal | None:
        return self._by_hash.get(key_hash)

    def principals(self) -> list[Principal]:
        return list(self._by_hash.values())


def bearer_token(header: str | None) -> str | None:
    """The key from an ``Authorization: Bearer <key>`` value (scheme case-insensitive)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None
