"""Which requests share a prefix key: stable across a conversation's turns, scoped to team and model."""

from __future__ import annotations

from regiongate.pipeline.affinity import prefix_key

SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 50}


def chat(*turns: str) -> dict[str, object]:
    msgs: list[dict[str, str]] = [SYSTEM]
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return {"model": "m", "messages": msgs}


def key(
    payload: dict[str, object],
    team: str = "t",
    model: str = "m",
    conv: str | None = None,
    path: str = "/chat/completions",
) -> str | None:
    found = prefix_key(path, payload, team, model, conv)
    return None if found is None else found[0]


def test_every_turn_of_a_conversation_has_the_first_turns_key() -> None:
    k1 = key(chat("hi"))
    assert k1 is not None
    assert key(chat("hi", "hello!", "and then?")) == k1
    assert key(chat("hi", "hello!", "and then?", "this.", "more")) == k1
    assert key(chat("another question")) != k1


def test_scoped_to_team_and_model() -> None:
    p = chat("hi")
    assert len({key(p), key(p, team="u"), key(p, model="n")}) == 3


def test_explicit_keys_win_in_order() -> None:
    p = {**chat("hi"), "user": "alice", "prompt_cache_key": "doc-42"}
    assert key(p) == key({"prompt_cache_key": "doc-42", "messages": []})
    assert key({**chat("hi"), "user": "alice"}, conv="c1") == key({"messages": []}, conv="c1")
    assert key({**chat("hi"), "user": "alice"}) == key({"user": "alice"})
    assert (
        key({"prompt_cache_key": ["not", "a", "string"], "messages": [{"role": "user", "content": "x"}]})
        is not None
    )


def test_nothing_to_key_on() -> None:
    assert key({"messages": "not a list"}) is None
    assert key({"messages": [{"role": "assistant", "content": "x"}]}) is None
    assert key({"input": [1, 2]}, path="/embeddings") is None
    assert (
        key(
            {"model": "m", "input": [{"role": "user", "content": "q"}], "instructions": "be brief"},
            path="/responses",
        )
        is not None
    )


def test_only_later_turns_and_explicit_keys_are_looked_up() -> None:
    def ask(payload: dict[str, object], conv: str | None = None) -> bool:
        found = prefix_key("/chat/completions", payload, "t", "m", conv)
        assert found is not None
        return found[1]

    assert not ask(chat("hi"))  # a first turn: remembered only
    assert ask(chat("hi", "hello!", "and then?"))
    assert ask({**chat("hi"), "user": "alice"}) and ask(chat("hi"), conv="c1")
