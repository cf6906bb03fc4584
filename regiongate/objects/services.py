"""What a listener that serves stored objects receives: the pipeline's ``Services`` plus the stores.

``app.runtime.Runtime`` implements it; REST (the Responses API's stored half) and gRPC (deferred requests)
are typed against it, so neither imports the app.
"""

from __future__ import annotations

from typing import Protocol

from regiongate.objects.background import BackgroundResponses
from regiongate.objects.completions import StoredCompletions
from regiongate.objects.deferred import Deferred
from regiongate.objects.responses import StoredResponses
from regiongate.pipeline.services import Services


class StatefulServices(Services, Protocol):
    @property
    def responses(self) -> StoredResponses:
        """The Responses API's store / retrieve / delete."""
        ...

    @property
    def deferred(self) -> Deferred | None:
        """Deferred chat completions and videos; None with [state] store = "none"."""
        ...

    @property
    def completions(self) -> StoredCompletions:
        """xAI chat's stored completions (store_messages, previous_response_id, get / delete)."""
        ...

    @property
    def background(self) -> BackgroundResponses | None:
        """Responses created with background true (retrieve while running, cancel); None: [state] off."""
        ...
