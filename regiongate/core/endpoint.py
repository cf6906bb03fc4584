"""Endpoint resolution: which endpoint did the client address, read from ``Host`` / ``:authority``.

``localhost`` and every configured base domain (e.g. ``api.example.com``) name the global endpoint; one DNS
label in front of a base names a region or a data zone. Anything else under a base is an error, never a
silent fallback to global: a typo must not widen where data is processed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum

from regiongate.core.errors import RouteError


class EndpointKind(StrEnum):
    GLOBAL = "global"
    ZONE = "zone"
    REGION = "region"


@dataclass(frozen=True, slots=True)
class Endpoint:
    kind: EndpointKind
    name: str = ""  # region id or zone id; empty for global

    def __str__(self) -> str:
        return "global" if self.kind is EndpointKind.GLOBAL else f"{self.kind.value}:{self.name}"


GLOBAL = Endpoint(EndpointKind.GLOBAL)


def split_host(authority: str) -> str:
    """Host part of ``host[:port]`` (IPv6 literals in brackets), lower-cased, without one trailing dot
    (``name.`` is the same DNS name as ``name``; ``name..`` is no name and stays unmatched)."""
    host = authority.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host[:-1] if host.endswith(".") else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve_endpoint(
    authority: str,
    base_domains: Iterable[str],
    regions: Collection[str],
    zones: Collection[str],
) -> Endpoint:
    """Map a Host header value to an endpoint, or raise ``RouteError`` (404 unknown_region / unknown_host)."""
    host = split_host(authority)
    if not host or _is_ip(host):
        return GLOBAL
    bases = ["localhost", *(b.lower().rstrip(".") for b in base_domains)]
    for base in sorted(bases, key=len, reverse=True):
        if host == base:
            return GLOBAL
        suffix = "." + base
        if host.endswith(suffix):
            label = host[: -len(suffix)]
            if label in regions:
                return Endpoint(EndpointKind.REGION, label)
            if label in zones:
                return Endpoint(EndpointKind.ZONE, label)
            raise RouteError.unknown_region(label, sorted(regions), sorted(zones), base)
    raise RouteError.unknown_host(host, bases)
