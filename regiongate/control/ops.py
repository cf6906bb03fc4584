"""The control plane's operations, one implementation behind both the admin API and the CLI:
validate input against the config's catalogue, then change the store."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence

from regiongate.config import Config
from regiongate.control.catalog import Offer
from regiongate.control.model import (
    ApiKey,
    NewKey,
    Team,
    UsageRow,
    check_label,
    check_name,
    check_tier,
    check_tiers,
)
from regiongate.control.store import ControlStore
from regiongate.core import Access, Grant
from regiongate.core.errors import Conflict, Invalid, NotFound
from regiongate.core.tiers import Tier
from regiongate.pipeline.auth import hash_key, new_key

log = logging.getLogger("regiongate.control")


def config_team(cfg: Config, name: str) -> Team | None:
    """A team declared in the config file (its keys live there, not in the store)."""
    for t in cfg.teams:
        if t.name == name:
            grants = None if t.grants is None else tuple(Grant(g.model, g.region) for g in t.grants)
            tiers = None if t.service_tiers is None else tuple(Tier(x) for x in t.service_tiers)
            return Team(t.name, grants, 0.0, tiers)
    return None


class Operations:
    def __init__(
        self,
        store: ControlStore,
        cfg: Config,
        changed: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.offer = Offer.of(cfg)
        self._changed = changed  # e.g. refresh this gateway's key cache at once

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.offer = Offer.of(cfg)

    async def _after_change(self) -> None:
        if self._changed is None:
            return
        try:
            await self._changed()
        except Exception as e:  # the change is stored; the periodic refresh will pick it up
            log.warning("refresh after a control change failed", extra={"error": str(e)[:200]})

    async def create_team(
        self, name: object, grants: Sequence[Grant] | None = None, service_tiers: object = None
    ) -> Team:
        name = check_name(name)
        tiers = check_tiers(service_tiers)
        if config_team(self.cfg, name) is not None:
            raise Conflict(
                f"Team '{name}' is declared in the config file; choose another name.", param="name"
            )
        team = await self.store.create_team(name, grants, tiers)
        await self._after_change()
        return team

    async def team(self, name: object) -> Team:
        name = check_name(name)
        try:
            return await self.store.get_team(name)
        except NotFound:
            found = config_team(self.cfg, name)
            if found is None:
                raise
            return found

    async def set_grants(self, name: object, grants: Sequence[Grant] | None) -> Team:
        team = await self.store.set_grants(check_name(name), grants)
        await self._after_change()
        return team

    async def set_service_tiers(self, name: object, service_tiers: object) -> Team:
        """Replace a team's allow-list; refused while one of its active keys defaults to a tier it drops
        (as the config file refuses such a key), so no key is left whose every plain request is a 403."""
        name = check_name(name)
        tiers = check_tiers(service_tiers)
        if tiers is not None:
            stranded = [
                k.id for k in await self.store.list_keys(name) if k.active and k.service_tier not in tiers
            ]
            if stranded:
                raise Conflict(
                    f"Active keys of team '{name}' default to a tier this list leaves out: "
                    f"{', '.join(stranded)}; revoke them or keep their tier.",
                    param="service_tiers",
                )
        team = await self.store.set_service_tiers(name, tiers)
        await self._after_change()
        return team

    async def delete_team(self, name: object) -> None:
        await self.store.delete_team(check_name(name))
        await self._after_change()

    async def create_key(
        self,
        team: object,
        name: object = None,
        zone: object = None,
        spill_budget_ms: object = None,
        continuation: object = True,
        ttft_budget_ms: object = None,
        service_tier: object = None,
    ) -> tuple[ApiKey, str]:
        """A new key for ``team``: the secret is returned once and only its hash is stored."""
        team_name = check_name(team)
        label = check_label(name)
        z = self.offer.zone(zone)
        budget = self.offer.budget(spill_budget_ms)
        continuation = True if continuation is None else continuation
        if not isinstance(continuation, bool):
            raise Invalid("'continuation' must be true or false.", param="continuation")
        ttft = self.offer.ttft_budget(ttft_budget_ms)
        tier = Tier.DEFAULT if service_tier is None else check_tier(service_tier)
        allowed = (await self.store.get_team(team_name)).service_tiers
        if allowed is not None and tier not in allowed:
            raise Invalid(
                f"Service tier '{tier}' is not among the tiers team '{team_name}' may use "
                f"({', '.join(allowed) or 'none'}).",
                param="service_tier",
            )
        secret = new_key()
        new = NewKey(
            "key_" + secrets.token_hex(6),
            hash_key(secret),
            secret[:7],
            label,
            z,
            budget,
            continuation,
            ttft,
            tier,
        )
        key = await self.store.add_key(team_name, new)
        await self._after_change()
        return key, secret

    async def list_keys(self, team: object = None) -> list[ApiKey]:
        return await self.store.list_keys(None if team is None else check_name(team))

    async def revoke_key(self, key_id: object) -> ApiKey:
        if not isinstance(key_id, str) or not key_id:
            raise Invalid("A key id is required, e.g. 'key_0123456789ab'.", param="key_id")
        key = await self.store.revoke_key(key_id)
        await self._after_change()
        return key

    async def matrix(self, team: object, region: str | None = None) -> dict[str, object]:
        t = await self.team(team)
        return self.offer.matrix(Access(t.name, t.grants), region)

    async def usage(self, team: object, days: int = 30) -> list[UsageRow]:
        if days < 1 or days > 3660:
            raise Invalid("'days' must be between 1 and 3660.", param="days")
        since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - (days - 1) * 86400))
        return await self.store.usage(check_name(team), since)
