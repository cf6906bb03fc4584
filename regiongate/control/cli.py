"""Control-plane commands: ``regiongate teams|keys|models|usage|receipt ...``.

They work on the store named by the config's ``[control]`` section (or ``--store URL``) through the same
operations as the admin API, so they run with or without a gateway up; running gateways pick changes up
within ``[control].refresh_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from regiongate.config import Config, ConfigError, load_config


def _config(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        sys.exit(2)


def _run(args: argparse.Namespace, body: Callable[[Any], Awaitable[int]]) -> int:
    """Open the store (migrating it if needed), run ``body(ops)``, turn control errors into messages."""
    from regiongate.config.control import resolve
    from regiongate.control.ops import Operations
    from regiongate.control.store import open_store
    from regiongate.core.errors import RouteError

    cfg = _config(args)
    url = args.store or resolve(cfg.control, dict(os.environ)).store_url
    if url is None:
        print("regiongate: the control plane is off ([control].store = 'none')", file=sys.stderr)
        return 2

    async def main() -> int:
        store = open_store(url)
        try:
            await store.migrate()
            return await body(Operations(store, cfg))
        finally:
            await store.aclose()

    try:
        return asyncio.run(main())
    except RouteError as e:
        print(f"regiongate: {e.message}", file=sys.stderr)
        return 1


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _grants_text(grants: Any) -> str:
    if grants is None:
        return "all models, all regions"
    if not grants:
        return "none"
    return ", ".join(g.model + (f"@{g.region}" if g.region else "") for g in grants)


def _tiers_text(tiers: Any) -> str:
    if tiers is None:
        return "every tier"
    return ", ".join(tiers) or "none"


def _when(at: float | None) -> str:
    return "" if at is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(at))


# --- teams -------------------------------------------------------------------------------------------
def cmd_teams(args: argparse.Namespace) -> int:
    from regiongate.control.ops import config_team
    from regiongate.core.errors import NotFound

    async def body(ops: Any) -> int:
        action = args.teams_command
        if action == "list":
            teams = await ops.store.list_teams()
            declared = [t for t in (config_team(ops.cfg, c.name) for c in ops.cfg.teams) if t is not None]
            if args.json:
                out = [dict(t.to_json(), source="store") for t in teams]
                out += [dict(t.to_json(), source="config") for t in declared]
                print(json.dumps(out, indent=2))
                return 0
            keys = await ops.list_keys()
            active = {t.name: sum(1 for k in keys if k.team == t.name and k.active) for t in teams}
            rows: list[tuple[object, ...]] = [
                (t.name, _grants_text(t.grants), active[t.name], _when(t.created_at)) for t in teams
            ]
            rows += [(t.name, _grants_text(t.grants), "(config file)", "") for t in declared]
            print(table(["TEAM", "GRANTS", "ACTIVE KEYS", "CREATED (UTC)"], rows))
            return 0
        if action == "create":
            grants = None if not args.grant else tuple(ops.offer.grant_spec(s) for s in args.grant)
            team = await ops.create_team(args.name, grants, args.service_tier)
            print(
                f"created team '{team.name}' ({_grants_text(team.grants)}; {_tiers_text(team.service_tiers)})"
            )
            return 0
        if action == "show":
            team = await ops.team(args.name)
            print(f"team    {team.name}\ngrants  {_grants_text(team.grants)}")
            print(f"tiers   {_tiers_text(team.service_tiers)}")
            try:
                keys = await ops.list_keys(team.name)
            except NotFound:
                print("keys    (declared in the config file)")
                return 0
            _print_keys(keys)
            return 0
        if action == "grants":
            if args.all == bool(args.grant):
                print("regiongate: give either --all or one or more --grant MODEL[@REGION]", file=sys.stderr)
                return 2
            grants = None if args.all else tuple(ops.offer.grant_spec(s) for s in args.grant)
            team = await ops.set_grants(args.name, grants)
            print(f"team '{team.name}' may now use: {_grants_text(team.grants)}")
            return 0
        if action == "tiers":
            if args.all == bool(args.service_tier):
                print("regiongate: give either --all or one or more --service-tier TIER", file=sys.stderr)
                return 2
            team = await ops.set_service_tiers(args.name, None if args.all else args.service_tier)
            print(f"team '{team.name}' may now use: {_tiers_text(team.service_tiers)}")
            return 0
        if action == "delete":
            await ops.delete_team(args.name)
            print(f"deleted team '{args.name}' and its keys")
            return 0
        raise AssertionError(action)

    return _run(args, body)


# --- keys --------------------------------------------------------------------------------------------
def _print_keys(keys: Sequence[Any]) -> None:
    rows = [
        (
            k.id,
            k.team,
            k.name,
            k.hint + "…",
            k.zone or "any",
            k.service_tier,
            "" if k.spill_budget_ms is None else f"{k.spill_budget_ms:g} ms",
            "active" if k.active else f"revoked {_when(k.revoked_at)}",
            _when(k.created_at),
        )
        for k in keys
    ]
    print(
        table(["ID", "TEAM", "NAME", "KEY", "ZONE", "TIER", "SPILL BUDGET", "STATUS", "CREATED (UTC)"], rows)
    )


def cmd_keys(args: argparse.Namespace) -> int:
    async def body(ops: Any) -> int:
        action = args.keys_command
        if action == "create":
            key, secret = await ops.create_key(
                args.team,
                args.name,
                args.zone,
                args.spill_budget_ms,
                not args.no_continuation,
                args.ttft_budget_ms,
                args.service_tier,
            )
            if args.json:
                print(json.dumps(dict(key.to_json(), key=secret), indent=2))
                return 0
            print(f"created key {key.id} for team '{key.team}'" + (f" (zone {key.zone})" if key.zone else ""))
            print("This is the only time the key is shown; store it now:")
            print(secret)
            return 0
        if action == "list":
            keys = await ops.list_keys(args.team)
            if args.json:
                print(json.dumps([k.to_json() for k in keys], indent=2))
            else:
                _print_keys(keys)
            return 0
        if action == "revoke":
            key = await ops.revoke_key(args.key_id)
            print(f"revoked key {key.id} of team '{key.team}'; gateways stop accepting it within seconds")
            return 0
        raise AssertionError(action)

    return _run(args, body)


# --- models and usage --------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    async def body(ops: Any) -> int:
        m = await ops.matrix(args.team, args.region)
        if args.json:
            print(json.dumps(m, indent=2))
            return 0
        regions = [r["id"] for r in m["regions"]]
        rows = [
            [
                row["id"],
                *("✓" if row["regions"].get(r) else "·" for r in regions),
                "✓" if row["global"] else "·",
            ]
            for row in m["models"]
        ]
        print(f"Team {m['team']}: models by region (✓ offered, · not offered; GLOBAL = the global endpoint)")
        print(table(["MODEL", *regions, "GLOBAL"], rows) if rows else "(no model)")
        return 0

    return _run(args, body)


def cmd_usage(args: argparse.Namespace) -> int:
    async def body(ops: Any) -> int:
        rows = await ops.usage(args.team, args.days)
        if args.json:
            print(json.dumps([r.to_json() for r in rows], indent=2))
            return 0
        out = [
            (
                r.day,
                r.model,
                r.region or "-",
                r.requests,
                r.errors,
                r.prompt_tokens,
                r.completion_tokens,
                "" if r.avg_ttft_ms is None else f"{r.avg_ttft_ms:.0f}",
                ",".join(f"{tier}:{t.requests}" for tier, t in r.by_tier.items()),
            )
            for r in rows
        ]
        print(f"Team {args.team}: usage over the last {args.days} days (UTC)")
        heads = [
            "DAY",
            "MODEL",
            "REGION",
            "REQUESTS",
            "ERRORS",
            "PROMPT TOK",
            "COMPLETION TOK",
            "AVG TTFT MS",
            "REQUESTS BY TIER",
        ]
        print(table(heads, out) if out else "(no usage)")
        return 0

    return _run(args, body)


# --- receipts ----------------------------------------------------------------------------------------
def _ring(args: argparse.Namespace) -> Any:
    from regiongate.config.control import resolve
    from regiongate.pipeline.receipts import KeyRing

    cfg = _config(args)
    return KeyRing(resolve(cfg.control, dict(os.environ)).receipt_key_dir)


def cmd_receipt(args: argparse.Namespace) -> int:
    from regiongate.pipeline import receipts

    action = args.receipt_command
    if action == "verify":
        token = args.token if args.token not in (None, "-") else sys.stdin.read()
        if args.jwks:
            try:
                jwks = json.loads(Path(args.jwks).read_text())
            except (OSError, ValueError) as e:
                print(f"regiongate: cannot read a JWK Set from {args.jwks}: {e}", file=sys.stderr)
                return 2
        else:
            jwks = {"keys": _ring(args).public_keys()}
        try:
            claims = receipts.verify(token, jwks)
        except receipts.ReceiptError as e:
            print(f"invalid receipt: {e}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(claims, indent=2))
            return 0
        kid = receipts.receipt_kid(token)
        batched = " (in a batch: its Merkle proof checked)" if len(token.strip().split(".")) == 4 else ""
        print(f"valid receipt, signed by key {kid}{batched}")
        zone = f" (data zone {claims.get('zone')})" if claims.get("zone") else ""
        for label, value in (
            ("request", claims.get("rid")),
            *([("client id", claims["client_rid"])] if "client_rid" in claims else []),
            ("team", claims.get("team")),
            ("key", claims.get("key")),
            ("model", claims.get("model")),
            ("endpoint", claims.get("endpoint")),
            ("served in", f"{claims.get('region')}{zone}"),
            ("route", claims.get("route")),
            ("time", claims.get("time")),
        ):
            print(f"  {label:<10}{value}")
        for i, hop in enumerate(claims.get("hops") or ()):  # a continued stream: each part, in order
            if isinstance(hop, dict):
                where = f"{hop.get('region')} (data zone {hop.get('zone')})"
                print(f"  {'hop ' + str(i + 1):<10}{where} {hop.get('backend')}: {hop.get('reason')}")
        return 0
    ring = _ring(args)
    if action == "rotate":
        key = ring.rotate()

        async def publish(ops: Any) -> int:
            await ops.store.publish_signing_key(key.kid, key.jwk)
            return 0

        print(f"new receipt signing key {key.kid}; earlier receipts still verify with the published keys")
        return _run(args, publish)
    if action == "jwks":
        print(json.dumps({"keys": ring.public_keys()}, indent=2))
        return 0
    raise AssertionError(action)


# --- wiring ------------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, store: bool = True) -> None:
    p.add_argument("--config", help="TOML config file (default: the demo world)")
    if store:
        p.add_argument("--store", help="control store URL (default: from the config's [control] section)")


def register(sub: Any) -> None:
    """Add the control-plane commands to the ``regiongate`` parser's subcommands."""
    t = sub.add_parser("teams", help="create, list, show, re-grant or delete teams")
    tsub = t.add_subparsers(dest="teams_command", required=True)
    p = tsub.add_parser("list", help="list teams")
    p.add_argument("--json", action="store_true")
    _common(p)
    p = tsub.add_parser("create", help="create a team (all models unless --grant is given)")
    p.add_argument("name")
    p.add_argument("--grant", action="append", metavar="MODEL[@REGION]", help="allow a model (repeatable)")
    p.add_argument(
        "--service-tier", action="append", metavar="TIER", help="allow a service tier (repeatable)"
    )
    _common(p)
    p = tsub.add_parser("show", help="a team's grants and keys")
    p.add_argument("name")
    _common(p)
    p = tsub.add_parser("grants", help="replace a team's grants")
    p.add_argument("name")
    p.add_argument("--all", action="store_true", help="every model in every region")
    p.add_argument("--grant", action="append", metavar="MODEL[@REGION]", help="allow a model (repeatable)")
    _common(p)
    p = tsub.add_parser("tiers", help="replace a team's allowed service tiers")
    p.add_argument("name")
    p.add_argument("--all", action="store_true", help="every tier")
    p.add_argument(
        "--service-tier", action="append", metavar="TIER", help="allow a service tier (repeatable)"
    )
    _common(p)
    p = tsub.add_parser("delete", help="delete a team and its keys (usage records stay)")
    p.add_argument("name")
    _common(p)
    t.set_defaults(func=cmd_teams)

    k = sub.add_parser("keys", help="create, list or revoke API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    p = ksub.add_parser("create", help="create a key (shown once)")
    p.add_argument("--team", required=True)
    p.add_argument("--name", help="a label for the key")
    p.add_argument("--zone", help="serve this key only inside one data zone (e.g. eu)")
    p.add_argument("--spill-budget-ms", type=float, help="global spillover only within this latency budget")
    p.add_argument(
        "--no-continuation", action="store_true", help="never continue its broken streams elsewhere"
    )
    p.add_argument("--ttft-budget-ms", type=float, help="cap every first-byte wait of its streams")
    p.add_argument(
        "--service-tier", metavar="TIER", help="the tier of its requests that ask for none (default)"
    )
    p.add_argument("--json", action="store_true")
    _common(p)
    p = ksub.add_parser("list", help="list keys (never the secret)")
    p.add_argument("--team")
    p.add_argument("--json", action="store_true")
    _common(p)
    p = ksub.add_parser("revoke", help="revoke a key by id")
    p.add_argument("key_id")
    _common(p)
    k.set_defaults(func=cmd_keys)

    m = sub.add_parser("models", help="the models x regions matrix a team sees")
    m.add_argument("--team", required=True)
    m.add_argument("--region", help="only this region's column")
    m.add_argument("--json", action="store_true")
    _common(m)
    m.set_defaults(func=cmd_models)

    u = sub.add_parser("usage", help="a team's usage by day, model and region")
    u.add_argument("--team", required=True)
    u.add_argument("--days", type=int, default=30)
    u.add_argument("--json", action="store_true")
    _common(u)
    u.set_defaults(func=cmd_usage)

    r = sub.add_parser("receipt", help="verify receipts, rotate or print the signing keys")
    rsub = r.add_subparsers(dest="receipt_command", required=True)
    p = rsub.add_parser("verify", help="check a receipt offline")
    p.add_argument("token", nargs="?", help="the x-regiongate-receipt value ('-' or none: read stdin)")
    p.add_argument(
        "--jwks", help="a saved copy of /.well-known/regiongate-keys.json (default: the local key dir)"
    )
    p.add_argument("--json", action="store_true", help="print the claims as JSON")
    _common(p, store=False)
    p = rsub.add_parser("rotate", help="start signing with a new key; old receipts keep verifying")
    _common(p)
    p = rsub.add_parser("jwks", help="print the public keys as a JWK Set")
    _common(p, store=False)
    r.set_defaults(func=cmd_receipt)
