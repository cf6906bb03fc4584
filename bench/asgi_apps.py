"""ASGI apps for the server comparison (``bench.compare server``).

- ``hello``: answers every POST with a fixed chat completion; the server's own cost per request.
- ``regiongate_app()``: regiongate's REST app built from ``$REGIONGATE_BENCH_CONFIG``, for servers that
  import an app by name (granian ``--factory``) rather than running ``regiongate serve``.
"""

from __future__ import annotations

import os
from typing import Any

from bench.upstream import _completion

_raw = _completion("bench-0ms", 16)
BODY = _raw[_raw.index(b"\r\n\r\n") + 4 :]
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the request body, as any proxy must
        msg = await receive()
        more = msg.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def regiongate_app() -> Any:
    from regiongate.app.listeners import Lifespan
    from regiongate.app.runtime import build_runtime
    from regiongate.config import load_config
    from regiongate.rest.app import RestApp

    runtime = build_runtime(load_config(os.environ["REGIONGATE_BENCH_CONFIG"]), dict(os.environ))
    return Lifespan(RestApp(runtime, runtime.mounts), runtime)
