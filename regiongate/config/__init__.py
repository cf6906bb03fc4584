"""The one TOML config file, validated at load with messages that name the bad field.

The demo world (``demo.toml`` in this package) is such a file. Validation is strict (unknown keys are
errors) so a typo in a field name never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import math
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
# The service tiers a key or team is configured with (``regiongate.core.tiers``; ``auto`` is a request's).
ServiceTier = Literal["default", "flex", "priority"]


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
    first_byte_s: float = Field(30.0, gt=0)  # the ceiling of a stream's adaptive first-byte budget
    # The budget (regiongate.state.first_byte): factor x p95 of the deployment's observed TTFTs, not below
    # first_byte_floor_s; used only when another candidate is left to try.
    first_byte_floor_s: float = Field(5.0, gt=0)
    first_byte_factor: float = Field(4.0, gt=0)
    # The longest silence between two stream chunks; while the stream could be continued elsewhere, the
    # first-byte rule applied to the hop's own TTFT: clamp(factor x TTFT, floor, idle_s) (Gateway._idle_s).
    idle_s: float = Field(30.0, gt=0)
    total_s: float = Field(600.0, gt=0)


# What varies between servers (regiongate.upstream.dialect gives each kind's defaults; docs/backends.md).
ServerKind = Literal["generic", "openai", "vllm", "sglang", "llama.cpp", "llama-cpp-python"]
RequestIdMode = Literal["off", "uuid", "as-is"]
MaxTokensMode = Literal["as-is", "max_tokens"]

# How a backend continues an assistant message it is given (regiongate.pipeline.continuation).
Prefill = Literal["vllm", "llama.cpp", "prefix", "none"]


class SimulatedBackend(_Model):
    kind: Literal["simulated"]
    id: str = ""
    prefill: Prefill = "vllm"  # the simulated engine continues a final assistant message as vLLM does
    ttft_ms: float = Field(80.0, ge=0)
    tokens_per_s: float = Field(100.0, gt=0)
    slots: int | None = Field(None, ge=1)  # concurrent sequences; more queue (default: the deployment limit)
    rtt_ms: float = Field(0.0, ge=0)  # emulated network round trip
    responses: Literal["native", "chat"] = "chat"  # see HttpBackend.responses


class HttpBackend(_Model):
    kind: Literal["http"]
    id: str = ""
    url: str  # base URL of an OpenAI-compatible API, including /v1
    api_key: str | None = None
    api_key_env: str | None = None
    model: str | None = None  # model name upstream, when it differs
    timeouts: Timeouts | None = None
    metrics_url: str | None = None  # Prometheus load metrics (default <origin>/metrics; "" = do not scrape)
    prefill: Prefill = "vllm"  # how it continues a broken stream's text; "none" if it cannot
    # How /v1/responses reaches this backend: "native" forwards it (llama.cpp, vLLM, providers implement
    # it); "chat" translates it to /v1/chat/completions and the answer back (regiongate.upstream.responses).
    # None: "chat" for a server that has no /v1/responses (llama-cpp-python), else "native".
    responses: Literal["native", "chat"] | None = None
    # The server's dialect (regiongate.upstream.dialect, docs/backends.md): its kind gives the defaults of
    # the fields after it; each one given here overrides its default.
    server: ServerKind = "generic"
    request_id: RequestIdMode | None = None  # x-request-id upstream: "as-is", "uuid" (uuid5 of ours), "off"
    max_completion_tokens: MaxTokensMode | None = None  # "max_tokens": sent under the older name
    probe_path: str | None = Field(None, pattern=r"^/[A-Za-z0-9\-._~/]*$")  # None: [health].probe_path
    busy_probe_grace: bool | None = None  # a probe timeout while its requests succeed is not counted

    @property
    def responses_mode(self) -> Literal["native", "chat"]:
        if self.responses is not None:
            return self.responses
        return "chat" if self.server == "llama-cpp-python" else "native"

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
    # Service tiers (regiongate.core.tiers): this share of the limit (rounded up) is kept for priority
    # requests; flex requests are admitted only while less than flex_below of the limit is in use.
    priority_reserve: float = Field(0.0, ge=0, lt=1)
    flex_below: float = Field(1.0, gt=0, le=1)

    @property
    def reserve_slots(self) -> int:
        return math.ceil(self.limit * self.priority_reserve - 1e-9)

    @property
    def flex_limit(self) -> int | None:
        return None if self.flex_below >= 1.0 else math.floor(self.limit * self.flex_below + 1e-9)


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
    service_tier: ServiceTier = "default"  # the tier of its requests that ask for none (or "auto")
    continuation: bool = True  # false: its streams broken mid-answer end with the error, never continued
    ttft_budget_ms: float | None = Field(None, gt=0, le=600_000)  # caps every first-byte wait of its streams

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
    retention_s: float | None = Field(None, ge=0)  # stored objects' lifetime; None: [state].retention_s
    service_tiers: list[ServiceTier] | None = None  # the tiers its keys may ask for; None: all three

    @model_validator(mode="after")
    def _key_tiers(self) -> TeamConfig:
        if self.service_tiers is not None:
            for i, k in enumerate(self.keys):
                if k.service_tier not in self.service_tiers:
                    raise ValueError(
                        f"keys[{i}].service_tier: '{k.service_tier}' is not in this team's service_tiers "
                        f"({', '.join(self.service_tiers) or 'none'})"
                    )
        return self


class GatewayConfig(_Model):
    lat: float = Field(39.04, ge=-90, le=90)
    lon: float = Field(-77.49, ge=-180, le=180)
    base_domains: list[str] = []
    trusted_proxies: list[str] = ["127.0.0.0/8", "::1/128"]
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    retry_after_s: float = Field(1.0, gt=0)
    ttft_halflife_s: float = Field(10.0, gt=0)
    shutdown_grace_s: float = Field(30.0, gt=0)  # SIGTERM: how long in-flight requests may finish
    drain_s: float = Field(5.0, ge=0)  # SIGTERM: /readyz 503 while still serving, before refusing
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


class HedgingConfig(_Model):
    """Hedging a slow first byte (``regiongate.pipeline.hedge``): once a stream has waited
    clamp(after_factor x p95 of the deployment's TTFTs, floor_s, its budget) without a first byte, the next
    candidate in scope is started beside it and the first to answer is kept. Off by default: each hedge is
    one more upstream request."""

    enabled: bool = False
    after_factor: float = Field(1.0, gt=0)
    floor_s: float = Field(0.25, ge=0)


class EdgeConfig(_Model):
    """Limits and timeouts of the public listeners (``regiongate.front.edge``, ``regiongate.grpc.server``),
    per worker process. Read at start; a reload keeps the running values."""

    max_header_bytes: int = Field(32 * 1024, ge=1024)  # request line + headers; past it 431
    header_timeout_s: float = Field(10.0, gt=0, le=300)  # connection open -> request head complete; 408
    body_timeout_s: float = Field(60.0, gt=0)  # request head complete -> body complete; then closed
    keepalive_idle_s: float = Field(5.0, gt=0)  # an idle kept-alive connection is closed after this
    max_connections: int = Field(4096, ge=1)  # open REST connections per worker; beyond, 503
    grpc_max_metadata_bytes: int = Field(16 * 1024, ge=1024)  # a call's headers; past it RESOURCE_EXHAUSTED
    grpc_max_message_bytes: int | None = Field(None, ge=1024)  # None: max(20 MiB, max_body_bytes)
    grpc_max_concurrent_streams: int = Field(100, ge=1)  # calls at once on one connection
    grpc_keepalive_s: float = Field(120.0, gt=0)  # our pings find dead clients behind NATs
    grpc_keepalive_timeout_s: float = Field(20.0, gt=0)  # unanswered ping -> connection closed
    grpc_idle_s: float = Field(300.0, gt=0)  # a connection with no call for this long is closed
    grpc_max_connections: int = Field(4096, ge=1)  # open gRPC connections per worker; beyond, closed


class LoadConfig(_Model):
    """Load read from the backends' own Prometheus metrics (``regiongate.health.load``)."""

    scrape_interval_s: float = Field(2.0, ge=0)  # 0 turns scraping off
    scrape_timeout_s: float = Field(1.0, gt=0)
    stale_after_s: float = Field(10.0, gt=0)  # an older reading counts as none


class StateConfig(_Model):
    """Where stored objects (deferred completions, stored responses) live: one store per region, so an
    object is at rest in the region that processed it (docs/state.md)."""

    # "" = one SQLite file per region, <data dir>/state/<region>.db; "none" = no stored objects;
    # else a URL template with {region} (or {region_} for '-' -> '_'): "sqlite:////var/rg/{region}.db",
    # "postgresql://db/rg?schema=state_{region_}".
    store: str = ""
    regions: dict[str, str] = {}  # region id -> its own store URL (overrides the template)
    retention_s: float = Field(30 * 86400, ge=0)  # default lifetime of a stored object; teams override it
    deferred_timeout_s: float = Field(600.0, gt=0)  # a deferred completion still pending after this expires
    purge_interval_s: float = Field(60.0, gt=0)  # expired objects are deleted this often

    @field_validator("store")
    @classmethod
    def _template(cls, v: str) -> str:
        if v in ("", "none"):
            return v
        if not v.startswith(("sqlite:", "postgresql://", "postgres://")):
            raise ValueError("use '', 'none', or a 'sqlite:///...' / 'postgresql://...' URL template")
        if "{region}" not in v and "{region_}" not in v:
            raise ValueError(
                "must name the region ({region} or {region_}): each region keeps its objects in its own store"
            )
        return v

    @field_validator("regions")
    @classmethod
    def _urls(cls, v: dict[str, str]) -> dict[str, str]:
        for region, url in v.items():
            if not url.startswith(("sqlite:", "postgresql://", "postgres://")):
                raise ValueError(f"{region}: use a 'sqlite:///...' or 'postgresql://...' URL")
        if len(set(v.values())) != len(v):
            raise ValueError("two regions share one store URL: each region keeps its objects in its own store")
        return v


class AffinityConfig(_Model):
    """Prompt-cache affinity (``regiongate.core.affinity``): requests sharing a prefix prefer the region and
    backend that served it within ``ttl_s``. Shared through ``[shared].redis`` when set."""

    enabled: bool = True
    ttl_s: float = Field(300.0, gt=0)  # how long a backend is assumed to keep a prefix in its cache
    max_entries: int = Field(100_000, ge=1)  # prefixes remembered per process (least recent dropped)


class ModelInfo(_Model):
    owned_by: str = "regiongate"
    created: int = 1752019200
    aliases: list[str] = []
    # What the model does, for the xAI model lists (language, embedding, image generation models).
    kind: Literal["language", "embedding", "image", "video"] = "language"


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
    edge: EdgeConfig = EdgeConfig()
    state: StateConfig = StateConfig()
    affinity: AffinityConfig = AffinityConfig()
    hedging: HedgingConfig = HedgingConfig()
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
        for r in self.state.regions:
            if r not in ids:
                raise ValueError(f"state.regions: unknown region '{r}' (known: {', '.join(ids)})")
        for t in self.teams:
            for k in t.keys:
                if k.zone is not None and k.zone not in zones:
                    raise ValueError(f"teams.{t.name}.keys.zone: unknown zone '{k.zone}'")
        return self


def format_validation_error(e: ValidationError, source: str, what: str = "config") -> str:
    """One line: the file, then each bad field named by its path (``regions.1.lat: ...``)."""
    fields = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        fields.append(f"{loc}: {err['msg']}")
    return f"{source}: invalid {what}: " + "; ".join(fields)


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
        raise ConfigError(f"{p}: cannot read config: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})"
        ) from None
    return parse_config(text, str(p))


def demo_config_text() -> str:
    return resources.files("regiongate").joinpath("demo.toml").read_text(encoding="utf-8")
