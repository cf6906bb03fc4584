"""Whose fault a backend's 5xx is, and what the client is told when no backend answered (docs/faults.md).

A backend that answers HTTP 500 may be broken, or the request may have broken it (a chat template or a
grammar the server cannot build from it, a bug one input triggers). One answer cannot tell them apart, so
a 500 is judged by the request's outcome, not on arrival:

- the request was then answered (2xx) by another backend: each 500 counts toward its backend's ejection
  (it failed a request that another could serve);
- the request failed on every backend it tried, or another refused it (4xx): the request is suspect and
  nothing counts; a poison request sent again and again never ejects a backend for everyone.

Every other failure counts at once, as before: refused or reset connections, timeouts, 502/503/504 (what a
server or its proxy says about itself, never about one request). A broken backend still gets ejected:
requests it fails are answered elsewhere, and those count.

When every attempt failed and at least one backend answered a 5xx, the client gets the last such status
and that backend's message, with every attempt listed (``exhausted``), instead of a generic 503.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from regiongate.core import RouteError
from regiongate.core.errors import UpstreamError
from regiongate.state.fleet import Backend, Fleet
from regiongate.upstream.base import UpstreamFailure

log = logging.getLogger("regiongate.gateway")

SUSPECT = frozenset({500})  # statuses that may be the request's doing


@dataclass(slots=True)
class Blame:
    """One request's 5xx answers, until its outcome says whose fault they were."""

    pending: list[Backend] = field(default_factory=list)
    last: UpstreamFailure | None = None  # the last 5xx answer, for the client

    def defer(self, backend: Backend, e: UpstreamFailure) -> bool:
        """Note a failure; True when it is judged later (a 500), False when it counts now."""
        if e.status is not None and e.status >= 500:
            self.last = e
        if e.status in SUSPECT:
            self.pending.append(backend)
            return True
        return False

    def settle(self, fleet: Fleet, answered: bool, request_id: str) -> None:
        """The request's outcome is known: charge the 500s when another backend answered it, else
        count nothing (and end any half-open trial those attempts were, so the backend gets another)."""
        pending, self.pending = self.pending, []
        for b in pending:
            if not answered:
                b.outlier.abandon()
            elif fleet.record_failure(b):
                log.warning("backend ejected", extra={"backend": b.id, "reason": "HTTP 500"})
        if pending and not answered:
            log.info(
                "request failed with HTTP 500 on every backend it tried: not counted against them",
                extra={"request_id": request_id, "backends": [b.id for b in pending]},
            )


def exhausted(last: UpstreamFailure, failures: list[str], retry_after_s: float) -> RouteError:
    """The refusal when every attempt failed and ``last`` was the last 5xx answer: its status, its
    backend's message, and where the request was tried; a retry hint unless the request broke it."""
    said = f": {last.message}" if last.message else " (no message)"
    return UpstreamError(
        f"The backend {last.backend} answered HTTP {last.status}{said}. Tried: {'; '.join(failures)}.",
        code="backend_error",
        status=last.status,
        retry_after=None if last.status in SUSPECT else retry_after_s,
    )
