"""The SQL body shared by the SQLite and PostgreSQL stores.

Both drivers are used synchronously on one dedicated thread per store (the stdlib ``sqlite3`` module has
no async API, and one connection per store is plenty for a control plane whose hot path never calls it);
the async methods hand work to that thread. Statements are written with ``?`` placeholders and the
dialect rewrites them. Every mutation runs in one transaction that also bumps ``revision``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any, Protocol, TypeVar

from regiongate.control.migrations import MIGRATIONS, MIGRATIONS_TABLE
from regiongate.control.model import AccessSnapshot, ApiKey, NewKey, Team, UsageRow, check_name
from regiongate.core import Access, Grant
from regiongate.core.errors import Conflict, NotFound, StoreUnavailable
from regiongate.core.tiers import Tier
from regiongate.pipeline.auth import Principal
from regiongate.pipeline.usage import UsageRecord, UsageTotals, utc_day

T = TypeVar("T")


class Conn(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...

    def close(self) -> None: ...


class Dialect(Protocol):
    name: str
    integrity_errors: tuple[type[BaseException], ...]
    unavailable_errors: tuple[type[BaseException], ...]
    types: dict[str, str]  # fills {id}, {float} and {minute_of_at} in migrations

    def connect(self) -> Conn: ...

    def begin(self, conn: Conn, write: bool) -> None: ...

    def sql(self, statement: str) -> str: ...

    def before_migrate(self, conn: Conn) -> None:
        """Inside the migration transaction, before anything: take a lock, create the schema."""

    def executemany(self, conn: Conn, statement: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def broken(self, conn: Conn) -> bool: ...

    @property
    def description(self) -> str: ...


_KEY_COLUMNS = (
    "k.id, t.name, k.name, k.hint, k.zone, k.spill_budget_ms, k.created_at, k.revoked_at, k.continuation, "
    "k.ttft_budget_ms, k.service_tier"
)


def _tiers_column(tiers: Sequence[Tier] | None) -> str | None:
    """A team's allow-list as stored: NULL for every tier, else the tiers comma-separated ('' for none)."""
    return None if tiers is None else ",".join(t.value for t in dict.fromkeys(tiers))


def _tiers(column: str | None) -> tuple[Tier, ...] | None:
    return None if column is None else tuple(Tier(t) for t in column.split(",") if t)


def _key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        None if row[5] is None else float(row[5]),
        float(row[6]),
        None if row[7] is None else float(row[7]),
        bool(row[8]),
        None if row[9] is None else float(row[9]),
        Tier(row[10]),
    )


