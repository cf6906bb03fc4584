"""What varies between OpenAI-compatible servers, as one value per backend (docs/backends.md).

A backend's ``server`` kind gives the defaults; each field can be overridden in its ``[[deployments]]``
entry. The dialect only reshapes what the gateway itself built (the request id, the body it validated):
nothing a client sent is copied into the upstream request because of it.

=====================  ==========  ===================  ==================  =====================
server                 request id  max_completion_      probe path          busy probe timeouts
                                   tokens
=====================  ==========  ===================  ==================  =====================
``generic`` (default)  as-is       as-is                ``[health]``'s      not counted
``openai`` (provider)  off         as-is                ``[health]``'s      not counted
``vllm``               as-is       as-is                ``/health``         not counted
``sglang``             as-is       as-is                ``/health``         not counted
``llama.cpp``          as-is       as-is                ``/health``         not counted
``llama-cpp-python``   uuid        ``max_tokens``       ``/openapi.json``   not counted
=====================  ==========  ===================  ==================  =====================

- request id ``as-is`` sends the gateway's own id (``req_…``); ``uuid`` sends ``uuid5(REQUEST_ID_NAMESPACE,
  <gateway id>)``, which servers that accept only UUIDs take (llama-cpp-python answers anything else with
  a 400 and an empty body) and which anyone can compute again from the gateway's logs; ``off`` sends none
  (a provider has no use for our ids).
- ``max_tokens``: a ``max_completion_tokens`` in the body is sent as ``max_tokens`` (a server that does not
  know the newer name ignores it and generates to the end of its context).
- ``/health`` and ``/openapi.json`` are at the server's root (not under ``/v1``).
- a probe that times out while real requests to the backend are in flight or succeeded since the previous
  probe is not counted: single-slot servers (llama-server with one HTTP thread) answer nothing else while
  they generate (``regiongate.health.probes``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from regiongate.config import HttpBackend, MaxTokensMode, RequestIdMode, ServerKind

# uuid5 namespace of the upstream request ids derived from the gateway's own (``uuid`` mode).
REQUEST_ID_NAMESPACE = uuid.UUID("6f0d7f3e-2b8c-5a51-9a57-7265676e6774")


@dataclass(frozen=True, slots=True)
class Dialect:
    server: ServerKind = "generic"
    request_id: RequestIdMode = "as-is"
    max_tokens: MaxTokensMode = "as-is"
    probe_path: str | None = None  # None: [health].probe_path
    busy_probe_grace: bool = True  # probe timeouts are not counted while real requests succeed

    def request_id_value(self, request_id: str) -> str | None:
        """The ``x-request-id`` value to send upstream for the gateway's ``request_id``, or None."""
        if self.request_id == "off":
            return None
        if self.request_id == "uuid":
            return str(uuid.uuid5(REQUEST_ID_NAMESPACE, request_id))
        return request_id

    def body(self, payload: dict[str, Any], body: bytes) -> bytes:
        """The body to send: ``body`` unless this server needs a field renamed."""
        if self.max_tokens == "max_tokens" and "max_completion_tokens" in payload:
            shaped = dict(payload)
            limit = shaped.pop("max_completion_tokens")
            shaped.setdefault("max_tokens", limit)  # both given: the server reads max_tokens, as sent
            return orjson.dumps(shaped)
        return body


DEFAULTS: dict[ServerKind, Dialect] = {
    "generic": Dialect("generic"),
    "openai": Dialect("openai", request_id="off"),
    "vllm": Dialect("vllm", probe_path="/health"),
    "sglang": Dialect("sglang", probe_path="/health"),
    "llama.cpp": Dialect("llama.cpp", probe_path="/health"),
    # Its /v1/models waits for the model lock during a generation and, with its default
    # interrupt_requests, cuts the running stream short; FastAPI's /openapi.json takes no lock.
    "llama-cpp-python": Dialect(
        "llama-cpp-python", request_id="uuid", max_tokens="max_tokens", probe_path="/openapi.json"
    ),
}


def of(spec: HttpBackend) -> Dialect:
    """The defaults of the backend's ``server`` kind, with the fields its config gives replaced."""
    d = DEFAULTS[spec.server]
    return Dialect(
        spec.server,
        request_id=spec.request_id if spec.request_id is not None else d.request_id,
        max_tokens=spec.max_completion_tokens if spec.max_completion_tokens is not None else d.max_tokens,
        probe_path=spec.probe_path if spec.probe_path is not None else d.probe_path,
        busy_probe_grace=spec.busy_probe_grace if spec.busy_probe_grace is not None else d.busy_probe_grace,
    )
