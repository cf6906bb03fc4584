"""The one TOML config file, validated at load with messages that name the bad field.

The demo world (``demo.toml`` in this package) is such a file. Validation is strict (unknown keys are
errors) so a typo in a field name never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from regiongate.config.control import ControlConfig
from regiongate.config.scale import HealthConfig, LimitsConfig, OutageMode, SharedConfig
from regiongate.config.tracing import TracingConfig

REGION_ID = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


def _check_geoip_database(path: str) -> None:
    """Raise ValueError unless ``path`` opens as a MaxMind DB."""
    import maxminddb

    try:
        maxminddb.open_database(path).close()
    except FileNotFoundError:
        raise ValueError(f"no such file: {path}") from None
    except (OSError, maxminddb.InvalidDatabaseError, ValueError) as e:
        raise ValueError(f"{path} is not a readable MaxMind DB file: {e}") from None


class ConfigError(ValueError):
    """The config file is missing, not TOML, or fails validation; the message names each bad field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Model):
    connect_s: float = Field(2.0, gt=0)
    first_byte_s: float = Field(30.0, gt=0)
    idle_s: float = Field(60.0, gt=0)  # longest silence between two stream chunks
    total_s: float = Field(600.0, gt=0)


class SimulatedBackend(_Model):
    kind: Literal["simulated"]
    id: str = ""
    ttft_ms: float = Field(80.0, ge=0)
    tokens_per_s: float = Field(100.0, gt=0)
    slots: int | None = Field(None, ge=1)  # concurrent sequences; more queue (default: the deployment limit)
    rtt_ms: float = Field(0.0, ge=0)  # emulated network round trip


class HttpBackend(_Model):
    kind: Literal["http"]
    id: str = ""
    url: str  # base URL of an OpenAI-compatible API, including /v1
    api_key: str | None = None
    api_key_env: str | None = None
    model: str | None = None  # model name upstream, when it differs
    timeouts: Timeouts | None = None
    metrics_url: str | None = None  # Prometheus load metrics (default <origin>/metrics; "" = do not scrape)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


Backend = Annotated[SimulatedBackend | HttpBackend, Field(discriminator="kind")]


class RegionConfig(_Model):
    id: str = Field(pattern=REGION_ID)
    name: str = ""
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    zone: str = Field(pattern=REGION_ID)


class DeploymentConfig(_Model):
    region: str
    models: list[str] = Field(min_length=1)
    limit: int = Field(8, ge=1)  # concurrent requests per model in this region
    backends: list[Backend] = Field(min_length=1)
    on_redis_outage: OutageMode | None = None  # None: [shared].on_redis_outage


class GrantConfig(_Model):
    model: str = "*"
    region: str | None = None


class KeyConfig(_Model):
    """A key given in the config: its SHA-256 hex digest, or the name of an env var holding the key."""

    id: str = ""
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    env: str | None = None
    zone: str | None = None
    spill_budget_ms: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> KeyConfig:
        if (self.sha256 is None) == (self.env is None):
            raise ValueError("give exactly one of 'sha256' or 'env'")
        return self


class TeamConfig(_Model):
    name: str = Field(min_length=1, max_length=64)
    grants: list[GrantConfig] | None = None  # None: every model in every region
    keys: list[KeyConfig] = []
    generate_demo_key: bool = False  # print a fresh key at start-up when no env key is set


class GatewayConfig(_Model):
    lat: float = Field(39.04, ge=-90, le=90)
    lon: float = Field(-77.49, ge=-180, le=180)
    base_domains: list[str] = []
    trusted_proxies: list[str] = ["127.0.0.0/8", "::1/128"]
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    retry_after_s: float = Field(1.0, gt=0)
    ttft_halflife_s: float = Field(10.0, gt=0)
    shutdown_grace_s: float = Field(30.0, gt=0)  # SIGTERM: how long in-flight requests may finish
    geoip_database: str | None = None  # MaxMind-format (.mmdb) file: client location from its address

    @field_validator("geoip_database")
    @classmethod
    def _geoip(cls, v: str | None) -> str | None:
        if v is not None:
            _check_geoip_database(v)  # a missing or unreadable file is a config error, at start and on reload
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as e:
                raise ValueError(f"'{net}' is not an IP network: {e}") from None
        return v


class LoadConfig(_Model):
    """Load read from the backends' own Prometheus metrics (``regiongate.health.load``)."""

    scrape_interval_s: float = Field(2.0, ge=0)  # 0 turns scraping off
    scrape_timeout_s: float = Field(1.0, gt=0)
    stale_after_s: float = Field(10.0, gt=0)  # an older reading counts as none


class ModelInfo(_Model):
    owned_by: str = "regiongate"
    created: int = 1752019200
    aliases: list[str] = []


class Config(_Model):
    gateway: GatewayConfig = GatewayConfig()
    timeouts: Timeouts = Timeouts()
    regions: list[RegionConfig] = Field(min_length=1)
    deployments: list[DeploymentConfig] = []
    models: dict[str, ModelInfo] = {}
    teams: list[TeamConfig] = []
    shared: SharedConfig = SharedConfig()
    limits: LimitsConfig = LimitsConfig()
    health: HealthConfig = HealthConfig()
    control: ControlConfig = ControlConfig()
    load: LoadConfig = LoadConfig()
    tracing: TracingConfig | None = None  # OpenTelemetry traces: off unless the section is present

    @model_validator(mode="after")
    def _cross_refs(self) -> Config:
        ids = [r.id for r in self.regions]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"regions: duplicate id {sorted(dup)}")
        zones = {r.zone for r in self.regions}
        clash = set(ids) & zones
        if clash:
            raise ValueError(f"regions: {sorted(clash)} used both as a region id and a zone")
        seen: set[tuple[str, str]] = set()
        for i, d in enumerate(self.deployments):
            if d.region not in ids:
                raise ValueError(
                    f"deployments[{i}].region: unknown region '{d.region}' (known: {', '.join(ids)})"
                )
            for m in d.models:
                if (m, d.region) in seen:
                    raise ValueError(f"deployments[{i}].models: '{m}' is deployed twice in {d.region}")
                seen.add((m, d.region))
        names = [t.name for t in self.teams]
        if len(set(names)) != len(names):
            raise ValueError("teams: duplicate team name")
        for t in self.teams:
            for k in t.keys:
                if k.zone is not None and k.zone not in zones:
                    raise ValueError(f"teams.{t.name}.keys.zone: unknown zone '{k.zone}'")
        return self


def format_validation_error(e: ValidationError, source: str, what: str = "config") -> str:
    """One line per bad field, named by its path (``regions.1.lat: ...``)."""
    lines = [f"{source}: invalid {what}"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load ``path``, or the demo world shipped in the package when None."""
    if path is None:
        return parse_config(demo_config_text(), "demo.toml")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror}") from None
    return parse_config(text, str(p))


def demo_config_text() -> str:
    return resources.files("regiongate").joinpath("demo.toml").read_text(encoding="utf-8")
