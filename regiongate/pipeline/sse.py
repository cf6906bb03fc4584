"""Server-sent events of the three stream protocols the gateway relays, and how each one ends.

| protocol (path)          | complete when                                         | in-band error event                          |
| ------------------------ | ----------------------------------------------------- | -------------------------------------------- |
| chat / completions       | ``data: [DONE]``, or the body ended normally after    | ``data: {"error": {...}}`` then ``[DONE]``   |
|                          | every choice had its ``finish_reason`` ([DONE] added) |                                              |
| Responses (``/responses``) | ``response.completed`` / ``.incomplete`` / ``.failed`` | ``event: error`` ``{"type": "error", ...}`` |
| Anthropic (``/messages``) | ``message_stop``                                     | ``event: error`` ``{"type": "error", ...}``  |

Every protocol's streams can be continued on another backend (``pipeline.continuation``): the relay
notes the text delivered and rebases a continuation's events onto the first stream.

``SseRelay`` passes upstream events through as the same bytes, while it checks that each ``data`` payload is
JSON (an event that is not is dropped and counted: a client SDK would crash on it), picks up ``usage``,
notes how far the answer got (the text delivered so far, for a continuation elsewhere) and, when the
gateway asked the backend for usage that the client did not ask for, drops the usage-only chunk (or the
``usage`` key) so the client sees exactly what it requested.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


class StreamKind(enum.Enum):
    CHAT = "chat"  # /chat/completions and legacy /completions
    RESPONSES = "responses"
    MESSAGES = "messages"


def stream_kind(path: str) -> StreamKind:
    if path.startswith("/responses"):
        return StreamKind.RESPONSES
    if path.startswith("/messages"):
        return StreamKind.MESSAGES
    return StreamKind.CHAT


_TERMINAL = {
    StreamKind.RESPONSES: frozenset({"response.completed", "response.incomplete", "response.failed"}),
    StreamKind.MESSAGES: frozenset({"message_stop"}),
}


def event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def named_event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\n" + event(obj)


def error_event(kind: StreamKind, message: str, code: str, sequence_number: int = 0) -> bytes:
    """The protocol's own way to say, inside a 200 stream, that the answer is incomplete."""
    if kind is StreamKind.RESPONSES:
        obj = {"type": "error", "code": code, "message": message, "param": None}
        return named_event("error", {**obj, "sequence_number": sequence_number})
    if kind is StreamKind.MESSAGES:
        return named_event("error", {"type": "error", "error": {"type": "api_error", "message": message}})
    err = {"message": message, "type": "upstream_error", "param": None, "code": code}
    return event({"error": err}) + DONE


def _split(buf: bytes) -> tuple[list[bytes], bytes]:
    """The complete events of ``buf`` (each with its blank line) and what follows the last of them."""
    parts = buf.split(b"\n\n")
    rest = parts.pop()
    return [p + b"\n\n" for p in parts], rest


def data_of(ev: bytes) -> bytes | None:
    """The payload of a ``data:`` event (multi-line data joined), or None for comments and other fields."""
    out = []
    for line in ev.strip(b"\r\n").split(b"\n"):
        line = line.rstrip(b"\r")
        if line.startswith(b"data:"):
            out.append(line[5:].lstrip(b" "))
    return b"\n".join(out) if out else None


def iter_json_events(raw: bytes) -> Iterator[dict[str, Any]]:
    """Decode complete events (for adapters that translate, like gRPC)."""
    events, _ = _split(raw.replace(b"\r\n", b"\n"))
    for ev in events:
        data = data_of(ev)
        if data and data != b"[DONE]":
            obj = orjson.loads(data)
            if isinstance(obj, dict):
                yield obj


_OTHER_TEXT = frozenset(("reasoning_content", "text", "tool_calls"))  # text a delta carries besides content


def _count(d: dict[str, Any]) -> int:
    """The characters of one choice's delta in the token estimate: content, reasoning and tool-call text."""
    n = 0
    for k in ("content", "reasoning_content", "text"):
        v = d.get(k)
        if isinstance(v, str):
            n += len(v)
    for call in d.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
            n += len(fn["arguments"])
    return n


