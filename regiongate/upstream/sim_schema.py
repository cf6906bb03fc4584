"""A deterministic JSON value that satisfies a JSON schema: what the simulated engine answers for a tool
call's arguments and for ``response_format`` ``json_schema``, so that ``.parse()`` with a pydantic model works.

It covers what OpenAI's structured outputs and pydantic's ``model_json_schema()`` produce: ``$ref`` into
``$defs`` / ``definitions``, ``anyOf`` / ``oneOf`` / ``allOf``, ``enum`` / ``const``, typed objects (every
property, so ``strict`` schemas that require all of them hold), arrays with ``minItems`` / ``maxItems`` /
``prefixItems``, numbers within their bounds and ``multipleOf``, strings within their lengths and the common
``format``s. ``pattern`` is not solved: no real engine is asked to guess one either. Recursion is cut at a
fixed depth by taking the smallest value the schema allows there (null, an empty array, no optional property).
"""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 6
_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "email": "sim@example.com",
    "uri": "https://example.com/sim",
    "url": "https://example.com/sim",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "duration": "P1D",
}


def example(schema: Any, name: str = "value") -> Any:
    """A value ``schema`` accepts; ``name`` (the property it is for) seeds the strings."""
    return _Walk(schema if isinstance(schema, dict) else {}).value(schema, name, 0)


class _Walk:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        seen = 0
        while isinstance(schema.get("$ref"), str) and seen < 32:  # a ref chain, never a loop forever
            target: Any = self.root
            for part in schema["$ref"].lstrip("#").strip("/").split("/"):
                target = target.get(part.replace("~1", "/").replace("~0", "~"), {}) if part else target
                if not isinstance(target, dict):
                    return {}
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **rest}
            seen += 1
        return schema

    def value(self, raw: Any, name: str, depth: int) -> Any:
        if raw is True or not isinstance(raw, dict):
            return f"simulated {name}"
        schema = self.resolve(raw)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[0]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self.value(self._pick(options, depth), name, depth)
        parts = schema.get("allOf")
        if isinstance(parts, list) and parts:
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in parts:
                if isinstance(part, dict):
                    part = self.resolve(part)
                    props = {**merged.get("properties", {}), **part.get("properties", {})}
                    required = [*merged.get("required", []), *part.get("required", [])]
                    merged = {**merged, **part, "properties": props, "required": required}
            return self.value(merged, name, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            if not kinds or (depth >= MAX_DEPTH and "null" in kind):
                return None
            kind = kinds[0]
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        return self._typed(str(kind), schema, name, depth)

    def _pick(self, options: list[Any], depth: int) -> Any:
        """The first non-null option; past the depth limit, null when it is allowed (ends recursion)."""
        resolved = [self.resolve(o) if isinstance(o, dict) else o for o in options]
        nulls = [o for o in resolved if isinstance(o, dict) and o.get("type") == "null"]
        if depth >= MAX_DEPTH and nulls:
            return nulls[0]
        return next((o for o in resolved if o not in nulls), resolved[0])

    def _typed(self, kind: str, schema: dict[str, Any], name: str, depth: int) -> Any:
        if kind == "null":
            return None
        if kind == "boolean":
            return True
        if kind in ("integer", "number"):
            return _number(schema, kind == "integer")
        if kind == "string":
            return _string(schema, name)
        if kind == "array":
            return self._array(schema, name, depth)
        return self._object(schema, depth)

    def _array(self, schema: dict[str, Any], name: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items", {})
        low = _int(schema.get("minItems"), 0)
        high = _int(schema.get("maxItems"), max(low, 1))
        want = low if depth >= MAX_DEPTH else min(max(low, 1), high)
        out: list[Any] = []
        if isinstance(prefix, list):
            out = [self.value(p, name, depth + 1) for p in prefix[: max(want, len(prefix))]]
        while len(out) < want and items is not False:
            out.append(self.value(items, name, depth + 1))
        if schema.get("uniqueItems") and len(out) > 1:
            out = out[:1]  # identical examples would break uniqueness; one is within minItems <= 1 here
        return out

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = schema.get("required")
        need = set(required) if isinstance(required, list) else set()
        # Every property (strict schemas require all); past the depth limit only the required ones.
        names = [k for k in props if depth < MAX_DEPTH or k in need]
        return {k: self.value(props[k], k, depth + 1) for k in names}


def _int(v: Any, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else default


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _bound(schema: dict[str, Any], plain: str, exclusive: str, tighter: Any) -> tuple[float | None, bool]:
    """The tighter of an inclusive and an exclusive bound, and whether it is exclusive."""
    a, b = _num(schema.get(plain)), _num(schema.get(exclusive))
    if a is None or b is None:
        return (a, False) if b is None else (b, True)
    return (b, True) if tighter(a, b) == b else (a, False)


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    lo, lo_ex = _bound(schema, "minimum", "exclusiveMinimum", max)
    hi, hi_ex = _bound(schema, "maximum", "exclusiveMaximum", min)
    step = _num(schema.get("multipleOf")) or (1.0 if integer else 0.0)

    def ok(v: float) -> bool:
        above = lo is None or v > lo or (v == lo and not lo_ex)
        return above and (hi is None or v < hi or (v == hi and not hi_ex))

    v = 1.0 if lo is None else lo
    if hi is not None and lo is None and not ok(v):
        v = hi - (step or 1.0) if hi_ex else hi
    if step:
        v = math.ceil(v / step) * step
        if not ok(v):
            v += step
        if not ok(v) and hi is not None:
            v = math.floor(hi / step) * step
            v = v - step if not ok(v) else v
    elif not ok(v) and lo is not None:
        v = (lo + hi) / 2 if hi is not None else lo + 1.0
    return int(v) if integer else v


def _string(schema: dict[str, Any], name: str) -> str:
    fmt = schema.get("format")
    text = _FORMATS.get(fmt, f"simulated {name}") if isinstance(fmt, str) else f"simulated {name}"
    low = _int(schema.get("minLength"), 0)
    high = _int(schema.get("maxLength"), max(low, len(text)))
    if len(text) < low:
        text += "x" * (low - len(text))
    return text[:high]
