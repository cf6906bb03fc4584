"""gRPC status codes for the gateway's refusals (the REST adapter sends the same errors as HTTP statuses).

The xAI SDK retries UNAVAILABLE up to 5 times within ~1.5 s. A refused region or full capacity is not
helped by that, so every 5xx refusal carries ``grpc-retry-pushback-ms: -1``, which tells grpc's retry
machinery not to retry this call; ``retry-after`` (seconds) says when a human or a client's own policy may.
"""

from __future__ import annotations

from typing import Any

import grpc
import orjson

from regiongate.core import RouteError

_BY_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    421: grpc.StatusCode.FAILED_PRECONDITION,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(http_status: int) -> grpc.StatusCode:
    code = _BY_HTTP.get(http_status)
    if code is not None:
        return code
    return grpc.StatusCode.INTERNAL if http_status >= 500 else grpc.StatusCode.INVALID_ARGUMENT


def trailers(
    http_status: int, code: str | None, retry_after: float | None, request_id: str
) -> tuple[tuple[str, str], ...]:
    md: list[tuple[str, str]] = [("x-request-id", request_id)]
    if code:
        md.append(("x-regiongate-error-code", code))
    if http_status >= 500:
        md.append(("grpc-retry-pushback-ms", "-1"))
    if retry_after is not None:
        md.append(("retry-after", f"{retry_after:g}"))
    return tuple(md)


def metadata_of(context: Any) -> dict[str, str]:
    """A call's text metadata (binary ``-bin`` values are left out)."""
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


async def abort(
    context: Any, err: RouteError, request_id: str, extra: tuple[tuple[str, str], ...] = ()
) -> None:
    """End the call with ``err``'s status (and ``extra`` trailing metadata); raises (grpc.aio's abort
    always does)."""
    meta = trailers(err.status, err.code, err.retry_after, request_id)
    await context.abort(grpc_code(err.status), err.message, (*meta, *extra) if extra else meta)


def upstream_error(status: int, body: bytes) -> RouteError:
    """A backend's own non-200 answer (OpenAI error JSON, or anything) as a RouteError to abort with."""
    message, code = f"The backend answered HTTP {status}.", "upstream_error"
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        if isinstance(err.get("message"), str):
            message = err["message"]
        if isinstance(err.get("code"), str):
            code = err["code"]
    elif isinstance(err, str):
        message = err
    return RouteError(message, code=code, status=status)
