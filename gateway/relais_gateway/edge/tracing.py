"""OpenTelemetry traces of the gateway's requests: off unless the standard `OTEL_*` variables ask.

On when `OTEL_TRACES_EXPORTER=otlp` or an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), and `OTEL_SDK_DISABLED` is not true; the SDK reads the
rest (sampler, its ratio, headers, service name) from the environment itself. Each request gets
a server span (continuing an incoming W3C `traceparent`), with child spans for its wait (for a
slot or a replica) and each upstream attempt; the attempt's `traceparent` goes to the engine, so
an engine that traces (vLLM's `--otlp-traces-endpoint`) joins the same trace. When off, nothing
here is imported and the hot path checks one `None`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()
__all__ = ["Span", "Status", "StatusCode", "Tracing", "enabled", "from_environment"]


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (see the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    return environ.get("OTEL_TRACES_EXPORTER", "").lower() == "otlp" or bool(endpoint)


class Tracing:
    """The gateway's tracer: a server span per request, and children inside it."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("relais_gateway")

    @contextmanager
    def server(self, method: str, route: str, headers: list[tuple[bytes, bytes]]) -> Iterator[Span]:
        """The request's span, a child of the caller's `traceparent` when there is one."""
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in headers
            if name in (b"traceparent", b"tracestate")
        }
        parent = PROPAGATOR.extract(carrier) if carrier else None
        with self.tracer.start_as_current_span(
            f"{method} {route}", context=parent, kind=SpanKind.SERVER, end_on_exit=True
        ) as span:
            yield span

    def start(self, name: str, **attributes: Any) -> Span:
        """A child of the current span, ended by `end` (not made current: it may outlive
        the await it began in, as an upstream attempt that streams does)."""
        return self.tracer.start_span(name, attributes=attributes)

    @staticmethod
    def headers(span: Span) -> dict[str, str]:
        """`traceparent` (and `tracestate`) naming `span`, for the engine."""
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    @staticmethod
    def end(span: Span, error: BaseException | None = None) -> None:
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.set_attribute("error.type", type(error).__name__)
        span.end()

    @staticmethod
    def annotate(**attributes: Any) -> None:
        """Attributes of the current span (the request's, when called outside any child)."""
        trace.get_current_span().set_attributes(attributes)

    def shutdown(self) -> None:
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


def from_environment() -> Tracing | None:
    """A `Tracing` with the OTLP/HTTP exporter when the environment asks for one, else None."""
    if not enabled():
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME", "relais-gateway")
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider)
