"""Key lookup: the bearer token to a principal, with 10,000 keys configured."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from regiongate.core import Access
from regiongate.pipeline.auth import Principal, StaticKeys, bearer_token, hash_key, new_key


@pytest.fixture(scope="module")
def keys() -> tuple[StaticKeys, list[str]]:
    store = StaticKeys()
    plain = [new_key() for _ in range(10_000)]
    for i, k in enumerate(plain):
        store.add(hash_key(k), Principal(f"team-{i % 50}", f"key-{i}", Access(f"team-{i % 50}")))
    return store, plain


def test_lookup_hit(benchmark: BenchmarkFixture, keys: tuple[StaticKeys, list[str]]) -> None:
    store, plain = keys
    assert benchmark(store.lookup, plain[1234]) is not None


def test_lookup_miss(benchmark: BenchmarkFixture, keys: tuple[StaticKeys, list[str]]) -> None:
    store, _ = keys
    assert benchmark(store.lookup, "rg-not-a-key-" + "x" * 40) is None


def test_header_to_principal(benchmark: BenchmarkFixture, keys: tuple[StaticKeys, list[str]]) -> None:
    """What the REST listener does per request: decode the header, parse the bearer token, look it up."""
    store, plain = keys
    raw = f"Bearer {plain[42]}".encode()

    def principal() -> Principal | None:
        key = bearer_token(raw.decode("latin-1"))
        return store.lookup(key) if key else None

    assert benchmark(principal) is not None
