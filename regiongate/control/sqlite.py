"""SQLite: the embedded default. One file, WAL mode so several gateway workers (processes) can read
while one writes; writers wait up to ``busy_timeout`` for each other instead of failing."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from regiongate.control.sqlstore import Conn, SqlStore

BUSY_S = 10.0  # how long a writer waits for another


def _enter_wal(conn: sqlite3.Connection) -> None:
    # Two processes opening a fresh file at once both switch it to WAL; SQLite answers one of them
    # SQLITE_BUSY at once, without calling the busy handler, so `timeout` does not cover it. WAL is
    # persistent: retrying until the other connection's switch is done succeeds (or finds WAL already on).
    deadline = time.monotonic() + BUSY_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


class SqliteDialect:
    name = "sqlite"
    integrity_errors: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)
    unavailable_errors: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)
    types = {
        "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "float": "DOUBLE PRECISION",
        "minute_of_at": "CAST(at / 60 AS INTEGER)",  # truncates: at is never negative
    }

    def __init__(self, path: str) -> None:
        self.path = path

    @property
    def description(self) -> str:
        return f"sqlite:{self.path}"

    def connect(self) -> Conn:
        if self.path != ":memory:":
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_S, check_same_thread=False)
        _enter_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def begin(self, conn: Conn, write: bool) -> None:
        # IMMEDIATE takes the write lock up front, so two writers queue instead of deadlocking.
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def sql(self, statement: str) -> str:
        return statement

    def before_migrate(self, conn: Conn) -> None:
        return None  # BEGIN IMMEDIATE already serialises migrating processes

    def executemany(self, conn: Conn, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        conn.executemany(statement, rows)  # type: ignore[attr-defined]

    def broken(self, conn: Conn) -> bool:
        return False


class SqliteStore(SqlStore):
    def __init__(self, path: str) -> None:
        super().__init__(SqliteDialect(path))
