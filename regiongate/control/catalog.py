"""What the config offers (regions, zones, models per region) and the models x regions matrix a team
or key sees. Used by the admin API, the CLI and the console's server side; the gateway's own
``regiongate.pipeline.catalog`` answers the same question from the live fleet."""

from __future__ import annotations

import math
from dataclasses import dataclass

from regiongate.config import Config
from regiongate.core import Access, Grant
from regiongate.core.errors import Invalid
from regiongate.state.first_byte import MAX_BUDGET_MS


@dataclass(frozen=True, slots=True)
class RegionInfo:
    id: str
    name: str
    zone: str


@dataclass(frozen=True, slots=True)
class Offer:
    regions: tuple[RegionInfo, ...]
    deployed: frozenset[tuple[str, str]]  # (model, region)
    models: tuple[str, ...]  # in config order

    @classmethod
    def of(cls, cfg: Config) -> Offer:
        models: dict[str, None] = {}
        deployed = set()
        for d in cfg.deployments:
            for m in d.models:
                models.setdefault(m)
                deployed.add((m, d.region))
        regions = tuple(RegionInfo(r.id, r.name or r.id, r.zone) for r in cfg.regions)
        return cls(regions, frozenset(deployed), tuple(models))

    @property
    def region_ids(self) -> list[str]:
        return [r.id for r in self.regions]

    @property
    def zones(self) -> list[str]:
        return list(dict.fromkeys(r.zone for r in self.regions))

    def zone_of(self, region: str) -> str:
        return next(r.zone for r in self.regions if r.id == region)

    # --- validation of admin input -------------------------------------------------------------------
    def grant(self, model: object, region: object) -> Grant:
        if not isinstance(model, str) or not model:
            raise Invalid("Each grant needs a 'model': a model id or '*' for every model.", param="grants")
        if region is not None and not isinstance(region, str):
            raise Invalid("A grant's 'region' must be a region id or null (every region).", param="grants")
        if region is not None and region not in self.region_ids:
            raise Invalid(
                f"Unknown region '{region}' in grant; regions: {', '.join(self.region_ids)}.", param="grants"
            )
        if model != "*":
            if model not in self.models:
                raise Invalid(
                    f"Unknown model '{model}' in grant; models: {', '.join(self.models)} or '*'.",
                    param="grants",
                )
            if region is not None and (model, region) not in self.deployed:
                where = [r for r in self.region_ids if (model, r) in self.deployed]
                raise Invalid(
                    f"Model '{model}' is not offered in {region}; it is offered in: {', '.join(where)}.",
                    param="grants",
                )
        return Grant(model, region)

    def grants(self, value: object) -> tuple[Grant, ...] | None:
        """Grants from JSON: null (every model everywhere) or a list of {"model", "region"?} objects."""
        if value is None:
            return None
        if not isinstance(value, list):
            raise Invalid("'grants' must be null (every model) or a list of {model, region}.", param="grants")
        out = []
        for item in value:
            if not isinstance(item, dict) or set(item) - {"model", "region"}:
                raise Invalid(
                    "Each grant must be an object with 'model' and optionally 'region'.", param="grants"
                )
            out.append(self.grant(item.get("model"), item.get("region")))
        return tuple(out)

    def grant_spec(self, spec: str) -> Grant:
        """CLI form: 'MODEL' or 'MODEL@REGION' ('*@eu-west-1' for every model in a region)."""
        model, _, region = spec.partition("@")
        return self.grant(model, region or None)

    def zone(self, value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or value not in self.zones:
            raise Invalid(f"Unknown data zone {value!r}; zones: {', '.join(self.zones)}.", param="zone")
        return value

    @staticmethod
    def budget(value: object) -> float | None:
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise Invalid(
                "'spill_budget_ms' must be a non-negative number of milliseconds.", param="spill_budget_ms"
            )
        return float(value)

    @staticmethod
    def ttft_budget(value: object) -> float | None:
        """A key's first-byte budget: milliseconds in (0, 10 min], as the request header takes."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_BUDGET_MS:
            raise Invalid(
                f"'ttft_budget_ms' must be a number of milliseconds in (0, {MAX_BUDGET_MS:g}].",
                param="ttft_budget_ms",
            )
        return float(value)

    # --- the matrix ------------------------------------------------------------------------------------
    def matrix(self, access: Access, region: str | None = None) -> dict[str, object]:
        """Which model each region offers to ``access`` and which the global endpoint reaches."""
        if region is not None and region not in self.region_ids:
            raise Invalid(
                f"Unknown region '{region}'; regions: {', '.join(self.region_ids)}.", param="region"
            )

        def usable(m: str, r: RegionInfo) -> bool:
            return (
                (m, r.id) in self.deployed
                and access.permits(m, r.id)
                and (access.zone is None or r.zone == access.zone)
            )

        visible = [r for r in self.regions if access.zone is None or r.zone == access.zone]
        if access.grants is not None:  # a team never sees a region it has no grant in
            visible = [r for r in visible if any(usable(m, r) for m in self.models)]
        if region is not None:
            visible = [r for r in visible if r.id == region]
        rows = []
        for m in self.models:
            cells = {r.id: usable(m, r) for r in visible}
            reachable = any(usable(m, r) for r in self.regions)  # through the global endpoint
            if reachable and (region is None or cells.get(region)):
                rows.append({"id": m, "regions": cells, "global": reachable})
        return {
            "team": access.team,
            "zone": access.zone,
            "regions": [{"id": r.id, "name": r.name, "zone": r.zone} for r in visible],
            "models": rows,
        }
