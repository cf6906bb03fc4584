"""The ControlStore interface and ``open_store(url)``, which picks the implementation from the URL.

Two implementations share one SQL body (``sqlstore.SqlStore``) and differ only in their dialect:
SQLite (``sqlite:///path.db``, the embedded default) and PostgreSQL (``postgresql://...``, for several
gateways sharing one control plane). The same contract suite runs against both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from regiongate.control.model import AccessSnapshot, ApiKey, NewKey, Team, UsageRow, redact
from regiongate.core import Grant
from regiongate.core.errors import Invalid
from regiongate.core.tiers import Tier
from regiongate.pipeline.usage import UsageRecord


class ControlStore(Protocol):
    """Teams, grants, keys, usage and receipt public keys. Every method is a short transaction;
    mutations bump one revision counter that caches poll."""

    @property
    def description(self) -> str:
        """Where the store lives, without credentials (for logs and messages)."""

    async def migrate(self) -> int:
        """Apply pending migrations; returns the schema version."""

    async def schema_version(self) -> int: ...

    async def revision(self) -> int: ...

    async def create_team(
        self, name: str, grants: Sequence[Grant] | None = None, service_tiers: Sequence[Tier] | None = None
    ) -> Team:
        """A new team; ``service_tiers`` None: its keys may use every tier."""

    async def get_team(self, name: str) -> Team: ...

    async def list_teams(self) -> list[Team]: ...

    async def set_grants(self, name: str, grants: Sequence[Grant] | None) -> Team: ...

    async def set_service_tiers(self, name: str, service_tiers: Sequence[Tier] | None) -> Team: ...

    async def delete_team(self, name: str) -> None: ...

    async def add_key(self, team: str, key: NewKey) -> ApiKey: ...

    async def list_keys(self, team: str | None = None) -> list[ApiKey]: ...

    async def revoke_key(self, key_id: str) -> ApiKey: ...

    async def load_access(self) -> AccessSnapshot:
        """Active keys by hash with their team's grants, and the published signing keys."""

    async def write_usage(
        self, records: Sequence[UsageRecord], rows: Sequence[UsageRecord] | None = None
    ) -> None:
        """Add ``records`` to the per-minute aggregates (what ``usage`` reads) and keep ``rows`` (default:
        every record) as per-request rows (what ``hops_of`` reads), in one transaction."""

    async def hops_of(self, request_id: str) -> list[str]:
        """The hops a request's usage record names, in order ("region backend (why it moved)"): those of a
        stream continued mid-answer; empty for any other request."""
        ...

    async def usage(self, team: str, since_day: str | None = None) -> list[UsageRow]:
        """Usage of ``team`` aggregated by day (UTC), model and region, oldest first."""

    async def publish_signing_key(self, kid: str, jwk: dict[str, str]) -> None: ...

    async def aclose(self) -> None: ...


def sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``; ``sqlite:////abs.db`` -> ``/abs.db``; ``sqlite://:memory:``."""
    rest = url[len("sqlite:") :]
    if rest.startswith("///"):
        return rest[3:]
    if rest.startswith("//"):
        return rest[2:]
    return rest


def split_pg_url(url: str) -> tuple[str, str]:
    """The libpq URL without our ``schema`` parameter, and that schema (default ``public``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), "public")
    rest = [(k, v) for k, v in query if k != "schema"]
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


def open_store(url: str) -> ControlStore:
    """A store for ``url``; nothing is opened until its first call."""
    if url.startswith("sqlite:"):
        from regiongate.control.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        from regiongate.control.postgres import PostgresStore

        dsn, schema = split_pg_url(url)
        return PostgresStore(dsn, schema)
    raise Invalid(
        f"Unsupported control store URL {redact(url)!r}: use 'sqlite:///path.db' or 'postgresql://...'."
    )
