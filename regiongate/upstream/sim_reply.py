"""What the simulated engine generates for one request, apart from the API dialect that asked for it.

An ``Ask`` holds what shapes the answer (length limit, ``n``, stop sequences, tools and tool choice, a JSON
format, logprobs); each of the engine's dialects (chat and legacy completions, Responses, Anthropic messages)
reads its own request fields into one. ``reply`` turns it into ``Choice``s: the tokens of a text, or of a tool
call's arguments, and why generation ended. Everything is deterministic for the same request, so tests and demos
repeat; the text says it is simulated and names the model and the region.

The rules a real model follows only by chance are kept exactly: text is cut *before* the earliest stop
sequence (finish ``stop``); a tool is called when tools are given and the choice allows it (``auto`` calls a
tool until the conversation holds a tool result, then answers in text; ``required`` and a named function always
call); a JSON format gives valid JSON for its schema (``sim_schema``) unless the length limit cuts it, as on
a real server.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from regiongate.upstream.sim_schema import example

FILLER = [
    "regiongate",
    "routes",
    "each",
    "request",
    "to",
    "the",
    "region",
    "with",
    "the",
    "lowest",
    "latency",
    "that",
    "has",
    "capacity",
    "and",
    "keeps",
    "regional",
    "requests",
    "inside",
    "their",
    "region",
    "so",
    "that",
    "data",
    "stays",
    "where",
    "it",
    "must",
]
DEFAULT_MAX_TOKENS = 4096
JSON_PIECE = 4  # characters per token of JSON text (tool arguments, structured output)
ANY_TOOL = "*"  # the tool choice that calls whichever tool fits (auto before a tool result, required)


class BadRequest(ValueError):
    """The request cannot be answered as given (a 400 with ``param``), as a real server refuses it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    schema: dict[str, Any]


@dataclass(slots=True)
class Ask:
    model: str
    seed: int  # from the conversation: the same conversation gets the same answer
    max_tokens: int = DEFAULT_MAX_TOKENS
    n: int = 1
    stop: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: str | None = None  # None: answer in text; ANY_TOOL; or a tool's name
    json: dict[str, Any] | None = None  # {} for any JSON object, else the schema to satisfy
    last_user_text: str = ""  # picks the tool a request names, among several
    logprobs: int | None = None  # alternatives per token (0: the tokens' own only); None: no logprobs


@dataclass(slots=True)
class Call:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass(slots=True)
class Choice:
    tokens: list[str]  # the text, or the tool call's arguments, as the pieces a stream sends
    finish: str  # "stop", "length" or "tool_calls"
    stop_sequence: str | None = None  # the stop sequence that ended it, when one did
    call: Call | None = None
    text: str = field(default="")

    def __post_init__(self) -> None:
        self.text = "".join(self.tokens)


@dataclass(slots=True)
class Turn:
    """One answered request, as every dialect renders it."""

    ask: Ask
    choices: list[Choice]
    payload: dict[str, Any]
    prompt_tokens: int
    fingerprint: str
    created: int

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.choices)

    @property
    def steps(self) -> int:
        """Decode steps: the choices of one request are generated side by side, as a batch."""
        return max((len(c.tokens) for c in self.choices), default=0)


def seed_of(conversation: Any) -> int:
    return zlib.crc32(orjson.dumps(conversation or ""))


def positive_int(payload: dict[str, Any], *names: str) -> int | None:
    for name in names:
        v = payload.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def stops_of(raw: Any, param: str = "stop") -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,) if raw else ()
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        return tuple(s for s in raw if s)
    raise BadRequest(f"'{param}' must be a string or an array of strings.", param)


def reply(ask: Ask, intro: str) -> list[Choice]:
    """``n`` choices for ``ask``; ``intro`` opens every text (it names the model and the region)."""
    call_name = _tool_to_call(ask)
    out = []
    for i in range(ask.n):
        if call_name is not None:
            out.append(_tool_choice(ask, call_name))
        elif ask.json is not None:
            out.append(_json_choice(ask, intro, i))
        else:
            out.append(_text_choice(ask, intro, i))
    return out


def _tool_to_call(ask: Ask) -> str | None:
    if not ask.tools or ask.tool_choice is None:
        return None
    if ask.tool_choice != ANY_TOOL:
        return ask.tool_choice
    said = ask.last_user_text.lower()
    named = [t.name for t in ask.tools if t.name.lower() in said]
    return named[0] if named else ask.tools[0].name


def _tool_choice(ask: Ask, name: str) -> Choice:
    tool = next(t for t in ask.tools if t.name == name)
    args = orjson.dumps(example(tool.schema, name)).decode()
    tokens = _pieces(args)
    call = Call("call_" + uuid.uuid4().hex[:24], name, args)
    if len(tokens) > ask.max_tokens:  # cut like any generation: the arguments are then incomplete
        return Choice(
            tokens[: ask.max_tokens], "length", call=Call(call.id, name, "".join(tokens[: ask.max_tokens]))
        )
    return Choice(tokens, "tool_calls", call=call)


def _json_choice(ask: Ask, intro: str, i: int) -> Choice:
    value = example(ask.json) if ask.json else {"reply": intro, "model": ask.model, "choice": i}
    tokens = _pieces(orjson.dumps(value).decode())
    if len(tokens) > ask.max_tokens:
        return Choice(tokens[: ask.max_tokens], "length")
    return Choice(tokens, "stop")


