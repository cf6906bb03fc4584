"""The scenario: one TOML file that says what traffic to send at which fleet, and what goes wrong when.

Validation is strict like the gateway config (unknown keys are errors). Relative paths in it (the fleet
config, a metro table) are read relative to the scenario file. The default scenario ships in the package
(``data/default.toml``) and documents every field.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from regiongate.config import format_validation_error

PolicyName = Literal[
    "gateway",
    "nearest-only",
    "nearest-spill",
    "least-loaded",
    "power-of-two",
    "oracle",
    "gateway-greedy",
    "gateway-unreserved",
]
POLICY_NAMES: tuple[PolicyName, ...] = (
    "gateway",
    "nearest-only",
    "nearest-spill",
    "least-loaded",
    "power-of-two",
    "oracle",
)
# Also known, not run by default: gateway-greedy (the gateway's policy without its randomised choice).
ALL_POLICY_NAMES: tuple[str, ...] = (*POLICY_NAMES, "gateway-greedy", "gateway-unreserved")
ENDPOINT_KINDS = ("global", "zone", "region", "fenced")
DAY_S = 86400.0


class ScenarioError(ValueError):
    """The scenario is missing, not TOML, fails validation or does not fit the fleet config."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_clock(value: str | float | int) -> float:
    """Time of day in seconds from ``"HH:MM"`` / ``"HH:MM:SS"`` or a number of hours."""
    if isinstance(value, int | float):
        if not 0 <= value <= 24:
            raise ValueError(f"hours must be within 0..24, got {value}")
        return float(value) * 3600.0
    m = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", value.strip())
    if m is None:
        raise ValueError(f"expected HH:MM, got {value!r}")
    h, mi, s = int(m[1]), int(m[2]), int(m[3] or 0)
    if h > 24 or mi > 59 or s > 59 or (h == 24 and (mi or s)):
        raise ValueError(f"not a time of day: {value!r}")
    return h * 3600.0 + mi * 60.0 + s


class RunConfig(_Model):
    requests: int = Field(10_000_000, ge=1)  # over one day; --requests compresses the day to fewer
    seed: int = 1
    samples: int = Field(288, ge=1, le=100_000)  # utilisation buckets over the day (288 = 5 minutes)
    policies: list[PolicyName] = Field(default_factory=lambda: list(POLICY_NAMES), min_length=1)
    replicas: int = Field(1, ge=1, le=64)  # gateway replicas, each deciding on its own snapshot
    staleness_ms: float = Field(0.0, ge=0)  # a replica's snapshot is refreshed when it is this old


class Override(_Model):
    """Resize or retune deployments matching ``region`` x ``model`` ('*' matches all)."""

    region: str = "*"
    model: str = "*"
    limit: int | None = Field(None, ge=1)
    slots: int | None = Field(None, ge=1)
    ttft_ms: float | None = Field(None, ge=0)
    tokens_per_s: float | None = Field(None, gt=0)
    prefill_tokens_per_s: float | None = Field(None, gt=0)


class FleetConfig(_Model):
    config: str | None = None  # regiongate config file; None: the demo world (--config overrides)
    limit_scale: float = Field(1.0, gt=0)  # multiplies every deployment's limit and slots
    prefill_tokens_per_s: float = Field(8000.0, gt=0)  # prompt processing speed of one sequence
    ttft_ms: float = Field(80.0, ge=0)  # for backends whose config says nothing (http backends)
    tokens_per_s: float = Field(100.0, gt=0)
    report_queue_depth: bool = True  # backends report waiting requests (vLLM num_requests_waiting)
    overrides: list[Override] = []


class TokenDist(_Model):
    dist: Literal["lognormal", "exponential", "fixed"] = "lognormal"
    median: float | None = Field(None, gt=0)  # lognormal
    sigma: float = Field(1.0, ge=0)  # lognormal
    mean: float | None = Field(None, ge=0)  # exponential, fixed
    min: int = Field(1, ge=0)
    max: int = Field(32768, ge=1)

    @property
    def mean_value(self) -> float:
        """The distribution's mean, ignoring the clipping to [min, max]."""
        if self.dist == "lognormal":
            assert self.median is not None
            return min(self.median * math.exp(self.sigma * self.sigma / 2.0), float(self.max))
        assert self.mean is not None
        return self.mean

    @model_validator(mode="after")
    def _params(self) -> TokenDist:
        if self.dist == "lognormal" and self.median is None:
            raise ValueError("lognormal needs 'median'")
        if self.dist in ("exponential", "fixed") and self.mean is None:
            raise ValueError(f"{self.dist} needs 'mean'")
        if self.min > self.max:
            raise ValueError("'min' exceeds 'max'")
        return self


DEFAULT_DIURNAL = [
    0.35, 0.25, 0.20, 0.17, 0.17, 0.20, 0.30, 0.50, 0.75, 0.95, 1.00, 1.00,
    0.92, 0.97, 1.00, 0.98, 0.93, 0.85, 0.75, 0.70, 0.68, 0.65, 0.55, 0.45,
]  # fmt: skip


class Surge(_Model):
    """A flash crowd: one metro's traffic times ``factor`` between ``start`` and ``end`` (UTC). The day
    keeps its number of requests, so the rest of it gets a little less."""

    metro: str
    factor: float = Field(gt=0)
    start: str | float
    end: str | float

    @model_validator(mode="after")
    def _window(self) -> Surge:
        if parse_clock(self.end) <= parse_clock(self.start):
            raise ValueError("'end' must be after 'start' (within one UTC day)")
        return self


