"""One try of one backend inside the gateway's walk (``Attempt``), and what it opened (``Opened``): the
first bytes of a stream or a whole answer. Shared by the walk (``pipeline.failover``) and the stream that
outlives it (``pipeline.hops``)."""

from __future__ import annotations

from dataclasses import dataclass

from regiongate.core.labels import Route
from regiongate.pipeline import hedge
from regiongate.pipeline.exchange import Inbound
from regiongate.state.capacity import Lease
from regiongate.state.fleet import Backend, Deployment
from regiongate.upstream.base import UpstreamResponse


@dataclass(slots=True)
class Attempt:
    inbound: Inbound
    deployment: Deployment
    backend: Backend
    lease: Lease
    route: Route
    started: float
    queued: int = 0  # the deployment's queue depth when the request was sent
    more: bool = False  # another candidate was left when this one was tried (somewhere to move on to)
    continues: str | None = None  # a continuation: what broke the hop before


@dataclass(slots=True)
class Opened:
    """A backend that answered: the first bytes of a stream, or (``first`` None) a whole answer."""

    attempt: Attempt
    resp: UpstreamResponse
    first: bytes | None
    ttft_ms: float
    hedge: hedge.Outcome | None = None  # how a hedge of its wait went (pipeline.hedge)
    why: str = "first"  # its first hop's reason: "first", or the attempt a winning hedge cancelled

    @property
    def status(self) -> int:
        return self.resp.status
