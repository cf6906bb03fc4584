"""The OpenAPI 3.1 document of the REST API, written by hand as data and served at ``/openapi.json``.

It describes what the gateway itself guarantees (OpenAI-compatible requests, the fields routing reads,
OpenAI-shaped errors, the ``x-regiongate-*`` and ``x-ratelimit-*`` headers); fields it forwards untouched
to the backend are allowed (``additionalProperties``) but not listed. Schemathesis fuzzes the API from
this document in CI (tests/rest/test_openapi.py).
"""

from __future__ import annotations

from typing import Any

import orjson

from regiongate import __version__

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(desc: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": desc, "content": {JSON: {"schema": _ref("Error")}}}
    if headers:
        out["headers"] = headers
    return out


_STR = {"schema": {"type": "string"}}
ROUTED_HEADERS = {
    "x-regiongate-region": {"description": "The region that served the request.", **_STR},
    "x-regiongate-route": {
        "description": "How it got there: nearest, spillover, failover, pinned or zone.",
        **_STR,
    },
    "x-request-id": {"description": "The request id (echoed when the client sent one).", **_STR},
    **{
        f"x-ratelimit-{what}-{kind}": {
            "description": f"Rate limit {what} ({kind}), when limits apply.",
            **_STR,
        }
        for what in ("limit", "remaining", "reset")
        for kind in ("requests", "tokens")
    },
}
RETRY_HEADERS = {
    "retry-after": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}},
    "retry-after-ms": {"description": "Milliseconds to wait before retrying.", "schema": {"type": "string"}},
}
COMMON_ERRORS = {
    "400": _error("The request is malformed (names the bad field)."),
    "401": _error("No API key, or an unknown or revoked one."),
    "403": _error("The key may not use this region or data zone."),
    "404": _error("Unknown model for this endpoint (names where it is offered), region or host."),
    "413": _error("The body is larger than gateway.max_body_bytes."),
    "429": _error("A rate limit of the team or key is reached.", {**RETRY_HEADERS, **ROUTED_HEADERS}),
    "502": _error("Every candidate backend failed before its first byte."),
    "503": _error("No capacity in the allowed regions, or shared state unavailable.", RETRY_HEADERS),
    "504": _error("A backend timed out."),
}

POSITIVE_INT = {"type": "integer", "minimum": 1, "maximum": 1_000_000}
MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
                    },
                },
                {"type": "null"},
            ]
        },
        "name": {"type": "string"},
    },
}
COMMON_FIELDS = {
    "model": {"type": "string", "minLength": 1, "examples": ["grok-4"]},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "max_tokens": POSITIVE_INT,
    "max_completion_tokens": POSITIVE_INT,
    "n": {"type": "integer", "minimum": 1, "maximum": 128},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "user": {"type": "string"},
}
SSE_EVENT = {  # one server-sent event: data is a chunk as JSON, or "[DONE]"
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}
USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
}
COMPLETION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object"}},
        "usage": _ref("Usage"),
    },
}
MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by", "regions"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "regions": {"type": "array", "items": {"type": "string"}},
    },
}
REGION = {
    "type": "object",
    "required": ["id", "name", "zone", "location", "healthy", "models"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "zone": {"type": "string"},
        "location": {
            "type": "object",
            "required": ["lat", "lon"],
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
        },
        "healthy": {"type": "boolean"},
        "models": {"type": "array", "items": {"type": "object", "required": ["id", "capacity", "healthy"]}},
    },
}


def _list(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": item}},
    }


def _post(summary: str, required: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "required": required,
                            "properties": {**COMMON_FIELDS, **extra},
                            "additionalProperties": True,
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "The completion, or with stream=true its server-sent events.",
                    "headers": ROUTED_HEADERS,
                    "content": {
                        JSON: {"schema": _ref("Completion")},
                        "text/event-stream": {"schema": SSE_EVENT},
                    },
                },
                **COMMON_ERRORS,
            },
        }
    }


