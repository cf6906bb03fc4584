"""Service tiers (``service_tier``): who keeps a region's last slots when it fills. Pure.

Each deployment may hold back ``priority_reserve`` of its slots for ``priority`` requests and admit
``flex`` requests only while fewer than ``flex_limit`` slots are in use. So, for a deployment of ``limit``
slots with ``in_use`` taken, the slots a request of each tier may still take are

    priority: limit - in_use                                   (the reserve included)
    default:  limit - priority_reserve - in_use
    flex:     min(flex_limit, limit - priority_reserve) - in_use

A flex request therefore sees a region as full first and is the first to spill to a farther region, or
to be refused with ``Retry-After`` when no region in its scope is below its threshold; a priority request
finds room while any region in scope has a slot left. The tiers never widen the scope: they only make
regions look fuller to the lower tiers.

``auto`` is what a client sends to mean "my key's default"; it is resolved before routing and never
reaches the policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from regiongate.core.world import DeploymentState


class Tier(StrEnum):
    DEFAULT = "default"
    FLEX = "flex"
    PRIORITY = "priority"


AUTO = "auto"
CLIENT_VALUES = (AUTO, Tier.DEFAULT.value, Tier.FLEX.value, Tier.PRIORITY.value)  # what a client may send


def held_back(limit: int, tier: Tier, priority_reserve: int, flex_limit: int | None) -> int:
    """Slots of a deployment of ``limit`` that a request of ``tier`` may not take."""
    if tier is Tier.PRIORITY:
        return 0
    held = min(max(priority_reserve, 0), limit)
    if tier is Tier.FLEX and flex_limit is not None:
        held = max(held, limit - max(flex_limit, 0))
    return held


def resolve(asked: str | None, key_default: Tier, allowed: frozenset[Tier] | None) -> Tier | None:
    """The tier a request runs at: what it asked (``auto`` or nothing: the key's default), or None when
    its team may not use that tier. ``asked`` is already one of ``CLIENT_VALUES``."""
    tier = key_default if asked is None or asked == AUTO else Tier(asked)
    if allowed is not None and tier not in allowed:
        return None
    return tier


def view(dep: DeploymentState, tier: Tier) -> DeploymentState:
    """``dep`` as a request of ``tier`` sees it: its held-back slots no longer free (itself when none are)."""
    if not dep.priority_reserve and (tier is not Tier.FLEX or dep.flex_limit is None):
        return dep  # the common case (no tiers configured), without a copy or a computation
    held = held_back(dep.limit, tier, dep.priority_reserve, dep.flex_limit)
    if held == dep.held:
        return dep
    return replace(dep, held=held)


def views(deps: Sequence[DeploymentState], tier: Tier) -> Sequence[DeploymentState]:
    """``view`` of each of ``deps``; ``deps`` itself when none needs a copy (no tiers configured: the
    common case, checked without a call per deployment)."""
    flex = tier is Tier.FLEX
    for d in deps:
        if d.priority_reserve or (flex and d.flex_limit is not None):
            return [view(d, tier) for d in deps]
    return deps
