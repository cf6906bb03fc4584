"""Routes that not every backend offers, and what a 404 from one of them means.

A chat backend that answers 404 to ``/tokenize`` or ``/v1/images/generations`` does not offer that
service (llama.cpp and vLLM tokenize, most servers generate no images); it is not a missing model. Every
listener turns such an answer into one refusal that names the backend and its region: 501, which gRPC
sends as UNIMPLEMENTED.
"""

from __future__ import annotations

from regiongate.core import RouteError

OPTIONAL_ROUTES = {
    "/tokenize": "tokenization",
    "/embeddings": "embeddings",
    "/images/generations": "image generation",
    "/videos/generations": "video generation",
    "/videos/extensions": "video extension",
}


def not_offered(path: str, status: int, backend: str, region: str) -> RouteError | None:
    """The refusal for a backend's 404 on an optional route, else None."""
    what = OPTIONAL_ROUTES.get(path)
    if status != 404 or what is None:
        return None
    return RouteError(
        f"The backend {backend} in {region} does not offer {what} (it answered HTTP 404 to {path}).",
        code="not_supported_by_backend",
        status=501,
    )