def _responses_error(err: dict[str, Any], sequence: int) -> dict[str, Any]:
    """A backend's error object in the Responses API's ``error`` event (``code`` is a string there)."""
    code = err.get("code")
    if not isinstance(code, str):
        code = err.get("type") if isinstance(err.get("type"), str) else "server_error"
    message = err.get("message")
    return {
        "type": "error",
        "code": code,
        "message": message if isinstance(message, str) else "the backend reported an error",
        "param": err.get("param") if isinstance(err.get("param"), str) else None,
        "sequence_number": sequence,
    }


class ResponsesIndexes:
    """The positions a Responses event names, for servers that leave them out. The openai SDK's stream
    reader indexes its snapshot by ``output_index`` and ``content_index`` (a text delta without them raises
    ``TypeError``) and orders by ``sequence_number``; llama-server (llama.cpp as of llama-cpp-python
    0.3.36) sends none of the three, naming only ``item_id``. A position the server gives is kept."""

    __slots__ = ("_items", "_parts")

    def __init__(self) -> None:
        self._items: dict[Any, int] = {}  # item id -> output index
        self._parts: dict[Any, int] = {}  # item id -> content parts added so far

    def fill(self, obj: dict[str, Any], sequence: int) -> bool:
        """Add the missing positions to ``obj``; True when it changed."""
        kind = obj.get("type")
        if not isinstance(kind, str) or not kind.startswith("response."):
            return False
        changed = False
        if "sequence_number" not in obj:
            obj["sequence_number"] = sequence
            changed = True
        item = obj.get("item")
        iid = item.get("id") if isinstance(item, dict) else obj.get("item_id")
        if iid is None:
            return changed
        if isinstance(obj.get("output_index"), int):
            self._items.setdefault(iid, obj["output_index"])
        else:
            obj["output_index"] = self._items.setdefault(iid, len(self._items))
            changed = True
        if kind.startswith(("response.content_part.", "response.output_text.")) and "content_index" not in obj:
            added = self._parts.get(iid, 0)
            if kind == "response.content_part.added":
                self._parts[iid] = added + 1
                obj["content_index"] = added
            else:
                obj["content_index"] = max(added - 1, 0)
            changed = True
        return changed


