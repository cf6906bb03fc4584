"""The ``[tracing]`` config section: OpenTelemetry traces over OTLP (http/protobuf).

Tracing is off unless the section is present. A field left out falls back to the standard OpenTelemetry
environment variable (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_SERVICE_NAME``), then to the OpenTelemetry default; every other
``OTEL_*`` variable the SDK reads (headers, timeout, compression, batch sizes, resource attributes) is
honoured as the SDK documents it. Imported by ``regiongate.config``; nothing here imports OpenTelemetry.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TracingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True  # false keeps the section but turns tracing off
    # Collector base URL (``http://otel-collector:4318``; ``/v1/traces`` is appended, as for
    # OTEL_EXPORTER_OTLP_ENDPOINT) or the full traces URL ending in ``/v1/traces``.
    otlp_endpoint: str | None = None
    sampling_ratio: float | None = Field(None, ge=0, le=1)  # of new traces; a client's sampled flag is kept
    service_name: str | None = Field(None, min_length=1)

    @field_validator("otlp_endpoint")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (OTLP over HTTP/protobuf)")
        return v

    def traces_url(self) -> str | None:
        """The URL spans are posted to, or None to let the exporter read the environment."""
        if self.otlp_endpoint is None:
            return None
        base = self.otlp_endpoint.rstrip("/")
        return base if base.endswith("/v1/traces") else base + "/v1/traces"