_UPSERT_MINUTES = (
    "INSERT INTO usage_minutes (minute, day, team, key_id, model, region, tier, requests, errors, "
    "prompt_tokens, completion_tokens, ttft_ms_sum, ttft_count, total_ms_sum, estimated) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (team, minute, key_id, model, region, tier) DO UPDATE SET "
    + ", ".join(
        f"{c} = usage_minutes.{c} + excluded.{c}"
        for c in (
            "requests",
            "errors",
            "prompt_tokens",
            "completion_tokens",
            "ttft_ms_sum",
            "ttft_count",
            "total_ms_sum",
            "estimated",
        )
    )
)
_INSERT_ROW = (
    "INSERT INTO usage_records (at, day, request_id, team, key_id, model, endpoint, region, route, status, "
    "prompt_tokens, completion_tokens, ttft_ms, total_ms, estimated, hops, tier) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _minutes(records: Sequence[UsageRecord]) -> list[tuple[Any, ...]]:
    """``records`` summed per (team, minute, key, model, region, tier): sums and counts, never averages."""
    acc: dict[tuple[str, int, str, str, str, str], list[Any]] = {}
    for r in records:
        k = (r.team, int(r.at // 60), r.key_id, r.model, r.region, r.tier)
        a = acc.get(k)
        if a is None:
            acc[k] = a = [0, 0, 0, 0, 0.0, 0, 0.0, 0]
        a[0] += 1
        a[1] += r.status >= 400
        a[2] += r.prompt_tokens
        a[3] += r.completion_tokens
        if r.ttft_ms is not None:
            a[4] += r.ttft_ms
            a[5] += 1
        a[6] += r.total_ms
        a[7] += r.estimated
    return [
        (m, utc_day(m // 1440), t, key, mod, reg, tier, *a) for (t, m, key, mod, reg, tier), a in acc.items()
    ]


def _row(r: UsageRecord) -> tuple[Any, ...]:
    return (
        r.at,
        utc_day(int(r.at // 86400)),
        r.request_id,
        r.team,
        r.key_id,
        r.model,
        r.endpoint,
        r.region,
        r.route,
        r.status,
        r.prompt_tokens,
        r.completion_tokens,
        r.ttft_ms,
        r.total_ms,
        r.estimated,
        "; ".join(r.hops),
        r.tier,
    )


class SqlWorker:
    """One connection, used on one dedicated thread (see the module docstring); the async callers hand it
    work with ``_run``. A driver's "unavailable" error drops the connection (the next call reconnects) and
    surfaces as ``StoreUnavailable`` naming ``what`` the store is."""

    what = "control store"

    def __init__(self, dialect: Dialect, thread_name: str = "") -> None:
        self.dialect = dialect
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name or f"rg-{dialect.name}")
        self._conn: Conn | None = None

    @property
    def description(self) -> str:
        return self.dialect.description

    # --- plumbing (runs on the store's thread) -------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(self._guard, fn, *args))

    def _guard(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except self.dialect.unavailable_errors as e:
            self._drop()
            raise StoreUnavailable(
                f"The {self.what} ({self.description}) is unavailable: {type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'}"
            ) from None

    def _drop(self) -> None:
        if self._conn is not None:
            with suppress(Exception):
                self._conn.close()
            self._conn = None

    def _opened(self, conn: Conn) -> None:
        """Called once on each new connection (subclasses prepare it)."""

    def _c(self) -> Conn:
        if self._conn is not None and self.dialect.broken(self._conn):
            self._drop()
        if self._conn is None:
            conn = self.dialect.connect()
            self._opened(conn)
            self._conn = conn
        return self._conn


class SqlStore(SqlWorker):
    def _q(self, statement: str, params: Sequence[Any] = ()) -> Any:
        return self._c().execute(self.dialect.sql(statement), params)

    @contextmanager
    def _tx(self, bump: bool = False, write: bool = True) -> Iterator[None]:
        conn = self._c()
        self.dialect.begin(conn, write)
        try:
            yield
            if bump:
                self._q("UPDATE revision SET rev = rev + 1 WHERE id = 1")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except Exception:
                self._drop()
            raise
        conn.execute("COMMIT")

    def _team_id(self, name: str) -> int:
        row = self._q("SELECT id FROM teams WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"Unknown team '{name}'.", param="team")
        return int(row[0])

    def _grants(self, team_id: int) -> tuple[Grant, ...]:
        rows = self._q(
            "SELECT model, region FROM grants WHERE team_id = ? ORDER BY model, region", (team_id,)
        ).fetchall()
        return tuple(Grant(m, r or None) for m, r in rows)

    def _team(self, name: str) -> Team:
        row = self._q(
            "SELECT id, restricted, created_at, service_tiers FROM teams WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFound(f"Unknown team '{name}'.", param="team")
        return Team(name, self._grants(int(row[0])) if row[1] else None, float(row[2]), _tiers(row[3]))

    def _put_grants(self, team_id: int, grants: Sequence[Grant] | None) -> None:
        self._q("DELETE FROM grants WHERE team_id = ?", (team_id,))
        self._q("UPDATE teams SET restricted = ? WHERE id = ?", (grants is not None, team_id))
        for g in dict.fromkeys(grants or ()):  # de-duplicated, order kept
            self._q(
                "INSERT INTO grants (team_id, model, region) VALUES (?, ?, ?)",
                (team_id, g.model, g.region or ""),
            )

    # --- migrations ----------------------------------------------------------------------------------
    def _migrate(self) -> int:
        types = self.dialect.types
        with self._tx():
            self.dialect.before_migrate(self._c())
            self._q(MIGRATIONS_TABLE.format(**types))
            done = {int(r[0]) for r in self._q("SELECT version FROM schema_migrations").fetchall()}
        for m in MIGRATIONS:
            if m.version in done:
                continue
            with self._tx():
                self.dialect.before_migrate(self._c())
                # Another process may have applied it while we waited for the lock.
                if self._q("SELECT 1 FROM schema_migrations WHERE version = ?", (m.version,)).fetchone():
                    continue
                for statement in m.statements:
                    self._q(statement.format(**types))
                self._q(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (m.version, m.name, time.time()),
                )
        return self._schema_version()

    def _schema_version(self) -> int:
        row = self._q("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    async def migrate(self) -> int:
        return await self._run(self._migrate)

    async def schema_version(self) -> int:
        return await self._run(self._schema_version)

    async def revision(self) -> int:
        return await self._run(lambda: int(self._q("SELECT rev FROM revision WHERE id = 1").fetchone()[0]))

    # --- teams ---------------------------------------------------------------------------------------
    def _create_team(
        self, name: str, grants: Sequence[Grant] | None, service_tiers: Sequence[Tier] | None
    ) -> Team:
        check_name(name)
        try:
            with self._tx(bump=True):
                self._q(
                    "INSERT INTO teams (name, restricted, created_at, service_tiers) VALUES (?, ?, ?, ?)",
                    (name, grants is not None, time.time(), _tiers_column(service_tiers)),
                )
                self._put_grants(self._team_id(name), grants)
        except self.dialect.integrity_errors:
            raise Conflict(f"A team named '{name}' already exists.", param="name") from None
        return self._team(name)

    async def create_team(
        self, name: str, grants: Sequence[Grant] | None = None, service_tiers: Sequence[Tier] | None = None
    ) -> Team:
        return await self._run(self._create_team, name, grants, service_tiers)

    async def get_team(self, name: str) -> Team:
        return await self._run(self._team, name)

    async def list_teams(self) -> list[Team]:
        def run() -> list[Team]:
            names = [r[0] for r in self._q("SELECT name FROM teams ORDER BY name").fetchall()]
            return [self._team(n) for n in names]

        return await self._run(run)

    async def set_grants(self, name: str, grants: Sequence[Grant] | None) -> Team:
        def run() -> Team:
            with self._tx(bump=True):
                self._put_grants(self._team_id(name), grants)
            return self._team(name)

        return await self._run(run)

    async def set_service_tiers(self, name: str, service_tiers: Sequence[Tier] | None) -> Team:
        def run() -> Team:
            with self._tx(bump=True):
                team_id = self._team_id(name)
                self._q(
                    "UPDATE teams SET service_tiers = ? WHERE id = ?", (_tiers_column(service_tiers), team_id)
                )
            return self._team(name)

        return await self._run(run)

    async def delete_team(self, name: str) -> None:
        def run() -> None:
            with self._tx(bump=True):
                team_id = self._team_id(name)
                # Explicit deletes: SQLite enforces ON DELETE CASCADE only with a pragma.
                self._q("DELETE FROM grants WHERE team_id = ?", (team_id,))
                self._q("DELETE FROM api_keys WHERE team_id = ?", (team_id,))
                self._q("DELETE FROM teams WHERE id = ?", (team_id,))

        await self._run(run)

    # --- keys ----------------------------------------------------------------------------------------
    def _get_key(self, key_id: str) -> ApiKey:
        row = self._q(
            f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN teams t ON t.id = k.team_id WHERE k.id = ?",
            (key_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"Unknown key id '{key_id}'.", param="key_id")
        return _key(row)

    async def add_key(self, team: str, key: NewKey) -> ApiKey:
        def run() -> ApiKey:
            try:
                with self._tx(bump=True):
                    self._q(
                        "INSERT INTO api_keys (id, team_id, name, key_hash, hint, zone, spill_budget_ms, "
                        "created_at, continuation, ttft_budget_ms, service_tier) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            key.id,
                            self._team_id(team),
                            key.name,
                            key.key_hash,
                            key.hint,
                            key.zone,
                            key.spill_budget_ms,
                            time.time(),
                            key.continuation,
                            key.ttft_budget_ms,
                            key.service_tier.value,
                        ),
                    )
            except self.dialect.integrity_errors:
                raise Conflict(f"Key id '{key.id}' or its hash already exists.", param="key_id") from None
            return self._get_key(key.id)

        return await self._run(run)

    async def list_keys(self, team: str | None = None) -> list[ApiKey]:
        def run() -> list[ApiKey]:
            base = f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN teams t ON t.id = k.team_id"
            if team is None:
                rows = self._q(base + " ORDER BY t.name, k.created_at, k.id").fetchall()
            else:
                team_id = self._team_id(team)
                rows = self._q(base + " WHERE k.team_id = ? ORDER BY k.created_at, k.id", (team_id,))
                rows = rows.fetchall()
            return [_key(r) for r in rows]

        return await self._run(run)

    async def revoke_key(self, key_id: str) -> ApiKey:
        def run() -> ApiKey:
            with self._tx(bump=True):
                key = self._get_key(key_id)
                if not key.active:
                    raise Conflict(f"Key '{key_id}' is already revoked.", param="key_id")
                self._q("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (time.time(), key_id))
            return self._get_key(key_id)

        return await self._run(run)

    # --- the hot path's snapshot -----------------------------------------------------------------------
    def _load_access(self) -> AccessSnapshot:
        with self._tx(write=False):  # one consistent read
            rev = int(self._q("SELECT rev FROM revision WHERE id = 1").fetchone()[0])
            grants: dict[int, list[Grant]] = {}
            for team_id, model, region in self._q("SELECT team_id, model, region FROM grants").fetchall():
                grants.setdefault(int(team_id), []).append(Grant(model, region or None))
            rows = self._q(
                "SELECT k.key_hash, k.id, k.zone, k.spill_budget_ms, t.id, t.name, t.restricted, "
                "k.continuation, k.ttft_budget_ms, k.service_tier, t.service_tiers "
                "FROM api_keys k JOIN teams t ON t.id = k.team_id WHERE k.revoked_at IS NULL"
            ).fetchall()
            signing = self._q("SELECT jwk FROM signing_keys ORDER BY created_at").fetchall()
        by_hash: dict[str, Principal] = {}
        for key_hash, key_id, zone, budget, team_id, team, restricted, cont, ttft, tier, tiers in rows:
            team_grants = tuple(grants.get(int(team_id), ())) if restricted else None
            allowed = _tiers(tiers)
            access = Access(
                team,
                team_grants,
                zone,
                None if budget is None else float(budget),
                Tier(tier),
                None if allowed is None else frozenset(allowed),
            )
            by_hash[key_hash] = Principal(
                team, key_id, access, bool(cont), None if ttft is None else float(ttft)
            )
        return AccessSnapshot(rev, by_hash, tuple(json.loads(r[0]) for r in signing))

    async def load_access(self) -> AccessSnapshot:
        return await self._run(self._load_access)

    # --- usage ---------------------------------------------------------------------------------------
    async def write_usage(
        self, records: Sequence[UsageRecord], rows: Sequence[UsageRecord] | None = None
    ) -> None:
        """Fold ``records`` into the per-minute aggregates and keep ``rows`` (default: all of them) as
        per-request rows, in one transaction. Both are built on the store's thread, off the loop."""

        def run() -> None:
            upserts = _minutes(records)
            kept = [_row(r) for r in (records if rows is None else rows)]
            with self._tx():
                if upserts:
                    self.dialect.executemany(self._c(), _UPSERT_MINUTES, upserts)
                if kept:
                    self.dialect.executemany(self._c(), _INSERT_ROW, kept)

        if records or rows:
            await self._run(run)

    async def hops_of(self, request_id: str) -> list[str]:
        def run() -> list[str]:
            row = self._q("SELECT hops FROM usage_records WHERE request_id = ?", (request_id,)).fetchone()
            return row[0].split("; ") if row is not None and row[0] else []

        return await self._run(run)

    async def usage(self, team: str, since_day: str | None = None) -> list[UsageRow]:
        def run() -> list[UsageRow]:
            # Grouped by tier too, then folded per (day, model, region): sums and counts, not averages, so
            # that the row's averages weigh each tier by its requests.
            rows = self._q(
                "SELECT day, model, region, tier, SUM(requests), SUM(errors), SUM(prompt_tokens), "
                "SUM(completion_tokens), SUM(ttft_ms_sum), SUM(ttft_count), SUM(total_ms_sum), SUM(estimated) "
                "FROM usage_minutes WHERE team = ? AND day >= ? GROUP BY day, model, region, tier "
                "ORDER BY day, model, region, tier",
                (team, since_day or ""),
            ).fetchall()
            folded: dict[tuple[str, str, str], list[Any]] = {}
            for d, m, r, tier, *sums in rows:
                # PostgreSQL's SUM of a BIGINT is a NUMERIC (Decimal): every count back to int
                n, e, p, c, timed, est = (int(sums[i]) for i in (0, 1, 2, 3, 5, 7))
                ttft, tot = float(sums[4]), float(sums[6])
                acc = folded.setdefault((d, m, r), [0, 0, 0, 0, 0.0, 0, 0.0, 0, {}])
                for i, v in enumerate((n, e, p, c, ttft, timed, tot, est)):
                    acc[i] += v
                acc[8][tier] = UsageTotals(n, e, p, c, est)
            return [
                UsageRow(
                    d,
                    m,
                    r,
                    int(n),
                    int(e),
                    int(p),
                    int(c),
                    ttft / timed if timed else None,
                    tot / n,
                    int(est),
                    by_tier,
                )
                for (d, m, r), (n, e, p, c, ttft, timed, tot, est, by_tier) in folded.items()
            ]

        return await self._run(run)

    # --- receipt keys --------------------------------------------------------------------------------
    async def publish_signing_key(self, kid: str, jwk: dict[str, str]) -> None:
        def run() -> None:
            with self._tx():
                if self._q("SELECT 1 FROM signing_keys WHERE kid = ?", (kid,)).fetchone():
                    return
                self._q(
                    "INSERT INTO signing_keys (kid, jwk, created_at) VALUES (?, ?, ?)",
                    (kid, json.dumps(jwk, sort_keys=True), time.time()),
                )
                self._q("UPDATE revision SET rev = rev + 1 WHERE id = 1")

        with suppress(*self.dialect.integrity_errors):  # another gateway published it at the same moment
            await self._run(run)

    async def aclose(self) -> None:
        try:
            await self._run(self._drop)
        finally:
            self._pool.shutdown(wait=True)
