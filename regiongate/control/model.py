"""The control plane's values (teams, keys, usage rows) and the checks of their names and labels.

Refusals are the core's one error tree (``regiongate.core.errors``): ``Invalid`` (a malformed name or
value), ``NotFound`` (unknown team or key), ``Conflict`` (a duplicate name or an already revoked key),
``StoreUnavailable`` (the database cannot be reached). Messages name the offending field and say what is
allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from regiongate.core import Grant
from regiongate.core.errors import Invalid
from regiongate.core.tiers import Tier
from regiongate.pipeline.auth import Principal
from regiongate.pipeline.usage import UsageTotals

# Team names appear in URLs, CLI arguments and receipts: keep them to a safe, readable alphabet.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
KEY_ID_RE = re.compile(r"^key_[0-9a-f]{8,32}$")
LABEL_MAX = 128


def check_name(name: object, what: str = "team") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        shown = repr(name) if not isinstance(name, str) else repr(name[:80])
        raise Invalid(f"Invalid {what} name {shown}: use {NAME_RULE}.", param="name")
    return name


def check_tier(value: object, param: str = "service_tier") -> Tier:
    """A tier a key may default to or a team may be allowed: ``default``, ``flex`` or ``priority``."""
    if isinstance(value, str) and value in {t.value for t in Tier}:
        return Tier(value)
    shown = repr(value) if not isinstance(value, str) else repr(value[:40])
    raise Invalid(f"Unknown service tier {shown}; tiers: {', '.join(Tier)}.", param=param)


def check_tiers(value: object) -> tuple[Tier, ...] | None:
    """A team's allow-list: null (every tier) or a list of tiers, de-duplicated in order."""
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise Invalid("'service_tiers' must be null (every tier) or a list of tiers.", param="service_tiers")
    return tuple(dict.fromkeys(check_tier(v, "service_tiers") for v in value))


def check_label(label: object) -> str:
    if label is None:
        return ""
    if not isinstance(label, str) or len(label) > LABEL_MAX or not label.isprintable():
        raise Invalid(f"Key name must be printable text of at most {LABEL_MAX} characters.", param="name")
    return label


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    grants: tuple[Grant, ...] | None  # None: every model in every region
    created_at: float
    service_tiers: tuple[Tier, ...] | None = None  # the tiers its keys may use; None: every tier

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "grants": grants_json(self.grants),
            "service_tiers": None if self.service_tiers is None else [t.value for t in self.service_tiers],
            "created_at": round(self.created_at, 3),
        }


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as listed: never the secret, only its id, a short hint and its fences."""

    id: str
    team: str
    name: str
    hint: str  # the first characters of the key, e.g. "rg-AbCd"
    zone: str | None
    spill_budget_ms: float | None
    created_at: float
    revoked_at: float | None = None
    continuation: bool = True  # its streams broken mid-answer may be continued elsewhere in scope
    ttft_budget_ms: float | None = None  # caps every first-byte wait of its streams
    service_tier: Tier = Tier.DEFAULT  # the tier of its requests that ask for none (or ``auto``)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "team": self.team,
            "name": self.name,
            "hint": self.hint + "…",
            "zone": self.zone,
            "spill_budget_ms": self.spill_budget_ms,
            "continuation": self.continuation,
            "ttft_budget_ms": self.ttft_budget_ms,
            "service_tier": self.service_tier.value,
            "created_at": round(self.created_at, 3),
            "revoked_at": round(self.revoked_at, 3) if self.revoked_at is not None else None,
            "active": self.active,
        }


@dataclass(frozen=True, slots=True)
class NewKey:
    """What the store keeps of a freshly generated key (the secret itself is never stored)."""

    id: str
    key_hash: str
    hint: str
    name: str = ""
    zone: str | None = None
    spill_budget_ms: float | None = None
    continuation: bool = True
    ttft_budget_ms: float | None = None
    service_tier: Tier = Tier.DEFAULT


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: str
    model: str
    region: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    avg_ttft_ms: float | None
    avg_total_ms: float | None
    estimated_requests: int = 0  # requests whose backend reported no usage (tokens estimated)
    by_tier: dict[str, UsageTotals] = field(default_factory=dict)  # the same, per service tier

    def to_json(self) -> dict[str, object]:
        return {
            "day": self.day,
            "model": self.model,
            "region": self.region,
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "avg_ttft_ms": None if self.avg_ttft_ms is None else round(self.avg_ttft_ms, 1),
            "avg_total_ms": None if self.avg_total_ms is None else round(self.avg_total_ms, 1),
            "estimated_requests": self.estimated_requests,
            "by_tier": {tier: t.to_json() for tier, t in self.by_tier.items()},
        }


@dataclass(frozen=True, slots=True)
class AccessSnapshot:
    """Everything the hot path needs from the store, loaded in one read: active keys by hash and the
    receipt public keys every gateway publishes."""

    revision: int
    by_hash: dict[str, Principal] = field(default_factory=dict)
    signing_keys: tuple[dict[str, str], ...] = ()


def grants_json(grants: tuple[Grant, ...] | None) -> list[dict[str, str | None]] | None:
    if grants is None:
        return None
    return [{"model": g.model, "region": g.region} for g in grants]


def redact(url: str) -> str:
    """``url`` without a password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