RESPONSE_OBJECT = {
    "type": "object",
    "required": ["id", "object", "status", "output"],
    "properties": {
        "id": {"type": "string", "pattern": "^resp_[a-z0-9-]+_[0-9a-f]{24}$"},  # names the region holding it
        "object": {"const": "response"},
        "status": {"type": "string"},
        "output": {"type": "array"},
        "store": {"type": "boolean"},
        "previous_response_id": {"type": ["string", "null"]},
    },
}
INPUT_ITEM = {
    "type": "object",
    "properties": {
        "type": {"enum": ["message", "function_call", "function_call_output"]},
        "role": {"enum": ["user", "assistant", "system", "developer"]},
        "content": {"type": "string"},
        "call_id": {"type": "string"},
        "name": {"type": "string"},
        "arguments": {"type": "string"},
        "output": {"type": "string"},
    },
}
_RESPONSE_ID = [
    {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
]
_NOT_FOUND = {
    "401": COMMON_ERRORS["401"],
    "404": _error("No such response in this endpoint's scope (or expired, or deleted)."),
    "501": _error("This gateway keeps no state ([state] store = \"none\")."),
    "503": COMMON_ERRORS["503"],
}


def _responses() -> dict[str, Any]:
    """/v1/responses: created through the routing core; stored, read and deleted by regiongate itself."""
    create = _post(
        "Create a response (Responses API)",
        ["model", "input"],
        {
            "input": {"anyOf": [{"type": "string"}, {"type": "array", "maxItems": 32, "items": INPUT_ITEM}]},
            "instructions": {"type": "string"},
            "store": {"type": "boolean"},
            "previous_response_id": {"type": "string"},
            "max_output_tokens": POSITIVE_INT,
            "background": {"type": "boolean"},
        },
    )
    create["post"]["responses"]["200"]["content"][JSON]["schema"] = RESPONSE_OBJECT
    create["post"]["responses"]["200"]["description"] = "The response, or with stream=true its events."
    read = {
        "summary": "Retrieve a stored response",
        "responses": {
            "200": {"description": "OK", "content": {JSON: {"schema": RESPONSE_OBJECT}}},
            **_NOT_FOUND,
        },
    }
    delete = {
        "summary": "Delete a stored response (the row is deleted, not marked)",
        "responses": {
            "200": {"description": "Deleted", "content": {JSON: {"schema": {"type": "object"}}}},
            **_NOT_FOUND,
        },
    }
    items = {
        "summary": "The stored response's input items, newest first",
        "responses": {
            "200": {"description": "OK", "content": {JSON: {"schema": _list(INPUT_ITEM)}}},
            **_NOT_FOUND,
        },
    }
    cancel = {
        "summary": "Cancel a running background response (a finished one is answered as it is)",
        "responses": {
            "200": {"description": "OK", "content": {JSON: {"schema": RESPONSE_OBJECT}}},
            "400": COMMON_ERRORS["400"],
            **_NOT_FOUND,
        },
    }
    return {
        "/v1/responses": create,
        "/v1/responses/{response_id}/cancel": {"parameters": _RESPONSE_ID, "post": cancel},
        "/v1/responses/{response_id}": {"parameters": _RESPONSE_ID, "get": read, "delete": delete},
        "/v1/responses/{response_id}/input_items": {"parameters": _RESPONSE_ID, "get": items},
    }


def _get(summary: str, schema: dict[str, Any], ctype: str = JSON, auth: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": {ctype: {"schema": schema}}}},
    }
    if auth:
        op["responses"].update({k: COMMON_ERRORS[k] for k in ("401", "404")})
    else:
        op["security"] = []
        if summary.startswith("Readiness"):
            op["responses"]["503"] = {
                "description": "Draining",
                "content": {JSON: {"schema": {"type": "object"}}},
            }
    return {"get": op}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "regiongate REST API",
        "version": __version__,
        "description": "OpenAI-compatible API with global (api.<domain>), data-zone (<zone>.api.<domain>) and "
        "regional (<region>.api.<domain>) endpoints, chosen by the Host header.",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": {
        "/v1/chat/completions": _post(
            "Create a chat completion",
            ["model", "messages"],
            {
                "messages": {"type": "array", "minItems": 1, "maxItems": 64, "items": MESSAGE},
            },
        ),
        "/v1/completions": _post(
            "Create a text completion",
            ["model"],
            {
                "prompt": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            },
        ),
        **_responses(),
        "/v1/models": _get("Models this key can use through this endpoint", _list(MODEL)),
        "/v1/models/{model}": {
            "parameters": [
                {
                    "name": "model",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1},
                }
            ],
            **_get("One model, with the regions that serve it", MODEL),
        },
        "/v1/regions": _get("Regions with their models, health, capacity and latency", _list(REGION)),
        "/v1/usage": _get("The team's usage by day, model and region, each split by service tier (by_tier)", _list({"type": "object"})),
        "/healthz": _get("Liveness", {"type": "object"}, auth=False),
        "/readyz": _get("Readiness (503 while draining)", {"type": "object"}, auth=False),
        "/metrics": _get("Prometheus metrics", {"type": "string"}, "text/plain", auth=False),
        "/openapi.json": _get("This document", {"type": "object"}, auth=False),
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["message", "type", "code"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "code": {"type": ["string", "null"]},
                        },
                    }
                },
            },
            "Usage": USAGE,
            "Completion": COMPLETION,
        },
    },
}

# Rendered once: the document never changes while the process runs.
DOCUMENT_BYTES = orjson.dumps(DOCUMENT)
