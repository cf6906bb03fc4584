"""The control-plane CLI: teams, keys, the models x regions matrix and usage, with its error messages.

Commands run in-process through ``regiongate.app.cli.main`` (the same argv a shell passes) against a fresh
SQLite store; one run goes through the installed console script."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from regiongate.app.cli import main
from regiongate.control.store import open_store
from regiongate.pipeline.usage import UsageRecord


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/control.db"


def run(capsys: pytest.CaptureFixture[str], store: str, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--store", store])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_teams_and_keys(capsys: pytest.CaptureFixture[str], store: str) -> None:
    assert run(capsys, store, "teams", "create", "acme")[0] == 0
    code, _, err = run(capsys, store, "teams", "create", "acme")
    assert code == 1 and "A team named 'acme' already exists." in err
    code, _, err = run(capsys, store, "teams", "create", "x'; DROP TABLE teams;--")
    assert code == 1 and "Invalid team name" in err
    code, _, err = run(capsys, store, "teams", "create", "demo")
    assert code == 1 and "declared in the config file" in err
    code, out, _ = run(
        capsys, store, "teams", "create", "eu-team", "--grant", "grok-4@eu-west-1", "--grant", "grok-3-mini"
    )
    assert code == 0 and "grok-4@eu-west-1" in out
    code, _, err = run(capsys, store, "teams", "create", "bad", "--grant", "grok-4@mars-1")
    assert code == 1 and "Unknown region 'mars-1'" in err
    code, out, _ = run(capsys, store, "teams", "list", "--json")
    listed = [(t["name"], t["source"]) for t in json.loads(out)]  # the failures changed nothing
    assert listed == [("acme", "store"), ("eu-team", "store"), ("demo", "config")]

    code, out, _ = run(capsys, store, "keys", "create", "--team", "eu-team", "--zone", "eu", "--json")
    created = json.loads(out)
    assert code == 0 and created["key"].startswith("rg-") and created["zone"] == "eu"
    code, out, _ = run(capsys, store, "keys", "create", "--team", "acme", "--name", "ci's key")
    assert code == 0 and "only time the key is shown" in out
    secret = out.strip().splitlines()[-1]
    code, out, _ = run(capsys, store, "keys", "list")
    assert code == 0 and created["id"] in out and "ci's key" in out and secret[:7] + "…" in out
    assert secret not in out and created["key"] not in out
    code, _, err = run(capsys, store, "keys", "create", "--team", "ghost")
    assert code == 1 and "Unknown team 'ghost'" in err
    code, _, err = run(capsys, store, "keys", "create", "--team", "acme", "--zone", "mars")
    assert code == 1 and "Unknown data zone 'mars'" in err
    args = ("keys", "create", "--team", "acme", "--no-continuation", "--ttft-budget-ms", "300", "--json")
    code, out, _ = run(capsys, store, *args)
    strict = json.loads(out)
    assert code == 0 and strict["continuation"] is False and strict["ttft_budget_ms"] == 300.0
    code, _, err = run(capsys, store, "keys", "create", "--team", "acme", "--ttft-budget-ms", "0")
    assert code == 1 and "ttft_budget_ms" in err

    assert run(capsys, store, "keys", "revoke", created["id"])[0] == 0
    code, _, err = run(capsys, store, "keys", "revoke", created["id"])
    assert code == 1 and "already revoked" in err
    code, out, _ = run(capsys, store, "keys", "list", "--team", "eu-team", "--json")
    assert [k["active"] for k in json.loads(out)] == [False]

    code, out, _ = run(capsys, store, "teams", "show", "acme")
    assert code == 0 and "all models, all regions" in out and "ci's key" in out
    assert run(capsys, store, "teams", "grants", "eu-team", "--all")[0] == 0
    assert run(capsys, store, "teams", "grants", "eu-team")[0] == 2  # neither --all nor --grant
    assert run(capsys, store, "teams", "delete", "acme")[0] == 0
    code, _, err = run(capsys, store, "teams", "show", "acme")
    assert code == 1 and "Unknown team 'acme'" in err


def test_models_matrix_table(capsys: pytest.CaptureFixture[str], store: str) -> None:
    run(capsys, store, "teams", "create", "eu-team", "--grant", "grok-4@eu-west-1", "--grant", "grok-3-mini")
    code, out, _ = run(capsys, store, "models", "--team", "eu-team")
    assert code == 0
    assert out.splitlines()[1:] == [
        "MODEL        us-east-1  us-west-2  eu-west-1  GLOBAL",
        "grok-4       ·          ·          ✓          ✓",
        "grok-3-mini  ✓          ✓          ✓          ✓",
    ]
    code, out, _ = run(capsys, store, "models", "--team", "eu-team", "--region", "us-west-2")
    assert out.splitlines()[1:] == ["MODEL        us-west-2  GLOBAL", "grok-3-mini  ✓          ✓"]
    # The config's own team (every model) shows the whole demo world.
    code, out, _ = run(capsys, store, "models", "--team", "demo", "--json")
    matrix = json.loads(out)
    assert len(matrix["regions"]) == 6
    fast = next(m for m in matrix["models"] if m["id"] == "grok-code-fast-1")
    assert [r for r, on in fast["regions"].items() if on] == ["us-east-1"] and fast["global"]
    code, _, err = run(capsys, store, "models", "--team", "nobody")
    assert code == 1 and "Unknown team 'nobody'" in err
    code, _, err = run(capsys, store, "models", "--team", "demo", "--region", "mars-1")
    assert code == 1 and "Unknown region 'mars-1'" in err


def test_usage_table(capsys: pytest.CaptureFixture[str], store: str) -> None:
    async def seed() -> None:
        s = open_store(store)
        await s.migrate()
        now = time.time()
        await s.write_usage(
            [
                UsageRecord(
                    f"r{i}",
                    "acme",
                    "key_1",
                    "grok-4",
                    "global",
                    "eu-west-1",
                    "nearest",
                    200,
                    10,
                    20,
                    90.0,
                    150.0,
                    now,
                    tier="flex" if i else "priority",
                )
                for i in range(3)
            ]
        )
        await s.aclose()

    asyncio.run(seed())
    code, out, _ = run(capsys, store, "usage", "--team", "acme")
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert code == 0
    row = [day, "grok-4", "eu-west-1", "3", "0", "30", "60", "90", "flex:2,priority:1"]
    assert out.splitlines()[2].split() == row
    code, out, _ = run(capsys, store, "usage", "--team", "acme", "--json")
    assert json.loads(out)[0]["requests"] == 3
    assert "(no usage)" in run(capsys, store, "usage", "--team", "other")[1]
    code, _, err = run(capsys, store, "usage", "--team", "acme", "--days", "0")
    assert code == 1 and "'days' must be between" in err


def test_console_script(store: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "regiongate", "teams", "create", "script-team", "--store", store],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "created team 'script-team'" in done.stdout


def test_service_tiers_of_teams_and_keys(capsys: pytest.CaptureFixture[str], store: str) -> None:
    args = ("teams", "create", "batch", "--service-tier", "flex", "--service-tier", "default")
    code, out, _ = run(capsys, store, *args)
    assert code == 0 and "flex, default" in out
    code, _, err = run(capsys, store, "teams", "create", "bad", "--service-tier", "turbo")
    assert code == 1 and "Unknown service tier 'turbo'; tiers: default, flex, priority." in err
    code, _, err = run(capsys, store, "keys", "create", "--team", "batch", "--service-tier", "priority")
    assert code == 1 and "'priority' is not among the tiers team 'batch' may use" in err
    code, out, _ = run(capsys, store, "keys", "create", "--team", "batch", "--service-tier", "flex", "--json")
    nightly = json.loads(out)
    assert code == 0 and nightly["service_tier"] == "flex"
    code, out, _ = run(capsys, store, "keys", "list", "--team", "batch")
    assert code == 0 and "TIER" in out.splitlines()[0] and "flex" in out.splitlines()[1]
    code, _, err = run(capsys, store, "teams", "tiers", "batch", "--service-tier", "priority")
    assert code == 1 and nightly["id"] in err
    code, _, err = run(capsys, store, "teams", "tiers", "batch")
    assert code == 2 and "--all" in err
    code, out, _ = run(capsys, store, "teams", "tiers", "batch", "--all")
    assert code == 0 and "every tier" in out
    code, out, _ = run(capsys, store, "teams", "show", "batch")
    assert code == 0 and "tiers   every tier" in out
