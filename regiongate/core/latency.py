"""The per-request latency prediction and the margin a move must beat. Pure: numbers in, numbers out.

For one request of ``prompt`` tokens and one deployment:

    predicted_ms = network_ms                               (round trip to the region; ``core.policy``)
                 + queue_depth * wait_ms_per_queued         (expected wait behind the requests queued there)
                 + base_ms                                  (the deployment's TTFT of an empty prompt)
                 + prompt * prefill_ms_per_token            (this request's own prefill)

``base_ms``, ``prefill_ms_per_token`` and ``wait_ms_per_queued`` are learned per deployment from the TTFTs
the gateway observes, with the network round trip taken out (``state.ttft``); ``error_ms`` is the
standard error of the learned server part for a typical request. Two regions' predictions differ by
noise alone about ``sqrt(error_a**2 + error_b**2)``, so the policy moves a request away from the nearer
region only when the predicted gain beats

    margin_ms = MARGIN_Z * sqrt(error_a**2 + error_b**2) + MARGIN_FLOOR_MS

(``MARGIN_Z`` = 3: a move on noise alone happens for fewer than one in a few hundred comparisons).
Among the regions within that margin of the best one the predictions cannot be told apart, so the choice
is randomised tie-breaking by the request's ``salt`` (a number the caller draws: the core has no random
generator of its own), so replicas deciding on the same slightly stale numbers spread over the near-equal
regions instead of all landing on the one that looked best. ``two_choices`` is the power of two choices
(Mitzenmacher 2001) used by the simulator's ``power-of-two`` baseline: with two or three regions in a scope,
taking the better of two draws would be deterministic, which is why the policy draws uniformly instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from regiongate.core.world import DeploymentState

MARGIN_Z = 3.0
MARGIN_FLOOR_MS = 5.0
UNMEASURED_ERROR_MS = 50.0  # a deployment with no samples yet: its numbers are the model's typical ones


@dataclass(frozen=True, slots=True)
class Estimate:
    """The parts of one predicted time to first token (ms)."""

    network_ms: float
    network_source: str  # "measured" | "client-distance" | "gateway-distance"
    queue_ms: float  # expected wait in the region's queue
    base_ms: float = 0.0
    prefill_ms: float = 0.0  # this request's own prefill
    error_ms: float = 0.0  # standard error of the server part (queue + base + prefill)

    @property
    def total_ms(self) -> float:
        return self.network_ms + self.queue_ms + self.base_ms + self.prefill_ms


def server_ms(dep: DeploymentState, prompt: int) -> float:
    """Everything after the network: queue wait + base TTFT + this request's prefill."""
    return dep.ttft_ms + prompt * dep.prefill_ms_per_token + dep.queue_depth * dep.wait_ms_per_queued


def margin_ms(error_a: float, error_b: float) -> float:
    """How much better a prediction must be than another's before the difference is believed."""
    return MARGIN_Z * math.sqrt(error_a * error_a + error_b * error_b) + MARGIN_FLOOR_MS


def two_choices(n: int, salt: int) -> tuple[int, int]:
    """Two distinct indexes below ``n`` (>= 2) drawn from ``salt``: the same salt gives the same pair."""
    i = salt % n
    j = (salt // n) % (n - 1)
    return i, j + (j >= i)


BYTES_PER_TOKEN = 4  # a request body's bytes per prompt token, roughly (English text in JSON)


def prompt_tokens_estimate(body_bytes: int) -> int:
    """The prompt length routing assumes for a body of ``body_bytes``: counted without parsing it."""
    return body_bytes // BYTES_PER_TOKEN