class SseRelay:
    """One upstream stream, event by event. After the body ended, ``complete`` says whether the answer is
    whole by its protocol's rule; ``text`` and ``tool_calls`` say what the client has received of it."""

    def __init__(self, strip_usage: bool, kind: StreamKind = StreamKind.CHAT) -> None:
        self.strip_usage = strip_usage and kind is StreamKind.CHAT
        self.kind = kind
        self.usage: dict[str, Any] | None = None
        self.done = False  # the protocol's own end marker arrived
        self.errored = False  # the backend sent an error event
        self.malformed = 0  # events dropped because their data was not JSON
        self.events = 0  # JSON events relayed
        self.sequence = 0  # Responses: the next sequence_number
        self.text: list[str] = []  # chat: the content of choice 0 delivered so far
        self.tool_calls = False  # chat: a tool-call delta was delivered
        self.first: dict[str, Any] | None = None  # chat: the first chunk (its id, created, model)
        self.content_events = 0  # chat: events that delivered content of choice 0 (about one token each)
        # Every choice's (and protocol's) text deltas and their characters, over every hop: the token
        # estimate when the backend reports no usage (regiongate.pipeline.tokens).
        self.deltas = 0
        self.chars = 0
        # A continuation (``continue_from``): what earlier hops delivered, and the stream it extends.
        self.prior = ""
        self.carried = 0
        self._base: dict[str, Any] | None = None
        # Some servers (llama-server given a bare assistant prefill) repeat the prefill before the new
        # tokens: what is left of it to take off the start of the continuation.
        self._echo = ""
        self._open: set[int] = set()  # chat: choices seen without their finish_reason yet
        self._finished: set[int] = set()
        self._named: set[tuple[Any, Any]] = set()  # chat: (choice, tool call) whose name was relayed
        self._indexes = ResponsesIndexes()
        # Responses: the message item whose text is delivered (the client's id, output and content index);
        # in a continuation, the target's ids that stand for the first stream's.
        self._item: tuple[Any, Any, Any] | None = None
        self._ids: dict[Any, Any] = {}
        self._buf = b""
        self._crlf = False

    def continue_from(self, before: SseRelay) -> None:
        """This relay carries on the answer ``before`` relayed: its events are rebased onto that stream
        (id, created, model, fingerprint; no second role delta) and its usage covers the whole answer."""
        self.prior = before.delivered
        self.carried = before.tokens
        self.usage = before.usage  # what the first hop said (Anthropic: its input tokens) until restated
        self.deltas, self.chars = before.deltas, before.chars
        self._base = before._base or before.first
        self.first = self._base
        self._echo = self.prior
        self._item = before._item
        self.sequence = before.sequence

    @property
    def delivered(self) -> str:
        """The text of choice 0 the client has received, over every hop."""
        return self.prior + "".join(self.text)

    @property
    def tokens(self) -> int:
        return self.carried + self.content_events

    @property
    def finished(self) -> bool:
        """Every choice had its finish_reason (chat), so an end of body without [DONE] is still complete."""
        return bool(self._finished) and not self._open

    @property
    def complete(self) -> bool:
        return self.done or (self.kind is StreamKind.CHAT and self.finished)

    def feed(self, chunk: bytes) -> bytes:
        if self._crlf or b"\r" in chunk:
            self._crlf = True
            chunk = chunk.replace(b"\r\n", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        if 0 <= buf.find(b"\n\n") == len(buf) - 2:  # one whole event, the common read: no split
            self._buf = b""
            return self._one(buf)
        events, self._buf = _split(buf)
        if not events:
            return b""
        one = self._one
        return b"".join([one(ev) for ev in events])

    def _one(self, ev: bytes) -> bytes:
        if ev.startswith(DONE):
            self.done = True
            return b""  # the gateway ends the stream itself, after anything it has to add
        # The common event is one ``data: {...}`` line: its payload without a line-by-line scan.
        one_line = ev.startswith(b"data: {") and ev.find(b"\n") == len(ev) - 2
        data = ev[6:-2] if one_line else data_of(ev)
        if data is None:
            return ev  # a comment, or fields without data
        if data == b"[DONE]":
            self.done = True
            return b""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.malformed += 1  # dropped: the client's SDK would fail on it, and the stream may go on
            return b""
        if not isinstance(obj, dict):
            return ev
        self.events += 1
        if self.kind is StreamKind.CHAT:
            return self._chat(ev, obj)
        if self.kind is StreamKind.MESSAGES:
            ev = self._message(ev, obj)
            if not ev:
                return ev
        else:
            if "type" not in obj and isinstance(obj.get("error"), dict):
                # llama-server ends a Responses stream that fails midway with a chat-completions error event
                # (``data: {"error": {...}}``): restated as the Responses error event, with its message.
                obj = _responses_error(obj["error"], self.sequence)
                ev = named_event("error", obj)
            changed = self._indexes.fill(obj, self.sequence)
            if not self._response(obj):
                return b""
            if self._base is not None:  # a continuation: one run of sequence numbers over every hop
                obj["sequence_number"] = self.sequence
                changed = True
        kind = obj.get("type")
        if kind == "error":  # in these two protocols the error event is the stream's last
            self.errored = self.done = True
        elif kind in _TERMINAL[self.kind]:
            self.done = True
        elif isinstance(kind, str) and kind.endswith("delta"):  # output_text.delta, content_block_delta
            d = obj.get("delta")
            piece = d if isinstance(d, str) else d.get("text", d.get("partial_json")) if isinstance(d, dict) else None
            if isinstance(piece, str):
                self.deltas += 1
                self.chars += len(piece)
        changed = self.kind is StreamKind.RESPONSES and changed
        seq = obj.get("sequence_number")
        if isinstance(seq, int):
            self.sequence = seq + 1
        self._usage_of(obj)
        if changed:
            return named_event(str(kind), obj) if ev.startswith(b"event:") else event(obj)
        return ev

    def _chat(self, ev: bytes, obj: dict[str, Any]) -> bytes:
        if "error" in obj:
            self.errored = True
            return ev
        if self.first is None:
            self.first = obj
        changed = False
        if self._base is not None:  # a continuation: rebased (and un-echoed) before it is counted
            if not self._rebase(obj):
                return b""
            changed = True
        choices = obj.get("choices")
        if isinstance(choices, list):
            for c in choices:
                if isinstance(c, dict) and (calls := self._choice(c)):
                    changed = self._named_once(c.get("index", 0), calls) or changed
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if self.carried:
                usage = obj["usage"] = self._whole(usage)
                changed = True
            self.usage = usage
            if self.strip_usage:
                if not choices:
                    return b""
                obj.pop("usage")
                return event(obj)
        return event(obj) if changed else ev

    def _named_once(self, choice: Any, fragments: Any) -> bool:
        """OpenAI streams a tool call's ``id``, ``type`` and ``function.name`` in its first fragment only, and
        clients join every later string onto them (the openai SDK's stream helper, the gRPC translation).
        SGLang repeats them in every fragment, which reads as ``get_weatherget_weather``: the repeats are
        taken off. True when a fragment changed."""
        changed = False
        for frag in fragments if isinstance(fragments, list) else ():
            if not isinstance(frag, dict):
                continue
            slot = (choice, frag.get("index", 0))
            if slot not in self._named:
                self._named.add(slot)
                continue
            fn = frag.get("function")
            for holder, key in ((frag, "id"), (frag, "type"), (fn, "name")):
                if isinstance(holder, dict) and holder.get(key):
                    del holder[key]
                    changed = True
        return changed

    def _message(self, ev: bytes, obj: dict[str, Any]) -> bytes:
        """Anthropic Messages: note the text of block 0 delivered (a block of another kind, a tool use or
        thinking, makes the stream one that cannot be continued); in a continuation, drop its opening
        ``message_start`` / ``content_block_start`` for block 0, take an echoed prefill off its first text
        and count its output tokens for the whole answer. ``b""`` drops the event."""
        kind, index = obj.get("type"), obj.get("index", 0)
        if self._base is None and kind == "message_start":
            self.first = obj
        elif kind == "content_block_start":
            block = obj.get("content_block")
            if index == 0 and self._base is not None:
                return b""  # the block the earlier hops opened goes on
            if index != 0 or not isinstance(block, dict) or block.get("type") != "text":
                self.tool_calls = True
        elif kind == "content_block_delta":
            delta = obj.get("delta")
            if index != 0 or not isinstance(delta, dict) or delta.get("type") != "text_delta":
                self.tool_calls = True
            elif isinstance(delta.get("text"), str):
                if self._echo:
                    delta["text"] = self._unecho(delta["text"])
                    if not delta["text"]:
                        return b""
                    ev = named_event("content_block_delta", obj)
                self.text.append(delta["text"])
                self.content_events += 1
        if self._base is None:
            return ev
        if kind == "message_start":
            return b""  # the client has the first hop's message (its id, model, input tokens)
        usage = obj.get("usage")
        if kind == "message_delta" and isinstance(usage, dict) and isinstance(usage.get("output_tokens"), int):
            usage["output_tokens"] += self.carried  # the whole answer's: the delivered text was its prompt
            if isinstance(usage.get("input_tokens"), int):
                usage["input_tokens"] = max(1, usage["input_tokens"] - self.carried)
            return named_event("message_delta", obj)
        return ev

    def _response(self, obj: dict[str, Any]) -> bool:
        """Responses: note the text of the answer's one message item delivered (an item of another kind, a
        second message or a second content part makes the stream one that cannot be continued); in a
        continuation, rebase the target's events onto the first stream (its ``response.created`` and the
        opening of the message item the client has are dropped, their ids and positions become the first
        stream's, an echoed prefill is taken off, ``*.done`` events carry the whole text and the final
        response its whole usage). False drops the event."""
        kind = obj.get("type")
        if not isinstance(kind, str):
            return True
        cont = self._base is not None
        if kind in ("response.created", "response.in_progress", "response.queued"):
            if not cont and kind == "response.created":
                self.first = obj
            return not cont
        item = obj.get("item")
        iid = item.get("id") if isinstance(item, dict) else obj.get("item_id")
        opens = kind in ("response.output_item.added", "response.content_part.added", "response.output_text.delta")
        if cont and opens and not self._ids and self._item is not None and iid is not None:
            is_message = not isinstance(item, dict) or item.get("type") == "message"
            if is_message:  # the target's message is the one the client has open (some servers open none)
                self._ids[iid] = self._item[0]
        if iid is not None and iid in self._ids:
            if kind in ("response.output_item.added", "response.content_part.added"):
                return False  # the client has this item open already
            self._to_base(obj)
            iid = self._item[0] if self._item is not None else iid
        elif kind == "response.output_item.added" and isinstance(item, dict):
            if item.get("type") == "message" and self._item is None:
                self._item = (iid, obj.get("output_index"), 0)
            else:
                self.tool_calls = True  # another item than the one message: it cannot be joined soundly
        if kind == "response.output_text.delta" and isinstance(obj.get("delta"), str):
            if self._item is None:
                self._item = (iid, obj.get("output_index"), obj.get("content_index"))
            elif iid != self._item[0] or obj.get("content_index") != self._item[2]:
                self.tool_calls = True  # text of another item or part: not the answer's one text
                return True
            if self._echo:
                obj["delta"] = self._unecho(obj["delta"])
                if not obj["delta"]:
                    return False
            self.text.append(obj["delta"])
            self.content_events += 1
        elif cont and kind in _TERMINAL[StreamKind.RESPONSES] and isinstance(obj.get("response"), dict):
            obj["response"] = self._whole_response(obj["response"])
        return True

    def _to_base(self, obj: dict[str, Any]) -> None:
        """A continuation's event about the message item, as the first stream named it (the whole text in
        its ``done`` events)."""
        assert self._item is not None
        iid, out_i, part_i = self._item
        whole = self.delivered
        obj["output_index"] = out_i
        if "item_id" in obj:
            obj["item_id"] = iid
        if "content_index" in obj:
            obj["content_index"] = part_i
        if obj.get("type") == "response.output_text.done":
            obj["text"] = whole
        part = obj.get("part")
        if isinstance(part, dict) and part.get("type") == "output_text":
            obj["part"] = {**part, "text": whole}
        item = obj.get("item")
        if isinstance(item, dict):
            obj["item"] = self._whole_item(item)

    def _whole_item(self, item: dict[str, Any]) -> dict[str, Any]:
        assert self._item is not None
        out = {**item, "id": self._item[0]}
        content = item.get("content")
        if isinstance(content, list):
            whole = self.delivered
            out["content"] = [
                {**c, "text": whole} if isinstance(c, dict) and c.get("type") == "output_text" else c
                for c in content
            ]
        return out

    def _whole_response(self, resp: dict[str, Any]) -> dict[str, Any]:
        """A continuation's final response as the first stream's: its id and creation time, the message
        item with the whole text, the usage of the whole answer."""
        base = self._base.get("response") if self._base is not None else None
        out = dict(resp)
        if isinstance(base, dict):
            for k in ("id", "created_at"):
                if k in base:
                    out[k] = base[k]
        output = resp.get("output")
        if isinstance(output, list) and self._item is not None:
            out["output"] = [
                self._whole_item(i) if isinstance(i, dict) and (i.get("id") in self._ids or i.get("id") == self._item[0])
                else i
                for i in output
            ]
        usage = resp.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("output_tokens"), int):
            u = dict(usage)
            u["output_tokens"] += self.carried  # the delivered text was the continuation's prompt
            if isinstance(u.get("input_tokens"), int):
                u["input_tokens"] = max(1, u["input_tokens"] - self.carried)
                u["total_tokens"] = u["input_tokens"] + u["output_tokens"]
            out["usage"] = u
        return out

    def _rebase(self, obj: dict[str, Any]) -> bool:
        """Make a continuation's chunk look like the next chunk of the first stream; False to drop it
        (the role-only opening delta)."""
        base = self._base
        assert base is not None
        for k in ("id", "created", "model", "system_fingerprint"):
            if k in base:
                obj[k] = base[k]
        keep = bool(obj.get("usage"))
        for c in obj.get("choices") or ():
            delta = c.get("delta") if isinstance(c, dict) else None
            if isinstance(delta, dict):
                delta.pop("role", None)
                if self._echo and isinstance(delta.get("content"), str):
                    delta["content"] = self._unecho(delta["content"])
                if delta.get("content") in ("", None) and len(delta) == 1:
                    delta.pop("content")
                keep = keep or bool(delta) or bool(c.get("finish_reason"))
            else:
                keep = True
        return keep

    def _unecho(self, content: str) -> str:
        """``content`` without the part of an echoed prefill it repeats (only at the continuation's start,
        and only while every byte so far matched the delivered text)."""
        echo = self._echo
        if content.startswith(echo):
            self._echo = ""
            return content[len(echo) :]
        if echo.startswith(content):
            self._echo = echo[len(content) :]
            return ""
        self._echo = ""  # not an echo: the new tokens start here
        return content

    def _whole(self, usage: dict[str, Any]) -> dict[str, Any]:
        """The continuation's usage restated for the whole answer: its prompt held the delivered text
        (about ``carried`` tokens), which counts as completion."""
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(p, int) or not isinstance(c, int):
            return usage
        prompt, completion = max(1, p - self.carried), c + self.carried
        return {**usage, "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _choice(self, c: dict[str, Any]) -> Any:
        """Note one choice of a chunk (finish, text of choice 0, the token estimate); its delta's
        ``tool_calls`` when it has any."""
        i = c.get("index", 0)
        if c.get("finish_reason"):
            self._open.discard(i)
            self._finished.add(i)
        elif i not in self._finished:
            self._open.add(i)
        delta = c.get("delta")
        d = delta if isinstance(delta, dict) else c  # legacy completions carry ``text`` on the choice
        content = d.get("content")
        # The token estimate: a plain content delta (the common chunk) without the general count.
        n = (len(content) if isinstance(content, str) else 0) if _OTHER_TEXT.isdisjoint(d) else _count(d)
        if n:
            self.deltas += 1
            self.chars += n
        calls = d.get("tool_calls") if d is delta else None
        if i != 0:
            return calls
        if d is delta:
            if isinstance(content, str):
                self.text.append(content)
                self.content_events += 1
            if calls:
                self.tool_calls = True
        elif isinstance(c.get("text"), str):  # legacy completions
            self.text.append(c["text"])
        return calls

    def _usage_of(self, obj: dict[str, Any]) -> None:
        """Responses and Anthropic usage, in the chat protocol's names the usage records keep."""
        holder = obj.get("response") or obj.get("message") or obj
        u = holder.get("usage") if isinstance(holder, dict) else None
        if not isinstance(u, dict):
            return
        usage = dict(self.usage or {})
        if isinstance(u.get("input_tokens"), int):
            usage["prompt_tokens"] = u["input_tokens"]
        if isinstance(u.get("output_tokens"), int):
            usage["completion_tokens"] = u["output_tokens"]
        self.usage = usage

    def flush(self) -> bytes:
        """Whatever is left when the body ended: a last event without its blank line is completed (a
        partial event is never passed on; it would not parse)."""
        rest, self._buf = self._buf, b""
        if not rest.strip():
            return b""
        return self._one(rest.rstrip(b"\n") + b"\n\n")
