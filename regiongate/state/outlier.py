"""Passive health (outlier ejection) and smoothed latency measurements, with an injected clock.

A backend that fails ``consecutive`` times in a row is ejected for ``base_s * 2**(ejections-1)`` (capped),
like Envoy's outlier detection; a success resets the streak and the back-off. When an ejection ends the
backend is *half-open*: it gets one trial request (others still avoid it while the trial runs); a success
closes the circuit, a failure ejects it again at once for the next, doubled, time. Smoothing is an
exponentially weighted moving average whose weight depends on the time since the last sample, so a burst
of samples does not erase history and an old value decays toward the new one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(slots=True)
class Ewma:
    halflife_s: float
    value: float | None = None
    at: float = 0.0

    def add(self, sample: float, now: float) -> float:
        if self.value is None:
            self.value = sample
        else:
            w = 1.0 - math.exp(-max(now - self.at, 0.0) * math.log(2) / self.halflife_s)
            w = max(w, 0.1)  # each sample moves the average at least a little
            self.value += w * (sample - self.value)
        self.at = now
        return self.value


@dataclass(slots=True)
class Outlier:
    consecutive: int = 3
    base_s: float = 5.0
    max_s: float = 300.0
    streak: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    trial: bool = False  # half-open: the one trial request is in flight

    def configure(self, consecutive: int, base_s: float, max_s: float) -> None:
        self.consecutive, self.base_s, self.max_s = consecutive, base_s, max_s

    def success(self) -> None:
        self.streak = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.trial = False

    def begin(self, now: float) -> None:
        """A request starts on this backend: after an ejection, it is the trial."""
        if self.ejections and now >= self.ejected_until:
            self.trial = True

    def abandon(self) -> None:
        """The request ended without telling (its client left before the first byte)."""
        self.trial = False

    def failure(self, now: float) -> bool:
        """Count a failure; True when this one ejects the backend."""
        self.streak += 1
        if self.streak >= self.consecutive or self.trial:
            self.trial = False
            self.streak = 0
            self.ejections += 1
            self.ejected_until = now + min(self.base_s * 2 ** (self.ejections - 1), self.max_s)
            return True
        return False

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until or self.trial

    def steady_until(self, now: float) -> float:
        """Until when ``ejected`` stays what it is at ``now`` if nothing else happens: the ejection's end."""
        return self.ejected_until if now < self.ejected_until else math.inf
