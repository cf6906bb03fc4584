"""The per-region object stores: one contract over SQLite and PostgreSQL (one schema per region), the
scope rule for reads, retention per team, purge, and a deferred completion that outlived its process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from regiongate.config import parse_config
from regiongate.core import GLOBAL, Access, Endpoint, EndpointKind, RouteError
from regiongate.objects.deferred import Deferred
from regiongate.objects.ids import new_id, region_of
from regiongate.objects.service import ObjectState
from regiongate.objects.store import RegionalStores, StoredObject, store_urls
from regiongate.pipeline.auth import Principal
from tests.support.control import drop_schema, new_schema, pg_url, require_pg
from tests.support.worlds import DEMO_REGIONS, world

REGIONS = {"us-east-1": "us", "eu-west-1": "eu"}
WORLD = world(
    {}, regions={r: DEMO_REGIONS[r] for r in REGIONS}, extra='[[teams]]\nname = "brief"\nretention_s = 60\n'
)


def in_scope(endpoint: Endpoint, access: Access, region: str) -> bool:
    from regiongate.core import scope

    return scope.in_scope(endpoint, access, region, REGIONS[region])


@pytest.fixture(params=["sqlite", "postgresql"])
async def urls(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    if request.param == "sqlite":
        yield store_urls("", list(REGIONS), {}, str(tmp_path))
        return
    require_pg()
    base = new_schema()
    yield store_urls(pg_url(base + "_{region_}"), list(REGIONS), {}, "")
    for r in REGIONS:
        drop_schema(base + "_" + r.replace("-", "_"))


def obj(oid: str, team: str = "t", expires: float | None = None) -> StoredObject:
    now = time.time()
    return StoredObject(
        oid,
        "response",
        team,
        "completed",
        oid.split("_")[1],
        now,
        expires if expires is not None else now + 60,
        '{"x": 1}',
    )


def test_ids_name_their_region() -> None:
    oid = new_id("resp", "eu-west-1")
    assert region_of(oid, "resp") == "eu-west-1"
    for bad in (
        "",
        "resp",
        "resp_eu-west-1",
        "defer_eu-west-1_" + "0" * 24,
        "resp_eu_west_1_" + "0" * 24,
        "resp_eu-west-1_" + "g" * 24,
        "resp__" + "0" * 24,
    ):
        assert region_of(bad, "resp") is None, bad


def test_template_and_overrides() -> None:
    urls = store_urls(
        "postgresql://db/rg?schema=state_{region_}",
        ["eu-west-1", "us-east-1"],
        {"us-east-1": "postgresql://us-db/rg"},
        "",
    )
    assert urls == {
        "eu-west-1": "postgresql://db/rg?schema=state_eu_west_1",
        "us-east-1": "postgresql://us-db/rg",
    }


async def test_contract(urls: dict[str, str]) -> None:
    stores = RegionalStores(urls, in_scope)
    try:
        eu, us = new_id("resp", "eu-west-1"), new_id("resp", "us-east-1")
        await stores.store("eu-west-1").put(obj(eu))
        await stores.store("us-east-1").put(obj(us))
        # each region's store holds only its own objects
        assert await stores.store("us-east-1").get(eu, "response", "t") is None
        got = await stores.store("eu-west-1").get(eu, "response", "t")
        assert got is not None and got.body == '{"x": 1}' and got.processed_region == "eu-west-1"
        assert await stores.store("eu-west-1").get(eu, "response", "other-team") is None
        assert await stores.store("eu-west-1").get(eu, "deferred", "t") is None
        # the scope rule: a regional endpoint reads only its own region; a fenced key only its zone
        everyone = Access("t")
        assert stores.locate(eu, "eu-west-1", GLOBAL, everyone, "response").region == "eu-west-1"
        for endpoint, access in (
            (Endpoint(EndpointKind.REGION, "us-east-1"), everyone),
            (Endpoint(EndpointKind.ZONE, "us"), everyone),
            (GLOBAL, Access("t", None, "us")),
            (GLOBAL, everyone),
        ):
            region = "eu-west-1" if endpoint is not GLOBAL or access.zone else "nowhere"
            with pytest.raises(RouteError) as e:
                stores.locate(eu, region, endpoint, access, "response")
            assert e.value.status == 404
        assert await stores.store("eu-west-1").update(eu, "done", "eu-west-1", "{}")
        assert await stores.store("eu-west-1").delete(eu, "response", "t")
        assert not await stores.store("eu-west-1").delete(eu, "response", "t")
        assert await stores.store("eu-west-1").get(eu, "response", "t") is None
        # expired objects are invisible at once and deleted by purge
        old = new_id("resp", "us-east-1")
        await stores.store("us-east-1").put(obj(old, expires=time.time() - 1))
        assert await stores.store("us-east-1").get(old, "response", "t") is None
        assert await stores.purge() == 1
        assert await stores.store("us-east-1").get(us, "response", "t") is not None
    finally:
        await stores.aclose()


async def test_retention_per_team_and_an_orphaned_deferred_expires(tmp_path: Path) -> None:
    cfg = parse_config(WORLD + "\n[state]\nretention_s = 3600\ndeferred_timeout_s = 5\n")
    state = ObjectState(cfg, str(tmp_path), in_scope)
    try:
        assert state.retention_s("brief") == 60 and state.retention_s("anyone") == 3600
        deferred = Deferred(state, lambda: None, lambda: None)  # type: ignore[arg-type, return-value]
        # A pending record whose process died before it finished (no task runs it any more).
        oid = new_id("defer", "us-east-1")
        now = time.time()
        await state.stores.store("us-east-1").put(
            StoredObject(oid, "deferred", "brief", "pending", "", now - 10, now + 60, "{}")
        )
        who = Principal("brief", "k", Access("brief"))
        assert (await deferred.get(oid, GLOBAL, who, "defer")).status == "expired"
        fresh = new_id("defer", "us-east-1")
        await state.stores.store("us-east-1").put(
            StoredObject(fresh, "deferred", "brief", "pending", "", now, now + 60, "{}")
        )
        assert (await deferred.get(fresh, GLOBAL, who, "defer")).status == "pending"
        with pytest.raises(RouteError):
            await deferred.get(fresh, Endpoint(EndpointKind.REGION, "eu-west-1"), who, "defer")
    finally:
        await state.aclose()


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ('store = "postgresql://db/rg"', "state.store"),
        ('store = "redis://x/{region}"', "state.store"),
        ('regions = { "us-east-1" = "sqlite:///a.db", "eu-west-1" = "sqlite:///a.db" }', "state.regions"),
        ('regions = { "mars-1" = "sqlite:///m.db" }', "state.regions"),
    ],
)
def test_config_refuses_a_store_shared_by_regions(section: str, field: str) -> None:
    from regiongate.config import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_config(WORLD + f"\n[state]\n{section}\n")
    assert field in str(e.value) or "state.regions" in str(e.value)