def _text_choice(ask: Ask, intro: str, i: int) -> Choice:
    natural = 24 + (ask.seed + 7919 * i) % 40  # choices of one request differ in length, as samples do
    n = min(natural, ask.max_tokens)
    words = intro.split()
    words += [FILLER[k % len(FILLER)] for k in range(max(0, n - len(words)))]
    tokens = [("" if k == 0 else " ") + w for k, w in enumerate(words[:n])]
    if n == natural:
        tokens[-1] += "."
    choice = Choice(tokens, "stop" if n == natural else "length")
    return _cut_at_stop(choice, ask.stop) if ask.stop else choice


def _cut_at_stop(choice: Choice, stops: tuple[str, ...]) -> Choice:
    text = choice.text
    hits = [(text.find(s), s) for s in stops if s in text]
    if not hits:
        return choice
    at, seq = min(hits)
    kept: list[str] = []
    used = 0
    for tok in choice.tokens:
        if used + len(tok) >= at:
            if at > used:
                kept.append(tok[: at - used])
            break
        kept.append(tok)
        used += len(tok)
    return Choice(kept or [""], "stop", stop_sequence=seq)  # one (empty) piece: streams still send it


def _pieces(text: str) -> list[str]:
    return [text[k : k + JSON_PIECE] for k in range(0, len(text), JSON_PIECE)] or [""]


# --- logprobs: deterministic numbers in the OpenAI shapes -----------------------------------------------
def _logprob(token: str) -> float:
    return -round((zlib.crc32(token.encode()) % 1000) / 4000.0, 4)  # in (-0.25, 0]: the chosen token wins


def _alternatives(token: str, k: int) -> list[tuple[str, float]]:
    """``k`` candidates, the chosen token first, each less likely than the one before."""
    lp = _logprob(token)
    out = [(token, lp)]
    start = zlib.crc32(token.encode()) % len(FILLER)
    j = 0
    while len(out) < k and j < len(FILLER):
        cand = (" " if token.startswith(" ") else "") + FILLER[(start + j) % len(FILLER)]
        if all(cand != t for t, _ in out):
            out.append((cand, round(lp - 1.0 - len(out), 4)))
        j += 1
    return out[:k]


def chat_logprobs(tokens: list[str], top: int) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion (or of one stream chunk, for its tokens)."""
    content = []
    for tok in tokens:
        alts = _alternatives(tok, top) if top else []
        content.append(
            {
                "token": tok,
                "logprob": _logprob(tok),
                "bytes": list(tok.encode()),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alts],
            }
        )
    return {"content": content, "refusal": None}


def legacy_logprobs(tokens: list[str], top: int, offset: int = 0) -> dict[str, Any]:
    """``choices[].logprobs`` of a legacy completion: parallel arrays and text offsets."""
    offsets = []
    for tok in tokens:
        offsets.append(offset)
        offset += len(tok)
    return {
        "tokens": list(tokens),
        "token_logprobs": [_logprob(t) for t in tokens],
        "top_logprobs": [dict(_alternatives(t, top)) for t in tokens] if top else None,
        "text_offset": offsets,
    }


# --- request parts every dialect shares, each read from its own field names ----------------------------
def tools_of(
    raw: Any, param: str, name_key: str, schema_key: str, inner: str | None = None
) -> tuple[Tool, ...]:
    """Function tools from ``raw`` (``inner`` is the key a tool's fields sit under, as chat's ``function``);
    tools of other types (a server's built-ins) are not called."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise BadRequest(f"'{param}' must be an array of tools.", param)
    out = []
    for i, t in enumerate(raw):
        fields = t.get(inner) if inner is not None and isinstance(t, dict) else t
        if inner is not None and isinstance(t, dict) and t.get("type") not in (None, "function"):
            continue
        if not isinstance(fields, dict) or not isinstance(fields.get(name_key), str) or not fields[name_key]:
            raise BadRequest(f"'{param}[{i}]' must name its function in '{name_key}'.", f"{param}[{i}]")
        schema = fields.get(schema_key)
        out.append(Tool(fields[name_key], schema if isinstance(schema, dict) else {}))
    return tuple(out)


def choose_tool(
    mode: str, named: str | None, tools: tuple[Tool, ...], answered: bool, param: str
) -> str | None:
    """The Ask's ``tool_choice`` from a dialect's mode: ``auto`` calls until a tool has answered."""
    if named is not None:
        if all(t.name != named for t in tools):
            raise BadRequest(f"'{param}' names '{named}', which is not among the tools given.", param)
        return named
    if mode == "none" or not tools:
        return None
    if mode == "required":
        return ANY_TOOL
    if mode == "auto":
        return None if answered else ANY_TOOL
    raise BadRequest(f"'{param}' must be 'auto', 'required', 'none' or a named function.", param)


def last_user_text(items: Any) -> str:
    """The text of the last user message (an input that is one string is that message)."""
    if isinstance(items, str):
        return items
    for m in reversed(items if isinstance(items, list) else []):
        if isinstance(m, dict) and m.get("role") == "user":
            return text_of(m.get("content"))
    return ""


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts / blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
