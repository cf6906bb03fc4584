"""Prompt-cache affinity: the region and backend that served a request's prefix recently. Pure.

A conversation's follow-up requests repeat its earlier turns; the backend that served the last turn holds
that prefix in its prompt (KV) cache and prefills only the new suffix. The gateway remembers, per prefix
key (``pipeline.affinity``), where it sent the prefix and how long it was; the policy receives that as an
``Affinity`` and, for that one region, predicts

    predicted_ms = network_ms + queue_ms + base_ms + (prompt - cached) * prefill_ms_per_token

with ``cached = min(prefix_tokens, prompt)``. The affinity region is taken over the policy's pick when

    network_ms(affinity) - network_ms(pick) <= cached * prefill_ms_per_token + MARGIN_FLOOR_MS
    predicted_ms(affinity) - predicted_ms(pick) <= margin_ms                 (``core.latency``)

that is, when the extra round trip (known, not noise) is paid for by the prefill its cache saves, and the
predictions are within the noise margin of each other: affinity breaks ties and keeps a conversation
from wobbling between near-equal regions, but never keeps a request on a region that is clearly slower,
farther than its cache is worth, without room, unhealthy or outside the scope (a region out of scope
is never ranked at all). Its backend is tried first in that region.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Affinity:
    region: str
    backend: str  # the backend id that served the prefix ("" when unknown)
    prefix_tokens: int  # length of the prefix it holds (estimated like every prompt length)

    def cached(self, prompt: int) -> int:
        """Tokens of a ``prompt``-token request the backend should not have to prefill again."""
        return max(min(self.prefix_tokens, prompt), 0)
