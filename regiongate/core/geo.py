"""Distance on the globe and the network round-trip time it implies."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class Location:
    lat: float
    lon: float


EARTH_RADIUS_KM = 6371.0
# Light in fibre covers ~200 km per ms one way; real paths are ~1.5x the great circle, so a round trip
# costs ~1 ms per 67 km. A small constant covers the last mile and switching.
RTT_MS_PER_KM = 2 * 1.5 / 200.0
RTT_BASE_MS = 2.0


_RAD = math.pi / 180.0  # degrees to radians, as math.radians does, without a call per coordinate


def great_circle_km(a: Location, b: Location) -> float:
    """Haversine distance in kilometres."""
    lat1, lat2 = a.lat * _RAD, b.lat * _RAD
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((b.lon - a.lon) * _RAD / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def rtt_from_distance_ms(a: Location, b: Location) -> float:
    return _rtt_ms(a.lat, a.lon, b.lat, b.lon)


def rtts_from_distance_ms(a: Location, bs: Iterable[Location]) -> list[float]:
    """``rtt_from_distance_ms(a, b)`` for each of ``bs``, in one call (the policy ranks every region in
    scope per request)."""
    lat, lon = a.lat, a.lon
    return [_rtt_ms(lat, lon, b.lat, b.lon) for b in bs]


# A memo of a pure function (same answer for the same arguments, so purity holds): clients come from a
# bounded set of places (GeoIP cities, a simulation's metros) and regions are few, so per request the
# haversine becomes a hash lookup. Bounded, so an unbounded stream of distinct coordinates cannot grow it.
@lru_cache(maxsize=1 << 16)
def _rtt_ms(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    return RTT_BASE_MS + great_circle_km(Location(lat1, lon1), Location(lat2, lon2)) * RTT_MS_PER_KM


def parse_location(text: str) -> Location | None:
    """Parse ``"<lat>,<lon>"``; None when malformed or out of range."""
    parts = text.split(",")
    if len(parts) != 2:
        return None
    try:
        lat, lon = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0) or math.isnan(lat) or math.isnan(lon):
        return None
    return Location(lat, lon)
