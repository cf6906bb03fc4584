"""What passes between a protocol adapter and the gateway: one request as every front adapter hands it over
(``Inbound``), the answer it gets back (``Routed``), and the seams around the gateway's work that other parts
of the pipeline fill in (``Hook``: rate limits, receipts; ``Tracer``: spans).

REST, gRPC, the stored-object services and the hooks import these; the gateway that carries a request out is
``pipeline.failover``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from regiongate.core import Affinity, Endpoint, Location, Plan, Tier
from regiongate.core.labels import Route
from regiongate.pipeline.auth import Principal
from regiongate.pipeline.continuation import Hop
from regiongate.pipeline.usage import UsageRecord
from regiongate.state.capacity import CapacityStore, Lease, Rider
from regiongate.state.fleet import Deployment


@dataclass(slots=True)
class Inbound:
    """One request as every front adapter hands it to the gateway."""

    path: str  # below /v1
    payload: dict[str, Any]
    body: bytes
    model: str
    stream: bool
    endpoint: Endpoint
    principal: Principal
    request_id: str
    client_location: Location | None = None
    explain: bool = False  # the caller asked for the x-regiongate-explain response header
    continuation: bool = True  # a stream broken mid-answer may be continued elsewhere in scope
    hedge: bool = True  # a slow first byte may be hedged, when [hedging] is on (x-regiongate-hedge: off)
    ttft_budget_ms: float | None = None  # the caller's own first-byte budget (x-regiongate-ttft-budget-ms)
    client_request_id: str | None = None  # the client's x-request-id, echoed; never used as ours
    tier: Tier = Tier.DEFAULT  # its service tier, resolved by ``Gateway.dispatch`` (pipeline.tiering)
    affinity: Affinity | None = None  # where its prompt prefix was served recently (pipeline.affinity)
    conversation: str | None = None  # the client's conversation id header, when it sent one
    prefix_key: str | None = None  # its affinity key, when affinity is on and it has one
    rider: Rider | None = None  # work its first capacity lease takes along (a hook's, e.g. rate limits)
    # Its receipt may wait up to [control] receipt_window_us to share a signature with later responses
    # (set by the gRPC adapter for unary calls while others are in flight; pipeline/receipts.py).
    receipt_window: bool = False

    @property
    def include_usage(self) -> bool:
        if self.path not in ("/chat/completions", "/completions"):
            return True  # only these two take stream_options; other streams carry usage their own way
        opts = self.payload.get("stream_options")
        return isinstance(opts, dict) and opts.get("include_usage") is True


@dataclass(slots=True)
class Routed:
    status: int
    content_type: str
    region: str
    route: Route
    backend: str
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None  # for streams
    headers: list[tuple[str, str]] = field(default_factory=list)  # extra response headers / gRPC metadata
    finish: Callable[[], Awaitable[None]] | None = None
    plan: Plan | None = None  # the policy's plan this request followed (for the explain header)
    hops: list[Hop] = field(default_factory=list)  # a stream's hops so far, in order (filled as it goes)
    # A stream that moved ends with what the gateway states about the whole answer (its hops, a receipt
    # naming them): trailing SSE comments, gRPC trailing metadata. ``closing`` holds the hooks' parts.
    trailers: list[tuple[str, str]] = field(default_factory=list)
    closing: list[Callable[[Inbound, Routed], tuple[str, str]]] = field(default_factory=list)
    # Set by a hook whose header comes a moment later (a receipt signed with the others of its loop
    # iteration, pipeline/receipts.py): the response head waits for it.
    ready: asyncio.Future[None] | None = None

    async def aclose(self) -> None:
        """Free the stream's lease and upstream connection, whether or not it was ever iterated."""
        if self.chunks is not None:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        if self.finish is not None:
            await self.finish()


class Hook(Protocol):
    """Cross-cutting steps around every routed request (rate limits, receipts, ...), shared by all
    protocol adapters. ``before`` may refuse with a RouteError; ``after`` may add response headers;
    ``settled`` sees the final usage record (after a stream ends)."""

    async def before(self, inbound: Inbound) -> None: ...

    def after(self, inbound: Inbound, routed: Routed) -> None: ...

    def settled(self, inbound: Inbound, record: UsageRecord) -> None: ...


class _HasStatus(Protocol):
    @property
    def status(self) -> int: ...


Answered = TypeVar("Answered", bound=_HasStatus)


class Tracer(Protocol):
    """What the gateway asks of tracing (``[tracing]``, pipeline/tracing.py); the gateway holds None when it
    is off, so an untraced request pays one ``is None`` check per step."""

    async def acquire(
        self, capacity: CapacityStore, dep: Deployment, limit: int, rider: Rider | None
    ) -> Lease | None: ...

    async def attempt(
        self, tried: Awaitable[Answered], dep: Deployment, backend: str, route: str, continues: str | None
    ) -> Answered:
        """Run one attempt inside its span; the outcome is read from the answer's ``status``;
        ``continues``: this attempt would continue a stream that broke for that reason."""
        ...

    def inject(self, headers: list[tuple[str, str]]) -> None: ...

    def first_token(self, first: bytes, ttft_ms: float, client_sees: bool) -> None:
        """``client_sees``: this first byte is the client's first token (not a continuation's)."""
        ...

    def continued(self, hop: Hop, tokens: int) -> None:
        """The stream moved on to ``hop`` after ``tokens`` tokens had been delivered."""
        ...
