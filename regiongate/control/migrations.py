"""Versioned schema migrations, shared by SQLite and PostgreSQL.

Each migration runs once, in its own transaction, and is recorded in ``schema_migrations``. Append new
migrations at the end; never edit one that has shipped. The SQL is written once with two placeholders the
dialect fills in: ``{id}`` (an auto-increment primary key), ``{float}`` and ``{minute_of_at}`` (the unix minute
of a row's ``at``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "teams, grants, api keys, revision counter",
        (
            """CREATE TABLE teams (
                id {id},
                name TEXT NOT NULL UNIQUE,
                restricted BOOLEAN NOT NULL DEFAULT FALSE,
                created_at {float} NOT NULL
            )""",
            # region '' means every region; restricted=FALSE means every model everywhere (no rows).
            """CREATE TABLE grants (
                team_id BIGINT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
                model TEXT NOT NULL,
                region TEXT NOT NULL DEFAULT '',
                PRIMARY KEY (team_id, model, region)
            )""",
            """CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                team_id BIGINT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
                name TEXT NOT NULL DEFAULT '',
                key_hash TEXT NOT NULL UNIQUE,
                hint TEXT NOT NULL,
                zone TEXT,
                spill_budget_ms {float},
                created_at {float} NOT NULL,
                revoked_at {float}
            )""",
            "CREATE INDEX api_keys_team ON api_keys (team_id)",
            # Bumped by every change to teams, grants or keys: caches poll this one row.
            "CREATE TABLE revision (id INTEGER PRIMARY KEY, rev BIGINT NOT NULL)",
            "INSERT INTO revision (id, rev) VALUES (1, 1)",
        ),
    ),
    Migration(
        2,
        "usage records",
        (
            """CREATE TABLE usage_records (
                id {id},
                at {float} NOT NULL,
                day TEXT NOT NULL,
                request_id TEXT NOT NULL,
                team TEXT NOT NULL,
                key_id TEXT NOT NULL,
                model TEXT NOT NULL,
                endpoint TEXT NOT NULL,
                region TEXT NOT NULL,
                route TEXT NOT NULL,
                status INTEGER NOT NULL,
                prompt_tokens BIGINT NOT NULL,
                completion_tokens BIGINT NOT NULL,
                ttft_ms {float},
                total_ms {float} NOT NULL
            )""",
            "CREATE INDEX usage_team_day ON usage_records (team, day)",
        ),
    ),
    Migration(
        3,
        "receipt signing keys (public parts, published by every gateway)",
        (
            """CREATE TABLE signing_keys (
                kid TEXT PRIMARY KEY,
                jwk TEXT NOT NULL,
                created_at {float} NOT NULL
            )""",
        ),
    ),
    Migration(
        4,
        "usage records say whether their tokens were estimated (the backend reported none)",
        ("ALTER TABLE usage_records ADD COLUMN estimated BOOLEAN NOT NULL DEFAULT FALSE",),
    ),
    Migration(
        5,
        "usage records name the hops of a stream continued mid-answer ('; '-separated, in order)",
        ("ALTER TABLE usage_records ADD COLUMN hops TEXT NOT NULL DEFAULT ''",),
    ),
    Migration(
        6,
        "a key's stream settings: continuation on or off, its own first-byte budget",
        (
            "ALTER TABLE api_keys ADD COLUMN continuation BOOLEAN NOT NULL DEFAULT TRUE",
            "ALTER TABLE api_keys ADD COLUMN ttft_budget_ms {float}",
        ),
    ),
    Migration(
        7,
        "service tiers: a key's default tier, a team's allow-list (NULL: every tier; else comma-separated)",
        (
            "ALTER TABLE api_keys ADD COLUMN service_tier TEXT NOT NULL DEFAULT 'default'",
            "ALTER TABLE teams ADD COLUMN service_tiers TEXT",
        ),
    ),
    Migration(
        8,
        "usage records say the service tier each request ran at",
        ("ALTER TABLE usage_records ADD COLUMN tier TEXT NOT NULL DEFAULT 'default'",),
    ),
    Migration(
        9,
        "usage as per-minute aggregates (what /v1/usage and billing read); the per-request rows become a sample",
        (
            """CREATE TABLE usage_minutes (
                minute BIGINT NOT NULL,
                day TEXT NOT NULL,
                team TEXT NOT NULL,
                key_id TEXT NOT NULL,
                model TEXT NOT NULL,
                region TEXT NOT NULL,
                tier TEXT NOT NULL,
                requests BIGINT NOT NULL,
                errors BIGINT NOT NULL,
                prompt_tokens BIGINT NOT NULL,
                completion_tokens BIGINT NOT NULL,
                ttft_ms_sum {float} NOT NULL,
                ttft_count BIGINT NOT NULL,
                total_ms_sum {float} NOT NULL,
                estimated BIGINT NOT NULL,
                PRIMARY KEY (team, minute, key_id, model, region, tier)
            )""",
            "CREATE INDEX usage_minutes_team_day ON usage_minutes (team, day)",
            # Every row written before: the aggregates start exact.
            "INSERT INTO usage_minutes SELECT {minute_of_at}, MIN(day), team, key_id, model, region, tier, "
            "COUNT(*), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), SUM(prompt_tokens), "
            "SUM(completion_tokens), COALESCE(SUM(ttft_ms), 0), COUNT(ttft_ms), SUM(total_ms), "
            "SUM(CASE WHEN estimated THEN 1 ELSE 0 END) FROM usage_records "
            "GROUP BY {minute_of_at}, team, key_id, model, region, tier",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version

MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at {float} NOT NULL
)"""
