"""Two gateway processes on one PostgreSQL control store: a key created, a grant changed or a key revoked
through one gateway applies on the other within the refresh interval; usage and receipt keys are shared."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from regiongate.pipeline import receipts
from tests.support.control import (
    ADMIN_KEY,
    admin,
    chat,
    control_config,
    drop_schema,
    get,
    http,
    new_schema,
    pg_url,
    poll,
    require_pg,
)

REFRESH_S = 0.5
# A change must show on the other gateway within a few refresh intervals (generous for a loaded CI box).
DEADLINE_S = REFRESH_S * 4 + 2


@pytest.fixture
def schema() -> Iterator[str]:
    require_pg()
    name = new_schema()
    yield name
    drop_schema(name)


def test_two_gateways_share_one_postgresql_control_plane(
    schema: str, start_gateway: Any, tmp_path: Path
) -> None:
    # The schema fixture comes first so that the gateways stop before it is dropped.
    cfg = control_config(store=pg_url(schema), refresh_s=REFRESH_S, usage_flush_s=0.2)
    a = start_gateway(cfg, env={"REGIONGATE_ADMIN_KEY": ADMIN_KEY})
    # B keeps its receipt key elsewhere: its public key reaches A's key set through the store.
    b = start_gateway(
        cfg, env={"REGIONGATE_ADMIN_KEY": ADMIN_KEY, "REGIONGATE_DATA_DIR": str(tmp_path / "b")}
    )

    assert admin(a, "POST", "/admin/teams", {"name": "acme"}).status_code == 201
    created = admin(a, "POST", "/admin/teams/acme/keys", {"name": "shared"}).json()
    key, key_id = created["key"], created["id"]
    poll(lambda: all(chat(g, key, "grok-4").status_code == 200 for g in (a, b)), timeout=10)
    assert admin(b, "GET", "/admin/keys?team=acme").json()["data"][0]["id"] == key_id

    # Usage written by both gateways is one aggregate.
    def total() -> int | None:
        n = sum(r["requests"] for r in get(a, key, "/v1/usage").json()["data"])
        return n if n >= 4 else None

    chat(a, key, "grok-4-fast")
    chat(b, key, "grok-4-fast")
    assert poll(total, timeout=10)[0] >= 4

    # Receipts signed by B verify with the key set A serves.
    token = chat(b, key, "grok-4").headers[receipts.HEADER]
    poll(lambda: len(http().get(a.url + receipts.JWKS_PATH).json()["keys"]) == 2, timeout=10)
    assert receipts.verify(token, http().get(a.url + receipts.JWKS_PATH).json())["team"] == "acme"

    # A grant change made through B applies on A.
    grants = {"grants": [{"model": "grok-4", "region": "eu-west-1"}]}
    assert admin(b, "PUT", "/admin/teams/acme/grants", grants).status_code == 200
    _, took_grant = poll(
        lambda: chat(a, key, "grok-4-fast").status_code == 404, timeout=DEADLINE_S, every=0.02
    )
    assert [m["id"] for m in get(a, key, "/v1/models").json()["data"]] == ["grok-4"]
    assert chat(a, key, "grok-4").headers["x-regiongate-region"] == "eu-west-1"

    # A revocation made through A applies on B.
    assert admin(a, "DELETE", f"/admin/keys/{key_id}").status_code == 200
    _, took_revoke = poll(lambda: chat(b, key, "grok-4").status_code == 401, timeout=DEADLINE_S, every=0.02)
    assert chat(a, key, "grok-4").status_code == 401
    print(
        f"grant change seen by the other gateway after {took_grant:.2f}s, revocation after {took_revoke:.2f}s"
    )
