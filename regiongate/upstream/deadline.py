"""A connection's one deadline, and one loop timer behind it (the upstream client's and the edge listener's).

The timer is moved lazily: a later deadline leaves it where it is, and it re-arms for what is left when it
fires early. A request on a kept-alive connection then sets a deadline or two and schedules no timer of its
own, where ``asyncio.timeout`` (or a timer per phase) schedules and cancels one each time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LazyDeadline:
    __slots__ = ("_expire", "_loop", "_timer", "at")

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[], None]) -> None:
        self._loop = loop
        self._expire = expire  # called once the deadline has passed, with ``at`` already cleared
        self._timer: asyncio.TimerHandle | None = None
        self.at: float | None = None  # loop time; None: nothing is timed

    def set(self, at: float) -> None:
        self.at = at
        timer = self._timer
        if timer is None or timer.when() > at:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(at, self._fire)

    def close(self) -> None:
        """Nothing more to time: the timer goes too, so it does not hold its owner until it fires."""
        self.at = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        at = self.at
        if at is None:
            return
        if self._loop.time() < at:  # moved later since the timer was set
            self._timer = self._loop.call_at(at, self._fire)
            return
        self.at = None
        self._expire()
