"""Where the client is: from a MaxMind-format GeoIP database (``[gateway].geoip_database``), for the client's
address as far as trusted proxies vouch for it.

Precedence, highest first:

1. ``x-regiongate-client-location: <lat>,<lon>`` sent by a trusted proxy (``[gateway].trusted_proxies``);
2. the database's ``location`` (latitude, longitude) of the client address;
3. none: the policy ranks regions from this gateway (measured round trips, else its position).

The client address is the TCP peer, unless the peer is a trusted proxy: then ``X-Forwarded-For`` is walked
from the right (the hop the peer itself added) leftwards, skipping trusted hops; the first untrusted one
is the client. Entries left of it were written by the client or a proxy we do not know and are never
believed, so a client cannot pick its region by sending a forged header. When every hop is trusted the
leftmost is the client. A malformed entry stops the walk with no address (no guessing).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any, Protocol

import maxminddb

from regiongate.core import Location

CACHE_MAX = 16384


class Trusted(Protocol):
    """The trusted proxy networks (``pipeline.caller.TrustedProxies``): ``addr in trusted``."""

    def __contains__(self, addr: str, /) -> bool: ...


def _host(entry: str) -> str | None:
    """The address of one ``X-Forwarded-For`` entry (``1.2.3.4``, ``1.2.3.4:5678``, ``[::1]:443``, ``::1``)."""
    entry = entry.strip()
    if entry.startswith("["):
        end = entry.find("]")
        entry = entry[1:end] if end > 0 else ""
    elif entry.count(":") == 1:
        entry = entry.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(entry))
    except ValueError:
        return None


def client_address(peer: str | None, forwarded: Iterable[str], trusted: Trusted) -> str | None:
    """The client's address: ``peer`` unless it is a trusted proxy, then the right-to-left walk of the
    ``X-Forwarded-For`` values (all of them, in the order received)."""
    if peer is None or peer not in trusted:
        return peer
    hops = [e for value in forwarded for e in value.split(",") if e.strip()]
    client = peer
    for entry in reversed(hops):
        addr = _host(entry)
        if addr is None:
            return None
        client = addr
        if addr not in trusted:
            return addr
    return client


class GeoIP:
    """A MaxMind DB reader (GeoLite2/GeoIP2 City layout: ``location.latitude`` / ``location.longitude``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._reader: Any = maxminddb.open_database(path)
        self._cache: dict[str, Location | None] = {}

    def locate(self, addr: str) -> Location | None:
        if addr in self._cache:
            return self._cache[addr]
        try:
            record = self._reader.get(addr)
        except ValueError:  # not an IP address, or IPv6 in an IPv4-only database
            record = None
        loc = _location(record)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[addr] = loc
        return loc

    def close(self) -> None:
        self._reader.close()


def _location(record: object) -> Location | None:
    if not isinstance(record, dict):
        return None
    where = record.get("location")
    if not isinstance(where, dict):
        return None
    lat, lon = where.get("latitude"), where.get("longitude")
    if not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    return Location(float(lat), float(lon))


def open_geoip(path: str | None) -> GeoIP | None:
    return GeoIP(path) if path else None
