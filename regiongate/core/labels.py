"""The words the gateway answers with: routes in ``x-regiongate-route`` and the reasons a region was dropped.

``StrEnum`` members are their own strings, so headers, metrics labels, receipts and JSON carry the plain
word, and a typo in a comparison is a NameError instead of a silent mismatch.
"""

from __future__ import annotations

from enum import StrEnum


class Route(StrEnum):
    NEAREST = "nearest"  # global: the nearest region in scope took it
    SPILLOVER = "spillover"  # global: another region: the nearest was full, or slower beyond the margin
    FAILOVER = "failover"  # global: a region failed before the first byte, another answered
    PINNED = "pinned"  # a regional endpoint: that region or nothing
    ZONE = "zone"  # a zone endpoint or a zone-fenced key: inside the data zone
    LEAST_LOADED = "least-loaded"  # the simulator's least-loaded baseline, never the gateway
    POWER_OF_TWO = "power-of-two"  # the simulator's power-of-two-choices baseline, never the gateway
    NONE = ""  # refused before any region was chosen


class Drop(StrEnum):
    """Why ``route explain`` lists a region as dropped."""

    UNHEALTHY = "no healthy backend"
    FULL = "full"
    OVER_BUDGET = "over budget"
