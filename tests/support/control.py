"""Helpers for the control-plane tests: PostgreSQL schemas per test, polling with a deadline, configs."""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest

from regiongate.config import demo_config_text
from tests.support.procs import Proc

T = TypeVar("T")
PG_DSN = os.environ.get("REGIONGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN_KEY = "rg-admin-test-key-0123456789"


@functools.cache
def http() -> httpx.Client:
    """One client for the whole run: creating an httpx client costs tens of milliseconds (TLS context)."""
    return httpx.Client(timeout=10)


def require_pg() -> None:
    """Skip without PostgreSQL, except in CI (CI=true), where a missing database is a failure."""
    import psycopg

    try:
        with psycopg.connect(PG_DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as e:
        msg = f"PostgreSQL is not reachable at {PG_DSN}: {str(e).strip()[:200]}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " (CI=true: .ci/run starts it)")
        pytest.skip(msg)


def new_schema() -> str:
    return "rgtest_" + uuid.uuid4().hex[:12]


def pg_url(schema: str) -> str:
    return f"{PG_DSN}?schema={schema}"


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def poll(check: Callable[[], T | None], timeout: float = 60.0, every: float = 0.05) -> tuple[T, float]:
    """Call ``check`` until it returns something truthy; returns it and the seconds it took."""
    start = time.monotonic()
    deadline = start + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last, time.monotonic() - start
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def control_config(**control: object) -> str:
    """The demo world with a ``[control]`` section (strings quoted, numbers as they are)."""
    lines = ["", "[control]"]
    for k, v in control.items():
        lines.append(
            f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {str(v).lower() if isinstance(v, bool) else v}"
        )
    return demo_config_text() + "\n".join(lines) + "\n"


CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def admin(gw: Proc, method: str, path: str, body: Any = None, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    return http().request(method, gw.url + path, json=body, content=raw, headers=headers)


def chat(gw: Proc, key: str, model: str, host: str = "localhost", **extra: Any) -> httpx.Response:
    return http().post(
        gw.url + "/v1/chat/completions",
        json={"model": model, **CHAT, **extra},
        headers={"Authorization": f"Bearer {key}", "Host": host},
    )


def get(gw: Proc, key: str, path: str, host: str = "localhost") -> httpx.Response:
    return http().get(gw.url + path, headers={"Authorization": f"Bearer {key}", "Host": host})


def new_key(gw: Proc, team: str, **body: Any) -> str:
    r = admin(gw, "POST", f"/admin/teams/{team}/keys", body)
    assert r.status_code == 201, r.text
    secret = r.json()["key"]
    poll(lambda: get(gw, secret, "/v1/models").status_code == 200, timeout=10)
    return str(secret)


def code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])
