"""The ControlStore contract, run against SQLite and PostgreSQL alike; plus the key cache and the batched
usage writer over a real store."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from regiongate.config import load_config
from regiongate.control import sqlstore
from regiongate.control.keys import CachedKeys
from regiongate.control.metering import BatchUsageWriter
from regiongate.control.migrations import LATEST, MIGRATIONS
from regiongate.control.model import AccessSnapshot, NewKey
from regiongate.control.ops import Operations
from regiongate.control.sqlite import SqliteDialect
from regiongate.control.sqlstore import SqlStore
from regiongate.control.store import ControlStore, open_store, redact, split_pg_url
from regiongate.core import Access, Grant
from regiongate.core.errors import Conflict, Invalid, NotFound, StoreUnavailable
from regiongate.core.tiers import Tier
from regiongate.pipeline.auth import Principal, hash_key
from regiongate.pipeline.usage import MemoryUsage, UsageRecord
from tests.support.control import drop_schema, new_schema, pg_url, require_pg

DAY = 86400.0


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/control.db"
        return
    require_pg()
    schema = new_schema()
    yield pg_url(schema)
    drop_schema(schema)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[ControlStore]:
    s = open_store(store_url)
    await s.migrate()
    yield s
    await s.aclose()


def key(n: int, zone: str | None = None, budget: float | None = None, name: str = "") -> NewKey:
    return NewKey(f"key_{n:012x}", hash_key(f"rg-secret-{n}"), "rg-sec", name, zone, budget)


def record(
    team: str, at: float, model: str = "grok-4", region: str = "us-east-1", status: int = 200
) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{at}",
        team=team,
        key_id="key_x",
        model=model,
        endpoint="global",
        region=region,
        route="nearest",
        status=status,
        prompt_tokens=10,
        completion_tokens=5,
        ttft_ms=80.0 if status == 200 else None,
        total_ms=120.0,
        at=at,
    )


async def test_migrations_are_versioned_and_idempotent(store_url: str) -> None:
    a, b = open_store(store_url), open_store(store_url)
    try:
        # Two processes starting together on a fresh database both succeed and migrate once.
        versions = await asyncio.gather(a.migrate(), b.migrate())
        assert versions == [LATEST, LATEST]
        assert await a.migrate() == LATEST
        assert await b.schema_version() == LATEST == len(MIGRATIONS)
        assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))
    finally:
        await a.aclose()
        await b.aclose()


def test_workers_opening_a_fresh_sqlite_file_together_all_get_in(tmp_path: Path) -> None:
    # Switching a new file to WAL is refused at once (no busy wait) to all but one of the connections
    # racing to do it; on a gateway with --workers 4 that was a worker failing to start.
    errors: list[sqlite3.OperationalError] = []

    def open_one(path: str, start: threading.Barrier) -> None:
        start.wait()
        try:
            SqliteDialect(path).connect().close()
        except sqlite3.OperationalError as e:
            errors.append(e)

    for i in range(40):
        start = threading.Barrier(4)
        threads = [
            threading.Thread(target=open_one, args=(str(tmp_path / f"{i}.db"), start)) for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


async def test_a_store_from_before_the_tiers_upgrades_in_place(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlstore, "MIGRATIONS", MIGRATIONS[:6])  # the schema as it shipped before tiers
    old = open_store(store_url)
    assert isinstance(old, SqlStore) and await old.migrate() == 6

    def seed() -> None:
        with old._tx():
            old._q("INSERT INTO teams (name, restricted, created_at) VALUES (?, ?, ?)", ("acme", False, 1.0))
            old._q(
                "INSERT INTO api_keys (id, team_id, key_hash, hint, created_at) "
                "VALUES (?, (SELECT id FROM teams WHERE name = ?), ?, ?, ?)",
                ("key_000000000001", "acme", hash_key("rg-secret-1"), "rg-sec", 1.0),
            )

            old._q(
                "INSERT INTO usage_records (at, day, request_id, team, key_id, model, endpoint, region, route, "
                "status, prompt_tokens, completion_tokens, total_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    1.0,
                    "2026-12-01",
                    "req_old",
                    "acme",
                    "key_x",
                    "grok-4",
                    "global",
                    "us-east-1",
                    "nearest",
                    200,
                    1,
                    1,
                    5.0,
                ),
            )

    await old._run(seed)
    await old.aclose()
    monkeypatch.undo()
    new = open_store(store_url)
    try:
        assert await new.migrate() == LATEST
        assert (await new.get_team("acme")).service_tiers is None  # every tier, as before
        assert [k.service_tier for k in await new.list_keys("acme")] == [Tier.DEFAULT]
        assert (await new.load_access()).by_hash[hash_key("rg-secret-1")].access.tiers is None
        assert list((await new.usage("acme"))[0].by_tier) == ["default"]  # old rows ran at default
    finally:
        await new.aclose()


async def test_teams_create_get_list_grants_delete(store: ControlStore) -> None:
    rev0 = await store.revision()
    t = await store.create_team("acme")
    assert t.name == "acme" and t.grants is None
    g = (Grant("grok-4", "eu-west-1"), Grant("grok-3-mini"))
    await store.create_team("eu-team", g)
    assert {x.name for x in await store.list_teams()} == {"acme", "eu-team"}
    assert set((await store.get_team("eu-team")).grants or ()) == set(g)
    assert await store.revision() > rev0

    # Duplicate name: a clear conflict, nothing changes.
    rev = await store.revision()
    with pytest.raises(Conflict, match="already exists"):
        await store.create_team("acme", (Grant("grok-4"),))
    assert (await store.get_team("acme")).grants is None
    assert await store.revision() == rev

    # An empty allow-list is "nothing", distinct from None ("everything").
    assert (await store.set_grants("acme", ())).grants == ()
    assert (await store.set_grants("acme", None)).grants is None

    with pytest.raises(NotFound, match="Unknown team 'nope'"):
        await store.get_team("nope")
    with pytest.raises(NotFound):
        await store.set_grants("nope", None)
    with pytest.raises(NotFound):
        await store.delete_team("nope")

    await store.add_key("eu-team", key(1))
    await store.delete_team("eu-team")
    assert [x.name for x in await store.list_teams()] == ["acme"]
    assert await store.list_keys() == []
    assert (await store.load_access()).by_hash == {}


async def test_sql_special_characters_are_rejected_or_kept_verbatim(store: ControlStore) -> None:
    for bad in ["x'; DROP TABLE teams; --", 'a"b', "a b", "", "-lead", "x" * 65, "名前", "a%s?"]:
        with pytest.raises(Invalid, match="Invalid team name"):
            await store.create_team(bad)
    assert await store.list_teams() == []
    # Free text (key labels) and names that arrive from usage go through parameters untouched.
    await store.create_team("o.k_name-1")
    label = 'it\'s "quoted"; DROP TABLE api_keys; -- %s ?'
    k = await store.add_key("o.k_name-1", key(2, name=label))
    assert k.name == label
    assert [x.name for x in await store.list_keys("o.k_name-1")] == [label]
    weird = "team'); DELETE FROM usage_records; --"
    await store.write_usage([record(weird, time.time())])
    rows = await store.usage(weird)
    assert len(rows) == 1 and rows[0].requests == 1


async def test_keys_add_list_revoke_and_the_access_snapshot(store: ControlStore) -> None:
    await store.create_team("acme")
    await store.create_team("eu-team", (Grant("grok-4", "eu-west-1"),))
    with pytest.raises(NotFound, match="Unknown team"):
        await store.add_key("ghost", key(9))
    k1 = await store.add_key("acme", key(1, name="ci"))
    k2 = await store.add_key("eu-team", key(2, zone="eu", budget=25.0))
    assert k1.active and k1.team == "acme" and k1.hint == "rg-sec"
    with pytest.raises(Conflict):
        await store.add_key("acme", key(1))  # same id and hash
    assert [k.id for k in await store.list_keys()] == [k1.id, k2.id]
    assert [k.id for k in await store.list_keys("eu-team")] == [k2.id]

    snap = await store.load_access()
    assert set(snap.by_hash) == {hash_key("rg-secret-1"), hash_key("rg-secret-2")}
    p2 = snap.by_hash[hash_key("rg-secret-2")]
    assert (p2.team, p2.key_id) == ("eu-team", k2.id)
    assert p2.access == Access("eu-team", (Grant("grok-4", "eu-west-1"),), "eu", 25.0)
    assert snap.by_hash[hash_key("rg-secret-1")].access == Access("acme")

    rev = await store.revision()
    revoked = await store.revoke_key(k1.id)
    assert not revoked.active and revoked.revoked_at is not None
    assert await store.revision() == rev + 1
    with pytest.raises(Conflict, match="already revoked"):
        await store.revoke_key(k1.id)
    with pytest.raises(NotFound, match="Unknown key id"):
        await store.revoke_key("key_000000000000")
    snap = await store.load_access()
    assert set(snap.by_hash) == {hash_key("rg-secret-2")}
    assert snap.revision == await store.revision()
    assert [k.active for k in await store.list_keys()] == [False, True]  # kept for the record


async def test_usage_is_aggregated_by_day_model_and_region(store: ControlStore) -> None:
    today = time.time()
    day = time.strftime("%Y-%m-%d", time.gmtime(today))
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(today - DAY))
    recs = [
        record("acme", today),
        record("acme", today),
        record("acme", today, status=503, region=""),
        record("acme", today, model="grok-4-fast", region="eu-west-1"),
        record("acme", today - DAY),
        record("other", today),
    ]
    await store.write_usage(recs)
    await store.write_usage([])
    rows = await store.usage("acme")
    got = [
        (r.day, r.model, r.region, r.requests, r.errors, r.prompt_tokens, r.completion_tokens) for r in rows
    ]
    assert got == [
        (yesterday, "grok-4", "us-east-1", 1, 0, 10, 5),
        (day, "grok-4", "", 1, 1, 10, 5),
        (day, "grok-4", "us-east-1", 2, 0, 20, 10),
        (day, "grok-4-fast", "eu-west-1", 1, 0, 10, 5),
    ]
    assert rows[2].avg_ttft_ms == pytest.approx(80.0) and rows[1].avg_ttft_ms is None
    assert [r.day for r in await store.usage("acme", since_day=day)] == [day, day, day]
    assert await store.usage("nobody") == []


async def test_usage_is_broken_down_by_service_tier(store: ControlStore) -> None:
    now = time.time()
    prio = dataclasses.replace(record("acme", now), request_id="req_p", tier="priority", ttft_ms=20.0)
    flex = dataclasses.replace(record("acme", now, status=503), request_id="req_f", tier="flex")
    await store.write_usage([record("acme", now), prio, flex, dataclasses.replace(prio, request_id="req_p2")])
    (row,) = await store.usage("acme")
    assert (row.requests, row.errors, row.prompt_tokens) == (4, 1, 40)
    # the row's averages weigh every timed request once, whatever its tier: (80 + 20 + 20) / 3
    assert row.avg_ttft_ms == pytest.approx(40.0) and row.avg_total_ms == pytest.approx(120.0)
    assert row.to_json()["by_tier"] == {
        "default": {"requests": 1, "errors": 0, "prompt_tokens": 10, "completion_tokens": 5},
        "flex": {"requests": 1, "errors": 1, "prompt_tokens": 10, "completion_tokens": 5},
        "priority": {"requests": 2, "errors": 0, "prompt_tokens": 20, "completion_tokens": 10},
    }


def test_memory_usage_is_broken_down_by_service_tier_like_the_store() -> None:
    usage = MemoryUsage()
    now = time.time()
    for rec in (record("acme", now), dataclasses.replace(record("acme", now, status=500), tier="flex")):
        usage.record(rec)
    usage.record(record("other", now))
    (row,) = usage.for_team("acme")
    assert (row["requests"], row["errors"]) == (2, 1)
    assert row["by_tier"] == {
        "default": {"requests": 1, "errors": 0, "prompt_tokens": 10, "completion_tokens": 5},
        "flex": {"requests": 1, "errors": 1, "prompt_tokens": 10, "completion_tokens": 5},
    }


async def test_a_keys_stream_settings_reach_its_principal(store: ControlStore) -> None:
    await store.create_team("acme")
    plain = await store.add_key("acme", key(1))
    strict = await store.add_key(
        "acme", dataclasses.replace(key(2), continuation=False, ttft_budget_ms=300.0)
    )
    assert (plain.continuation, plain.ttft_budget_ms) == (True, None)
    assert (strict.continuation, strict.ttft_budget_ms) == (False, 300.0)
    assert strict.to_json()["continuation"] is False and strict.to_json()["ttft_budget_ms"] == 300.0
    snap = await store.load_access()
    p1, p2 = snap.by_hash[hash_key("rg-secret-1")], snap.by_hash[hash_key("rg-secret-2")]
    assert (p1.continuation, p1.ttft_budget_ms) == (True, None)
    assert (p2.continuation, p2.ttft_budget_ms) == (False, 300.0)


async def test_a_keys_tier_and_its_teams_allowed_tiers_reach_its_principal(store: ControlStore) -> None:
    everything = await store.create_team("acme")
    batch = await store.create_team("batch", None, (Tier.FLEX, Tier.DEFAULT, Tier.FLEX))
    assert everything.service_tiers is None and everything.to_json()["service_tiers"] is None
    assert batch.service_tiers == (Tier.FLEX, Tier.DEFAULT)  # de-duplicated, order kept
    assert (await store.get_team("batch")).to_json()["service_tiers"] == ["flex", "default"]
    plain = await store.add_key("acme", key(1))
    nightly = await store.add_key("batch", dataclasses.replace(key(2), service_tier=Tier.FLEX))
    assert (plain.service_tier, nightly.service_tier) == (Tier.DEFAULT, Tier.FLEX)
    assert nightly.to_json()["service_tier"] == "flex"
    snap = await store.load_access()
    a1, a2 = snap.by_hash[hash_key("rg-secret-1")].access, snap.by_hash[hash_key("rg-secret-2")].access
    assert (a1.tier, a1.tiers) == (Tier.DEFAULT, None)
    assert (a2.tier, a2.tiers) == (Tier.FLEX, frozenset({Tier.FLEX, Tier.DEFAULT}))

    # Replacing the list bumps the revision (caches reload) and reaches the snapshot; [] is "none", not "all".
    rev = await store.revision()
    assert (await store.set_service_tiers("batch", (Tier.PRIORITY,))).service_tiers == (Tier.PRIORITY,)
    assert await store.revision() > rev
    assert (await store.load_access()).by_hash[hash_key("rg-secret-2")].access.tiers == {Tier.PRIORITY}
    assert (await store.set_service_tiers("batch", ())).service_tiers == ()
    assert (await store.load_access()).by_hash[hash_key("rg-secret-2")].access.tiers == frozenset()
    assert (await store.set_service_tiers("batch", None)).service_tiers is None
    with pytest.raises(NotFound, match="Unknown team 'nope'"):
        await store.set_service_tiers("nope", None)


async def test_operations_validate_tiers_against_the_team(store: ControlStore) -> None:
    ops = Operations(store, load_config(None))
    with pytest.raises(Invalid, match="Unknown service tier 'turbo'") as e:
        await ops.create_team("bad", None, ["flex", "turbo"])
    assert e.value.param == "service_tiers"
    with pytest.raises(Invalid, match=r"null \(every tier\) or a list"):
        await ops.create_team("bad", None, "flex")
    assert [t.name for t in await store.list_teams()] == []
    await ops.create_team("batch", None, ["flex", "default"])

    with pytest.raises(
        Invalid, match=re.escape("'priority' is not among the tiers team 'batch' may use (flex, default).")
    ) as e:
        await ops.create_key("batch", service_tier="priority")
    assert e.value.param == "service_tier"
    with pytest.raises(
        Invalid, match="Unknown service tier 'auto'"
    ):  # auto is a request's word, not a default
        await ops.create_key("batch", service_tier="auto")
    with pytest.raises(Invalid, match="Unknown service tier 7"):
        await ops.create_key("batch", service_tier=7)
    assert await store.list_keys("batch") == []
    flex, _ = await ops.create_key("batch", service_tier="flex")
    assert flex.service_tier is Tier.FLEX

    # Dropping the tier an active key defaults to is refused, naming the key; once it is revoked, allowed.
    with pytest.raises(Conflict, match=f"default to a tier this list leaves out: {flex.id}"):
        await ops.set_service_tiers("batch", ["default"])
    assert (await store.get_team("batch")).service_tiers == (Tier.FLEX, Tier.DEFAULT)
    await ops.revoke_key(flex.id)
    assert (await ops.set_service_tiers("batch", ["default"])).service_tiers == (Tier.DEFAULT,)
    # A config team's allow-list shows as the config file says.
    assert (await ops.team("demo")).to_json()["service_tiers"] is None


async def test_usage_records_keep_a_continued_streams_hops(store: ControlStore) -> None:
    hops = (
        "us-east-1 us-east-1/grok-4/0 (first)",
        "us-west-2 us-west-2/grok-4/0 (the backend in us-east-1 went silent)",
    )
    continued = dataclasses.replace(record("acme", 1000.0), request_id="req_continued", hops=hops)
    await store.write_usage([continued, record("acme", 1001.0)])
    assert await store.hops_of("req_continued") == list(hops)
    assert await store.hops_of("req_1001.0") == [] and await store.hops_of("req_none") == []


async def test_signing_keys_are_published_once(store: ControlStore) -> None:
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "abc", "kid": "k1"}
    rev = await store.revision()
    await store.publish_signing_key("k1", jwk)
    await store.publish_signing_key("k1", jwk)
    assert await store.revision() == rev + 1
    assert (await store.load_access()).signing_keys == (jwk,)


async def test_cached_keys_follow_revocations_and_grants(store: ControlStore) -> None:
    await store.create_team("acme")
    await store.add_key("acme", key(1))
    cache = CachedKeys(store, refresh_s=0.05)
    await cache.start()
    try:
        assert cache.lookup("rg-secret-1") is not None
        assert cache.lookup("rg-secret-2") is None
        assert not await cache.refresh()  # nothing changed: only the revision was read
        await store.set_grants("acme", (Grant("grok-4"),))
        await store.revoke_key("key_000000000001")
        for _ in range(200):  # the background task picks both up
            if cache.lookup("rg-secret-1") is None:
                break
            await asyncio.sleep(0.02)
        assert cache.lookup("rg-secret-1") is None
        await store.add_key("acme", key(3))
        await cache.refresh()
        p = cache.lookup("rg-secret-3")
        assert p is not None and p.access.grants == (Grant("grok-4"),)
    finally:
        await cache.aclose()


async def test_usage_writer_batches_and_flushes_everything_on_close(store: ControlStore) -> None:
    writer = BatchUsageWriter(store, flush_s=30.0, batch_size=100)
    await writer.start()
    now = time.time()
    for i in range(1050):
        writer.record(record("acme", now + i * 1e-6))
    for _ in range(200):  # batch_size reached: written without waiting for flush_s
        if writer.written >= 1000:
            break
        await asyncio.sleep(0.02)
    assert writer.written >= 1000
    await writer.aclose()
    assert writer.pending == 0 and writer.written == 1050
    assert sum(r.requests for r in await store.usage("acme")) == 1050


async def test_usage_is_exact_from_the_aggregates_while_request_rows_are_a_sample(
    store: ControlStore,
) -> None:
    # 1,000 requests over two minutes and two keys, 30 failed, 5 continued: the aggregates hold every one;
    # the per-request rows are the failed, the continued and one in ten of the rest.
    writer = BatchUsageWriter(store, flush_s=30.0, batch_size=64, rows_every=10)
    await writer.start()
    minute = (time.time() // 60) * 60
    recs = []
    for i in range(1000):
        r = record("acme", minute + (i % 2) * 60 + i * 1e-3, status=503 if i % 33 == 0 else 200)
        r = dataclasses.replace(r, request_id=f"req_{i}", key_id=f"key_{i % 2}", prompt_tokens=i)
        if i in (1, 2, 3, 4, 5):
            r = dataclasses.replace(r, hops=("us-east-1 b0 (first)", f"eu-west-1 b{i} (reset)"))
        recs.append(r)
        writer.record(r)
    await writer.aclose()  # drains: everything written
    (row,) = await store.usage("acme")
    failed = sum(1 for r in recs if r.status >= 400)
    assert (row.requests, row.errors, row.prompt_tokens) == (1000, failed, sum(range(1000)))
    assert row.completion_tokens == 5000 and row.avg_total_ms == pytest.approx(120.0)
    assert row.avg_ttft_ms == pytest.approx(80.0)  # the failed ones have none: not counted as 0
    assert isinstance(store, SqlStore)
    n = await store._run(lambda: store._q("SELECT COUNT(*) FROM usage_records").fetchone()[0])
    plain = 1000 - failed - 5
    assert int(n) == failed + 5 + plain // 10
    assert await store.hops_of("req_3") == ["us-east-1 b0 (first)", "eu-west-1 b3 (reset)"]
    minutes = await store._run(lambda: store._q("SELECT COUNT(*) FROM usage_minutes").fetchone()[0])
    assert int(minutes) == 2  # (minute, key) pairs: i % 2 picks both


async def test_a_store_from_before_the_aggregates_counts_its_old_rows(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlstore, "MIGRATIONS", MIGRATIONS[:8])
    old = open_store(store_url)
    assert isinstance(old, SqlStore) and await old.migrate() == 8
    now = time.time()
    rows = [sqlstore._row(r) for r in (record("acme", now), record("acme", now + 61, status=500))]

    def seed() -> None:  # the rows as the schema-8 writer left them
        with old._tx():
            old.dialect.executemany(old._c(), sqlstore._INSERT_ROW, rows)

    await old._run(seed)
    monkeypatch.undo()
    await old.aclose()
    new = open_store(store_url)
    try:
        assert await new.migrate() == LATEST
        (row,) = await new.usage("acme")
        assert (row.requests, row.errors, row.prompt_tokens, row.avg_ttft_ms) == (2, 1, 20, 80.0)
        await new.write_usage([record("acme", now)])  # the same minute: added to the backfilled row
        (row,) = await new.usage("acme")
        assert (row.requests, row.errors) == (3, 1)
    finally:
        await new.aclose()


class _Flaky:
    """A store whose usage writes fail ``fail`` times, then succeed."""

    description = "flaky"

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.rows: list[UsageRecord] = []

    async def write_usage(
        self, records: Sequence[UsageRecord], rows: Sequence[UsageRecord] | None = None
    ) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionError("down")
        self.rows.extend(records)


async def test_usage_writer_keeps_records_while_the_store_is_down() -> None:
    flaky = _Flaky(fail=2)
    writer = BatchUsageWriter(flaky, flush_s=0.01, batch_size=10)  # type: ignore[arg-type]
    await writer.start()
    for i in range(25):
        writer.record(record("acme", float(i)))
    for _ in range(300):
        if len(flaky.rows) == 25:
            break
        await asyncio.sleep(0.01)
    await writer.aclose()
    assert [r.at for r in flaky.rows] == [float(i) for i in range(25)]  # none lost, order kept


def test_store_urls() -> None:
    assert redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert split_pg_url("postgresql://h/db?schema=abc&sslmode=disable") == (
        "postgresql://h/db?sslmode=disable",
        "abc",
    )
    with pytest.raises(Invalid, match="Unsupported control store URL"):
        open_store("mysql://x")
    with pytest.raises(Invalid, match="schema"):
        open_store("postgresql://h/db?schema=Bad-Name")


class _Down:
    """A store that answers once, then is unreachable."""

    description = "down"

    def __init__(self, snapshot: AccessSnapshot) -> None:
        self.snapshot = snapshot
        self.calls = 0

    async def revision(self) -> int:
        self.calls += 1
        if self.calls > 1:
            raise StoreUnavailable("The control store (down) is unavailable: connection refused")
        return self.snapshot.revision

    async def load_access(self) -> AccessSnapshot:
        return self.snapshot


async def test_cached_keys_keep_serving_while_the_store_is_down() -> None:
    principal = Principal("acme", "key_1", Access("acme"))
    down = _Down(AccessSnapshot(7, {hash_key("rg-k"): principal}))
    cache = CachedKeys(down, refresh_s=0.01)  # type: ignore[arg-type]
    await cache.start()
    try:
        for _ in range(300):
            if cache.failures >= 3:
                break
            await asyncio.sleep(0.01)
        assert cache.failures >= 3 and cache.lookup("rg-k") == principal
    finally:
        await cache.aclose()
