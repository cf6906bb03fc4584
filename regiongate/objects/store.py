"""One object store per region (SQLite file or PostgreSQL DSN/schema each), and the scope rule for
reading them.

An object is written only to the store of the region that holds it, and read only through an endpoint
whose scope contains that region (``pipeline.catalog.in_endpoint``: the same rule that decides where a
request may be processed). Deletion is a real ``DELETE`` (SQLite with ``secure_delete``, so the freed
pages are zeroed); expired objects are deleted by ``purge`` and never returned before that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from regiongate.control.model import redact
from regiongate.control.sqlstore import Conn, Dialect, SqlWorker
from regiongate.control.store import split_pg_url, sqlite_path
from regiongate.core import Access, Endpoint, RouteError

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS stored_objects (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        team TEXT NOT NULL,
        status TEXT NOT NULL,
        processed_region TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        body TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS stored_objects_expiry ON stored_objects (expires_at)",
)
_COLUMNS = "id, kind, team, status, processed_region, created_at, expires_at, body"


@dataclass(slots=True)
class StoredObject:
    id: str
    kind: str  # "deferred" | "response"
    team: str
    status: str  # deferred: pending | done | failed; response: completed | ...
    processed_region: str  # where the request ran ('' while pending)
    created_at: float
    expires_at: float
    body: str  # JSON text


def dialect_for(url: str) -> Dialect:
    if url.startswith("sqlite:"):
        from regiongate.control.sqlite import SqliteDialect

        return SqliteDialect(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        from regiongate.control.postgres import PostgresDialect

        dsn, schema = split_pg_url(url)
        return PostgresDialect(dsn, schema)
    raise ValueError(
        f"Unsupported state store URL {redact(url)!r}: use 'sqlite:///...' or 'postgresql://...'."
    )


class ObjectStore(SqlWorker):
    """The objects of one region, on one connection and thread like the control store."""

    def __init__(self, region: str, url: str) -> None:
        super().__init__(dialect_for(url), f"rg-state-{region}")
        self.region = region
        self.what = f"state store of {region}"

    def _opened(self, conn: Conn) -> None:
        if self.dialect.name == "sqlite":
            conn.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten on disk
        else:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{getattr(self.dialect, "schema", "public")}"')
        for statement in SCHEMA:
            conn.execute(statement)

    def _q(self, statement: str, params: tuple[Any, ...] = ()) -> Any:
        return self._c().execute(self.dialect.sql(statement), params)

    # --- operations ----------------------------------------------------------------------------------
    async def put(self, obj: StoredObject) -> None:
        def put() -> None:
            self._q(
                f"INSERT INTO stored_objects ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    obj.id,
                    obj.kind,
                    obj.team,
                    obj.status,
                    obj.processed_region,
                    obj.created_at,
                    obj.expires_at,
                    obj.body,
                ),
            )

        await self._run(put)

    async def update(self, object_id: str, status: str, processed_region: str, body: str) -> bool:
        def update() -> bool:
            cur = self._q(
                "UPDATE stored_objects SET status = ?, processed_region = ?, body = ? WHERE id = ?",
                (status, processed_region, body, object_id),
            )
            return bool(cur.rowcount)

        return await self._run(update)

    async def get(
        self, object_id: str, kind: str, team: str, now: float | None = None
    ) -> StoredObject | None:
        """The object, if it exists, is of ``kind``, belongs to ``team`` and has not expired."""

        def get() -> StoredObject | None:
            row = self._q(
                f"SELECT {_COLUMNS} FROM stored_objects WHERE id = ? AND kind = ? AND team = ? "
                "AND expires_at > ?",
                (object_id, kind, team, time.time() if now is None else now),
            ).fetchone()
            if row is None:
                return None
            return StoredObject(row[0], row[1], row[2], row[3], row[4], float(row[5]), float(row[6]), row[7])

        return await self._run(get)

    def _scrub(self) -> None:
        """After a delete: an SQLite WAL still holds the row's old page images until a checkpoint; fold
        them into the (secure_delete-zeroed) database and truncate the log, so the bytes are gone."""
        if self.dialect.name == "sqlite":
            self._c().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def delete(self, object_id: str, kind: str, team: str) -> bool:
        def delete() -> bool:
            cur = self._q(
                "DELETE FROM stored_objects WHERE id = ? AND kind = ? AND team = ?", (object_id, kind, team)
            )
            if cur.rowcount:
                self._scrub()
            return bool(cur.rowcount)

        return await self._run(delete)

    async def purge(self, now: float | None = None) -> int:
        """Delete every expired object; returns how many."""

        def purge() -> int:
            cur = self._q(
                "DELETE FROM stored_objects WHERE expires_at <= ?", (time.time() if now is None else now,)
            )
            if cur.rowcount:
                self._scrub()
            return int(cur.rowcount or 0)

        return await self._run(purge)

    async def aclose(self) -> None:
        with suppress(RuntimeError):
            await self._run(self._drop)
        self._pool.shutdown(wait=False)


def not_found(what: str, object_id: str) -> RouteError:
    return RouteError(
        f"No {what} with id '{object_id}' here: it does not exist, has expired or was deleted, or it is "
        "stored in a region outside this endpoint's scope (a regional endpoint reads only objects stored "
        "in its own region; the global endpoint reads any region your key may use).",
        code="not_found",
        status=404,
        type="invalid_request_error",
    )


class RegionalStores:
    """Region id -> its ObjectStore, opened on first use; plus the scope rule for reading."""

    def __init__(self, urls: dict[str, str], in_scope: Callable[[Endpoint, Access, str], bool]) -> None:
        self.urls = urls
        self._in_scope = in_scope
        self._stores: dict[str, ObjectStore] = {}

    def store(self, region: str) -> ObjectStore:
        s = self._stores.get(region)
        if s is None:
            s = self._stores[region] = ObjectStore(region, self.urls[region])
        return s

    def locate(
        self, object_id: str, region: str | None, endpoint: Endpoint, access: Access, what: str
    ) -> ObjectStore:
        """The store that may hold ``object_id`` for this caller, or a 404 that reads nothing elsewhere."""
        if region is None or region not in self.urls or not self._in_scope(endpoint, access, region):
            raise not_found(what, object_id)
        return self.store(region)

    async def purge(self) -> int:
        total = 0
        for s in list(self._stores.values()):
            total += await s.purge()
        return total

    async def aclose(self) -> None:
        for s in self._stores.values():
            await s.aclose()
        self._stores.clear()


def store_urls(template: str, regions: list[str], overrides: dict[str, str], data_dir: str) -> dict[str, str]:
    """Each region's store URL: its override, else the template with ``{region}`` / ``{region_}``, else an
    SQLite file per region in the data dir."""
    out = {}
    for r in regions:
        if r in overrides:
            out[r] = overrides[r]
        elif template:
            out[r] = template.replace("{region_}", r.replace("-", "_")).replace("{region}", r)
        else:
            out[r] = f"sqlite:///{data_dir}/state/{r}.db"
    return out
