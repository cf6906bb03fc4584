"""What the conversation stores share (stored responses, stored xAI chat completions): the state they need,
the one scope-checked read and the real delete, by an id that names its region."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from regiongate.core import Endpoint
from regiongate.core.errors import GatewayError
from regiongate.objects.ids import region_of
from regiongate.objects.service import ObjectState
from regiongate.objects.store import StoredObject, not_found
from regiongate.pipeline.auth import Principal
from regiongate.pipeline.receipts import ReceiptHook


class KeptObjects:
    PREFIX: ClassVar[str]  # of the ids (``objects.ids``)
    KIND: ClassVar[str]  # the rows' kind
    WHAT: ClassVar[str]  # in messages: "stored response"

    def __init__(self, state: ObjectState | None, receipts: Callable[[], ReceiptHook | None]) -> None:
        self.state = state
        self._receipts = receipts

    def required_state(self) -> ObjectState:
        if self.state is None:
            raise GatewayError(
                f'A {self.WHAT} needs a state store; this gateway runs with [state] store = "none".',
                code="state_disabled",
                status=501,
            )
        return self.state

    async def load(self, oid: str, endpoint: Endpoint, p: Principal) -> StoredObject:
        """The object for this caller, read only in the region its id names and only within scope."""
        store = self.required_state().stores.locate(
            oid, region_of(oid, self.PREFIX), endpoint, p.access, self.WHAT
        )
        obj = await store.get(oid, self.KIND, p.team)
        if obj is None:
            raise not_found(self.WHAT, oid)
        return obj

    async def delete(self, oid: str, endpoint: Endpoint, p: Principal) -> None:
        store = self.required_state().stores.locate(
            oid, region_of(oid, self.PREFIX), endpoint, p.access, self.WHAT
        )
        if not await store.delete(oid, self.KIND, p.team):
            raise not_found(self.WHAT, oid)


__all__ = ["KeptObjects"]
