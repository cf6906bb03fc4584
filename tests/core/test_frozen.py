"""``core.frozen``: the cheaper constructors give exactly what the dataclass constructors give."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field

import pytest

from regiongate.core import BackendState, DeploymentState, Location, RouteRequest, WorldSnapshot
from regiongate.core.frozen import fast_constructor
from regiongate.core.request import new_route_request
from regiongate.core.world import new_backend_state, new_deployment_state, new_snapshot


def test_same_values_same_type_still_frozen() -> None:
    b = new_backend_state("b1", False, 3, 12.5)
    assert type(b) is BackendState
    assert b == BackendState("b1", False, 3, 12.5)
    assert hash(b) == hash(BackendState("b1", False, 3, 12.5))
    d = new_deployment_state("m", "r", 8, 5, (b,), 80.0, queue_depth=2, flex_limit=6)
    expected = DeploymentState(
        "m", "r", 8, 5, (BackendState("b1", False, 3, 12.5),), 80.0, queue_depth=2, flex_limit=6
    )
    assert type(d) is DeploymentState
    assert d == expected and repr(d) == repr(expected)
    assert d.free == 3 and not d.has_healthy_backend
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.in_use = 0  # type: ignore[misc]
    assert dataclasses.replace(d, in_use=0) == dataclasses.replace(expected, in_use=0)
    assert pickle.loads(pickle.dumps(d)) == expected


def test_defaults_and_factories_are_the_dataclass_ones() -> None:
    s = new_snapshot({}, {}, Location(1.0, 2.0))
    assert s == WorldSnapshot({}, {}, Location(1.0, 2.0))
    assert s.by_model == {} and s.by_model is not new_snapshot({}, {}, Location(1.0, 2.0)).by_model
    r = new_route_request("m", prompt_tokens=10, salt=7)
    assert type(r) is RouteRequest and r == RouteRequest("m", prompt_tokens=10, salt=7)


def test_refuses_what_it_cannot_copy_faithfully() -> None:
    @dataclass(slots=True)
    class Mutable:
        x: int

    @dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclass(frozen=True, slots=True)
    class Checked:
        x: int
        extra: list[int] = field(default_factory=list)

        def __post_init__(self) -> None:
            if self.x < 0:
                raise ValueError("x")

    for cls in (Mutable, NoSlots, Checked):
        with pytest.raises(TypeError):
            fast_constructor(cls)
