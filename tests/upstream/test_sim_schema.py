"""The simulated engine's JSON-schema examples are accepted by the schema they came from (pydantic checks)."""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from regiongate.upstream.sim_schema import example


class Tree(BaseModel):
    name: str
    children: list[Tree]
    parent: Tree | None = None


class Bounds(BaseModel):
    ratio: float = Field(gt=0, lt=1)
    step: int = Field(ge=10, le=100, multiple_of=7)
    below: int = Field(lt=-5)
    tiny: float = Field(ge=-0.5, le=-0.25)
    code: str = Field(min_length=12, max_length=12)


class Kinds(BaseModel):
    when: datetime.datetime
    day: datetime.date
    id: uuid.UUID
    pair: tuple[int, str]
    tags: Annotated[list[str], Field(min_length=3, max_length=5)]
    extra: dict[str, int]
    mode: Literal["a", "b"]
    either: int | str
    flag: bool
    nothing: None = None


@pytest.mark.parametrize("model", [Tree, Bounds, Kinds])
def test_examples_validate_against_their_own_schema(model: type[BaseModel]) -> None:
    value = example(model.model_json_schema())
    model.model_validate(value)


def test_a_recursive_schema_ends() -> None:
    value = example(Tree.model_json_schema())
    depth, node = 0, value
    while node.get("children"):
        node, depth = node["children"][0], depth + 1
    assert 0 < depth <= 8