class TrafficConfig(_Model):
    metros: str | None = None  # CSV of metro areas; None: the table shipped in the package
    continent_weight: dict[str, float] = {}  # adoption per continent (default 1.0)
    country_weight: dict[str, float] = {}  # per ISO country code, multiplies the continent weight
    diurnal: list[float] = Field(default_factory=lambda: list(DEFAULT_DIURNAL), min_length=24, max_length=24)
    models: dict[str, float] = Field(min_length=1)  # model -> share of requests
    endpoints: dict[str, float] = Field(default_factory=lambda: {"global": 1.0})
    spill_budget_ms: float | None = Field(None, ge=0)  # keys' spillover budget on the global endpoint
    prompt_tokens: TokenDist = TokenDist(median=500, sigma=1.0)
    completion_tokens: TokenDist = TokenDist(median=150, sigma=0.9)
    surges: list[Surge] = []

    @field_validator("diurnal")
    @classmethod
    def _diurnal(cls, v: list[float]) -> list[float]:
        if any(x < 0 for x in v) or not any(x > 0 for x in v):
            raise ValueError("24 non-negative values, at least one positive")
        return v

    @field_validator("models", "continent_weight", "country_weight")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if any(x < 0 for x in v.values()):
            raise ValueError("weights must be non-negative")
        return v

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(set(v) - set(ENDPOINT_KINDS))
        if bad:
            raise ValueError(f"unknown endpoint kind {bad} (known: {', '.join(ENDPOINT_KINDS)})")
        if any(x < 0 for x in v.values()) or sum(v.values()) <= 0:
            raise ValueError("shares must be non-negative with a positive sum")
        return v


class RttOverride(_Model):
    """Measured round trip from clients (a metro name, ISO country code or continent) to a region."""

    source: str = Field(alias="from")
    to: str
    ms: float = Field(ge=0)


class NetworkConfig(_Model):
    rtt: list[RttOverride] = []


class Event(_Model):
    """An outage (every backend of the region down) or a capacity cut (limit and slots times ``factor``)."""

    kind: Literal["outage", "capacity"]
    region: str
    model: str = "*"
    start: str | float
    end: str | float
    factor: float = Field(0.5, ge=0)

    @property
    def start_s(self) -> float:
        return parse_clock(self.start)

    @property
    def end_s(self) -> float:
        return parse_clock(self.end)

    @model_validator(mode="after")
    def _window(self) -> Event:
        if parse_clock(self.end) <= parse_clock(self.start):
            raise ValueError("'end' must be after 'start' (within one UTC day)")
        return self


class Scenario(_Model):
    run: RunConfig = RunConfig()
    fleet: FleetConfig = FleetConfig()
    traffic: TrafficConfig
    network: NetworkConfig = NetworkConfig()
    events: list[Event] = []
    base_dir: str = ""  # where relative paths resolve; set by the loader, not the file

    def resolve(self, path: str) -> str:
        return path if os.path.isabs(path) or not self.base_dir else os.path.join(self.base_dir, path)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: tables merge key by key, arrays of tables (``[[events]]``,
    ``[[fleet.overrides]]``) are appended to, anything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        if isinstance(v, dict) and isinstance(old, dict):
            out[k] = _merged(old, v)
        elif isinstance(old, list) and _tables(v) and _tables(old):
            out[k] = [*old, *v]
        else:
            out[k] = v
    return out


def _tables(v: object) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{source}: not valid TOML: {e}") from None


def parse_scenario(text: str, source: str = "<scenario>", base_dir: str = "") -> Scenario:
    data = _toml(text, source)
    # ``extends = "default"`` starts from a scenario shipped in the package: a variant states only what
    # it changes.
    parent = data.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str) or parent not in shipped_scenarios():
            known = ", ".join(shipped_scenarios())
            raise ScenarioError(f"{source}: extends: not a scenario shipped in the package (known: {known})")
        data = _merged(_toml(shipped_scenario_text(parent), f"{parent}.toml"), data)
    if "base_dir" in data:
        raise ScenarioError(f"{source}: invalid scenario\n  base_dir: not a scenario field")
    data["base_dir"] = base_dir
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(format_validation_error(e, source, "scenario")) from None


def default_scenario_text() -> str:
    return shipped_scenario_text("default")


SUITE = ("default", "heterogeneous", "flash-crowd", "outage-recovery", "replicas")


def shipped_scenarios() -> tuple[str, ...]:
    """The scenarios in the package, by name: the suite ``simulate --suite`` runs, in its order."""
    return SUITE


def shipped_scenario_text(name: str) -> str:
    path = "data/default.toml" if name == "default" else f"data/suite/{name}.toml"
    return resources.files("regiongate.simulate").joinpath(path).read_text(encoding="utf-8")


def load_shipped(name: str) -> Scenario:
    return parse_scenario(shipped_scenario_text(name), f"{name}.toml")


def load_scenario(path: str | os.PathLike[str] | None = None) -> Scenario:
    """Load ``path``, or the default scenario shipped in the package when None."""
    if path is None:
        return parse_scenario(default_scenario_text(), "default.toml")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError(f"{p}: cannot read scenario: {e.strerror}") from None
    return parse_scenario(text, str(p), str(p.parent.resolve()))
