"""What a listener receives from the composition root: the parts it uses, and nothing to build them with.

``app.runtime.Runtime`` is the one implementation; REST, gRPC and the console are typed against this
protocol so that no listener imports the app that assembles it (imports run core <- state <- pipeline <-
listeners <- app). The fleet and the config are read through it on every request, so a reload that swaps
them is seen at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from regiongate.config import Config
from regiongate.health.metrics import Metrics
from regiongate.pipeline.caller import Callers
from regiongate.pipeline.failover import Gateway
from regiongate.state.fleet import Fleet

if TYPE_CHECKING:
    from regiongate.pipeline.tracing import Tracing  # not imported at run time: OpenTelemetry only if used


class Services(Protocol):
    config: Config
    gateway: Gateway
    callers: Callers
    metrics: Metrics
    mounts: list[tuple[str, Any]]  # (path prefix, ASGI app): admin API, key set, console
    on_reload: list[Callable[[Any], None]]  # called with the services after each config reload
    tracing: Tracing | None  # OpenTelemetry, when [tracing] is set

    @property
    def fleet(self) -> Fleet:
        """The fleet in force (a reload swaps it)."""
        ...

    async def start(self) -> None:
        """Start background work once, before the first listener accepts a call."""

    async def aclose(self) -> None:
        """Drain the other listeners, then close everything the services opened."""

    async def usage_for(self, team: str) -> list[dict[str, object]]:
        """The team's usage: the control-plane store's aggregate when there is one, else this process's."""
