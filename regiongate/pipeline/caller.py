"""Who is calling, through which endpoint, from where: the one answer both listeners use.

A listener hands over what its protocol carried (the ``Authorization`` value, the dialled host, the peer
address, the client-location and ``X-Forwarded-For`` values) and gets a ``Caller`` back, or a ``ClientError``
whose message says what to send instead. REST and gRPC differ only in how they read those values.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from regiongate.config import Config
from regiongate.core import Endpoint, Location, parse_location
from regiongate.core.errors import ClientError
from regiongate.pipeline.auth import KeyStore, Principal, bearer_token
from regiongate.pipeline.endpoints import Endpoints
from regiongate.pipeline.geoip import GeoIP, client_address, open_geoip

MAX_N = 128  # choices per request, as the OpenAI API allows
CLIENT_LOCATION = "x-regiongate-client-location"


class TrustedProxies:
    """The networks whose ``X-Forwarded-For`` and client-location headers are believed."""

    def __init__(self, networks: list[str]) -> None:
        self._nets = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._cache: dict[str, bool] = {}

    def __contains__(self, addr: str) -> bool:
        hit = self._cache.get(addr)
        if hit is None:
            try:
                ip = ipaddress.ip_address(addr)
                hit = any(ip in n for n in self._nets)
            except ValueError:
                hit = False
            if len(self._cache) < 4096:
                self._cache[addr] = hit
        return hit


class RequestIds:
    """``req_`` + a random per-process prefix + a counter: unique across processes and restarts without
    asking the kernel for randomness on every request."""

    def __init__(self) -> None:
        self._prefix = "req_" + os.urandom(6).hex()
        self._next = itertools.count(1).__next__

    def __call__(self) -> str:
        return f"{self._prefix}{self._next():012x}"


MAX_CLIENT_ID = 128
_VISIBLE_ID = re.compile(rf"^[\x21-\x7e]{{1,{MAX_CLIENT_ID}}}$")


def client_request_id(raw: str | None) -> str | None:
    """A client's ``x-request-id`` when it is 1-128 visible ASCII characters; anything else is dropped.

    The id a response, a log line, a usage record and a signed receipt name is always ours (``RequestIds``),
    so a client cannot make a receipt name another request. The client's own id is echoed back as
    ``x-client-request-id`` (the name OpenAI's API uses) and signed in its own receipt claim, ``client_rid``."""
    if raw and _VISIBLE_ID.match(raw):
        return raw
    return None


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    endpoint: Endpoint
    key: str
    location: Location | None


class Callers:
    """Resolves callers against the config in force, read per call: what it derives from the config
    (endpoints, trusted proxies, the GeoIP reader) is derived again when a reload swapped the config."""

    def __init__(self, config: Callable[[], Config], keys: Callable[[], KeyStore]) -> None:
        self._config = config
        self._keys = keys  # read per call: a reload or the control plane may swap the key store
        self.request_id = RequestIds()
        self.geoip: GeoIP | None = None
        self._derive(config())

    def _derive(self, config: Config) -> None:
        self._seen = config
        self._endpoints = Endpoints(config)
        self._trusted = TrustedProxies(config.gateway.trusted_proxies)
        path = config.gateway.geoip_database
        old = self.geoip
        self.geoip = old if old is not None and old.path == path else open_geoip(path)

    def _fresh(self) -> None:
        cfg = self._config()
        if cfg is not self._seen:  # one identity check per call; a reload is rare
            self._derive(cfg)

    @property
    def endpoints(self) -> Endpoints:
        self._fresh()
        return self._endpoints

    @property
    def trusted(self) -> TrustedProxies:
        self._fresh()
        return self._trusted

    def principal(self, authorization: str | None, how: str) -> tuple[Principal, str]:
        """The principal and key of an ``Authorization`` value; ``how`` names where the key goes."""
        key = bearer_token(authorization)
        principal = self._keys().lookup(key) if key else None
        if principal is None or key is None:
            what = "Incorrect API key provided." if key else f"No API key provided: send {how}."
            raise ClientError(what, code="invalid_api_key", status=401, type="authentication_error")
        return principal, key

    def endpoint(self, host: str) -> Endpoint:
        return self.endpoints.resolve(host)

    def location(self, peer: str | None, explicit: str | None, forwarded: Sequence[str]) -> Location | None:
        """The explicit header from a trusted proxy, else GeoIP of the client address."""
        trusted = self.trusted  # (and the GeoIP reader of the config in force)
        if explicit is not None and peer is not None and peer in trusted:  # only proxies may say it
            loc = parse_location(explicit)
            if loc is None:
                raise ClientError(
                    f"{CLIENT_LOCATION} must be '<lat>,<lon>' in degrees.",
                    code="invalid_client_location",
                    param=CLIENT_LOCATION,
                )
            return loc
        if self.geoip is None:
            return None
        addr = client_address(peer, forwarded, trusted)
        return self.geoip.locate(addr) if addr else None

    def resolve(
        self,
        *,
        authorization: str | None,
        how: str,
        host: str,
        peer: str | None,
        explicit_location: str | None,
        forwarded: Sequence[str],
    ) -> Caller:
        principal, key = self.principal(authorization, how)
        endpoint = self.endpoint(host)
        return Caller(principal, endpoint, key, self.location(peer, explicit_location, forwarded))


def check_n(n: object) -> None:
    """``n`` above what the OpenAI API allows is refused before any backend sees it."""
    if isinstance(n, int) and n > MAX_N:
        raise ClientError(f"Field 'n' must be at most {MAX_N}.", code="invalid_value", param="n")
