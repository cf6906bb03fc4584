"""Config sections for running several replicas: ``[shared]`` (Redis), ``[limits]`` (rate limits) and
``[health]`` (active probes and outlier ejection). Imported by ``regiongate.config``; kept apart so the
scale-out settings read as one unit."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OutageMode = Literal["fail-open", "fail-closed"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SharedConfig(_Model):
    """Where state shared by replicas lives. Without ``redis`` every process counts on its own."""

    redis: str | None = None  # redis://host:port/db (or rediss://, unix://)
    key_prefix: str = Field("regiongate:", min_length=1, max_length=64)
    lease_ttl_s: float = Field(30.0, gt=0)  # a dead replica's leases expire after at most this long
    heartbeat_s: float = Field(10.0, gt=0)  # live leases are renewed this often (must be < lease_ttl_s)
    refresh_s: float = Field(1.0, gt=0)  # how often the local view of capacity in use is re-read
    timeout_ms: float = Field(250.0, gt=0)  # one Redis command slower than this counts as an outage
    reconnect_s: float = Field(1.0, gt=0)  # while Redis is down, try it again this often
    on_redis_outage: OutageMode = "fail-open"  # rate limits, and deployments that do not say otherwise
    replicas: int = Field(1, ge=1)  # expected replica count, for fail-open shares before any was seen

    @field_validator("redis")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @model_validator(mode="after")
    def _beat(self) -> SharedConfig:
        if self.heartbeat_s >= self.lease_ttl_s:
            raise ValueError(
                f"heartbeat_s ({self.heartbeat_s:g}) must be shorter than lease_ttl_s ({self.lease_ttl_s:g})"
            )
        return self


class RateLimit(_Model):
    """Per minute; 0 means no limit."""

    requests_per_minute: int = Field(0, ge=0)
    tokens_per_minute: int = Field(0, ge=0)


class RateLimitOverride(_Model):
    requests_per_minute: int | None = Field(None, ge=0)
    tokens_per_minute: int | None = Field(None, ge=0)


class TeamLimits(_Model):
    team: RateLimitOverride = RateLimitOverride()  # the whole team, all its keys together
    key: RateLimitOverride = RateLimitOverride()  # each key of the team on its own


class LimitsConfig(_Model):
    team: RateLimit = RateLimit()  # default for every team
    key: RateLimit = RateLimit()  # default for every key
    teams: dict[str, TeamLimits] = {}  # per-team overrides, by team name

    def for_team(self, team: str) -> tuple[RateLimit, RateLimit]:
        """(team limit, per-key limit) for ``team``, overrides applied field by field."""
        o = self.teams.get(team)
        if o is None:
            return self.team, self.key
        return _merge(self.team, o.team), _merge(self.key, o.key)

    @property
    def any(self) -> bool:
        limits = [self.team, self.key, *(_merge(self.team, t.team) for t in self.teams.values())]
        limits += [_merge(self.key, t.key) for t in self.teams.values()]
        return any(x.requests_per_minute or x.tokens_per_minute for x in limits)


def _merge(base: RateLimit, o: RateLimitOverride) -> RateLimit:
    return RateLimit(
        requests_per_minute=base.requests_per_minute
        if o.requests_per_minute is None
        else o.requests_per_minute,
        tokens_per_minute=base.tokens_per_minute if o.tokens_per_minute is None else o.tokens_per_minute,
    )


class HealthConfig(_Model):
    """Active probes and passive outlier ejection (Envoy's outlier detection, with these defaults)."""

    probe_interval_s: float = Field(5.0, ge=0)  # 0 turns active probes off
    probe_path: str = Field("/models", pattern=r"^/")  # appended to each HTTP backend's URL (…/v1)
    probe_timeout_s: float = Field(2.0, gt=0)
    unhealthy_after: int = Field(2, ge=1)  # failed probes in a row that take a backend out
    healthy_after: int = Field(1, ge=1)  # good probes in a row that bring it back
    rtt_halflife_s: float = Field(30.0, gt=0)
    consecutive_failures: int = Field(3, ge=1)  # failed requests in a row that eject a backend
    base_ejection_s: float = Field(5.0, gt=0)  # first ejection; doubles with each further one
    max_ejection_s: float = Field(300.0, gt=0)
