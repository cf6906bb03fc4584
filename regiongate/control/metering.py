"""Usage metering off the hot path: ``record`` appends to a list; a background task writes the list to the
store in batches (every ``flush_s``, or sooner when ``batch_size`` records wait). ``aclose`` writes
everything still pending, so a graceful shutdown loses nothing; a crash loses at most the records of the
batch not yet written (``flush_s``). If the store is down, records wait in memory (up to ``max_pending``,
oldest dropped first, counted and logged) and are retried.

Every record goes into the store's per-minute aggregates (billing, ``/v1/usage``: exact). A record is
also kept as a per-request row when it failed (status >= 400), when its stream moved (it has hops), or as
one in every ``rows_every`` of the rest (0: none, 1: all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from regiongate.control.store import ControlStore
from regiongate.pipeline.usage import UsageRecord

log = logging.getLogger("regiongate.control")


class BatchUsageWriter:
    def __init__(
        self,
        store: ControlStore,
        flush_s: float = 1.0,
        batch_size: int = 500,
        max_pending: int = 200_000,
        rows_every: int = 1,
    ) -> None:
        self.store = store
        self.rows_every = rows_every
        self._plain = 0  # plain records seen, for the one-in-rows_every sample
        self.flush_s = flush_s
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.written = 0
        self.dropped = 0
        self._pending: list[UsageRecord] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, rec: UsageRecord) -> None:
        self._pending.append(rec)
        n = len(self._pending)
        if n > self.max_pending:
            over = n - self.max_pending
            del self._pending[:over]
            self.dropped += over
        if n >= self.batch_size:
            self._wake.set()

    async def flush(self) -> None:
        """Write what is pending now, a chunk at a time; a failed chunk goes back to the front."""
        while self._pending:
            batch = self._pending[: self.batch_size * 4]
            del self._pending[: len(batch)]
            try:
                await self.store.write_usage(batch, self._rows(batch))
            except BaseException:
                self._pending[:0] = batch
                raise
            self.written += len(batch)

    def _rows(self, batch: list[UsageRecord]) -> list[UsageRecord] | None:
        """The records of ``batch`` kept as per-request rows (None: all of them)."""
        every = self.rows_every
        if every == 1:
            return None
        rows = []
        for r in batch:
            if r.status >= 400 or r.hops:
                rows.append(r)
            elif every:
                self._plain += 1
                if self._plain % every == 0:
                    rows.append(r)
        return rows

    async def _loop(self) -> None:
        failures = 0
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_s * min(2**failures, 30)):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                failures = 0
            except Exception as e:
                failures += 1
                log.warning(
                    "usage write failed; records kept for retry",
                    extra={"pending": len(self._pending), "error": str(e)[:200]},
                )

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="regiongate-usage-writer")

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task  # finishes the write in progress, never cancelled mid-write
            self._task = None
        for attempt in range(5):
            try:
                await self.flush()
                break
            except Exception as e:
                log.warning(
                    "usage flush at shutdown failed", extra={"attempt": attempt + 1, "error": str(e)[:200]}
                )
                await asyncio.sleep(0.2 * (attempt + 1))
        if self._pending or self.dropped:
            log.error("usage records lost", extra={"unwritten": len(self._pending), "dropped": self.dropped})
