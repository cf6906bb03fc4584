"""The one exception tree, split by fault (like h11's Local/RemoteProtocolError)::

    RouteError                   every refusal: status, OpenAI type/code/param, message, retry hint, headers
    +-- ClientError      4xx     the caller asked for something wrong or not allowed
    |   +-- Invalid      400     a malformed value (control plane: names, labels, grants)
    |   +-- NotFound     404     no such team, key or object
    |   +-- Conflict     409     it exists already
    +-- GatewayError     503     we cannot serve it now (capacity, region down)
    |   +-- StoreUnavailable     the control-plane store did not answer
    +-- UpstreamError    502/504 the backends we chose failed

Each carries what every adapter needs (REST, gRPC, the admin API, the CLI): the gRPC adapter maps ``status``
to a status code, the others render ``body()``. Messages say what happened and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence


def _names(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "none"


class RouteError(Exception):
    status: int = 400
    type: str = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.param = param
        self.retry_after = retry_after
        self.headers = headers  # extra response headers / trailing metadata (e.g. x-ratelimit-*)
        # A capacity refusal made on lease counts only (``core.policy.decide``): the regions that look full
        # by this process's count, which may be older than the shared one; their leases are tried before
        # this refusal is given (a ``core.policy.Plan``, typed ``object`` here: errors sits below the
        # policy; None: nothing to try).
        self.plan: object = None

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    # --- client faults -------------------------------------------------------------------------------
    @classmethod
    def unknown_region(
        cls, label: str, regions: Sequence[str], zones: Sequence[str], base: str
    ) -> RouteError:
        return ClientError(
            f"'{label}.{base}' names no region or data zone. Regions: {_names(regions)}; zones: "
            f"{_names(zones)}. Use '{base}' for the global endpoint.",
            code="unknown_region",
            status=404,
        )

    @classmethod
    def unknown_host(cls, host: str, bases: Sequence[str]) -> RouteError:
        return ClientError(
            f"Host '{host}' is not served here; use one of {_names(bases)} or '<region>.<base>'.",
            code="unknown_host",
            status=404,
        )

    @classmethod
    def model_not_found(cls, model: str, where: str, offering: Sequence[str]) -> RouteError:
        hint = (
            f" It is offered in: {_names(offering)}; use the global endpoint or one of those regions."
            if offering
            else ""
        )
        return ClientError(
            f"The model '{model}' does not exist or is not available {where}.{hint}",
            code="model_not_found",
            status=404,
            param="model",
        )

    @classmethod
    def region_not_allowed(cls, where: str, allowed: str) -> RouteError:
        return ClientError(
            f"This API key may only be served in {allowed}; {where} is outside it.",
            code="region_not_allowed",
            status=403,
            type="permission_error",
        )

    # --- gateway faults ------------------------------------------------------------------------------
    @classmethod
    def region_unavailable(
        cls, where: str, model: str, why: str, could_serve: Sequence[str], retry_after: float
    ) -> RouteError:
        alt = (
            f" Regions that could serve '{model}' right now: {_names(could_serve)}."
            if could_serve
            else f" No region can serve '{model}' right now."
        )
        return GatewayError(
            f"{where} cannot take this request ({why}); it is not sent elsewhere.{alt} "
            f"Retry after {retry_after:g}s.",
            code="region_unavailable",
            retry_after=retry_after,
        )

    @classmethod
    def capacity_exhausted(cls, model: str, regions: Sequence[str], retry_after: float) -> RouteError:
        return GatewayError(
            f"Every region offering '{model}' ({_names(regions)}) is at capacity or unhealthy. "
            f"Retry after {retry_after:g}s.",
            code="capacity_exhausted",
            retry_after=retry_after,
        )


class ClientError(RouteError):
    status = 400
    type = "invalid_request_error"


class GatewayError(RouteError):
    status = 503
    type = "service_unavailable"


class UpstreamError(RouteError):
    status = 502
    type = "upstream_error"


class _Coded:
    """A refusal whose code and status are the class's own: raised as ``NotFound(message, param=...)``."""

    code: str
    status: int

    def __init__(self, message: str, param: str | None = None) -> None:
        RouteError.__init__(self, message, code=type(self).code, param=param)  # type: ignore[arg-type]


class Invalid(_Coded, ClientError):
    status = 400
    code = "invalid_value"


class NotFound(_Coded, ClientError):
    status = 404
    code = "not_found"


class Conflict(_Coded, ClientError):
    status = 409
    code = "conflict"


class StoreUnavailable(_Coded, GatewayError):
    status = 503
    code = "store_unavailable"
