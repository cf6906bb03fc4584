"""PostgreSQL through psycopg 3: one control plane shared by many gateways.

The URL may carry ``?schema=name`` (our parameter, removed before connecting): everything then lives in
that schema, created on first migration, so one database can host several installations (and tests).
Migrations take a transaction-scoped advisory lock so gateways starting together migrate once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import psycopg

from regiongate.control.model import redact
from regiongate.control.sqlstore import Conn, SqlStore
from regiongate.core.errors import Invalid

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresDialect:
    name = "postgresql"
    integrity_errors: tuple[type[BaseException], ...] = (psycopg.IntegrityError,)
    unavailable_errors: tuple[type[BaseException], ...] = (psycopg.OperationalError,)
    types = {
        "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "float": "DOUBLE PRECISION",
        "minute_of_at": "CAST(FLOOR(at / 60) AS BIGINT)",  # CAST alone rounds in PostgreSQL
    }

    def __init__(self, dsn: str, schema: str) -> None:
        if not _SCHEMA.match(schema):
            raise Invalid(f"Invalid PostgreSQL schema name {schema!r}: use lower-case letters, digits, '_'.")
        self.dsn = dsn
        self.schema = schema

    @property
    def description(self) -> str:
        return redact(self.dsn) + ("" if self.schema == "public" else f" (schema {self.schema})")

    def connect(self) -> Conn:
        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5, application_name="regiongate")
        # The schema may not exist yet (first migration creates it); search_path tolerates that.
        conn.execute(f'SET search_path TO "{self.schema}"')
        return conn

    def begin(self, conn: Conn, write: bool) -> None:
        conn.execute("BEGIN")

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def before_migrate(self, conn: Conn) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"regiongate-migrate:{self.schema}",))
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')

    def executemany(self, conn: Conn, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        with conn.cursor() as cur:  # type: ignore[attr-defined]
            cur.executemany(self.sql(statement), rows)

    def broken(self, conn: Conn) -> bool:
        return bool(conn.closed or conn.broken)  # type: ignore[attr-defined]


class PostgresStore(SqlStore):
    def __init__(self, dsn: str, schema: str = "public") -> None:
        super().__init__(PostgresDialect(dsn, schema))
