"""What a listener receives from the composition root: the parts it uses, and nothing to build them with.

``app.runtime.Runtime`` is the one implementation; REST, gRPC and the console are typed against this
protocol so that no listener imports the app that assembles it (imports run core <- state <- pipeline <-
listeners <- app). The config, the fleet and the keys are one ``InForce`` value behind one ``Live`` cell: a
reload builds the next one whole and swaps that one reference, and every reader (listeners, callers, the
gateway, probes, the load scraper, metrics) reads through it, so none sees half of a reload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from regiongate.config import Config
from regiongate.health.metrics import Metrics
from regiongate.pipeline.auth import KeyStore, StaticKeys
from regiongate.pipeline.caller import Callers
from regiongate.pipeline.failover import Gateway
from regiongate.state.fleet import Fleet

if TYPE_CHECKING:
    from regiongate.pipeline.tracing import Tracing  # not imported at run time: OpenTelemetry only if used


@dataclass(frozen=True, slots=True)
class InForce:
    """What a reload replaces, in one piece."""

    config: Config
    fleet: Fleet
    config_keys: StaticKeys  # the config file's keys (and the demo key)
    keys: KeyStore  # what callers are looked up in: the control plane's over the config's


class Live:
    """The one mutable reference of a running gateway: the ``InForce`` value every reader sees."""

    __slots__ = ("now",)

    def __init__(self, now: InForce) -> None:
        self.now = now

    def swap(self, new: InForce) -> InForce:
        old, self.now = self.now, new
        return old


class Readiness:
    """Whether this process takes new work: ``/readyz`` answers 503 once the drain has begun."""

    __slots__ = ("ready",)

    def __init__(self) -> None:
        self.ready = True

    def drain(self) -> None:
        self.ready = False


class Services(Protocol):
    @property
    def config(self) -> Config:
        """The config in force (a reload swaps it)."""
        ...

    @property
    def fleet(self) -> Fleet:
        """The fleet in force (a reload swaps it)."""
        ...

    @property
    def gateway(self) -> Gateway: ...

    @property
    def callers(self) -> Callers: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def tracing(self) -> Tracing | None:
        """OpenTelemetry, when [tracing] is set."""
        ...

    async def usage_for(self, team: str) -> list[dict[str, object]]:
        """The team's usage: the control-plane store's aggregate when there is one, else this process's."""
        ...
