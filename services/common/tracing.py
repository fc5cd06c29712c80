"""Optional OpenTelemetry tracing across gRPC and Temporal.

TRACING=otlp exports spans over OTLP/gRPC (to OTEL_EXPORTER_OTLP_ENDPOINT, default
http://localhost:4317, with the exporter's other standard OTEL_* variables); TRACING=console
prints them; TRACING=off (the default) installs nothing and costs nothing.

When on, one trace follows a request across processes: the CLI or a service starting a
journey, the workflow and its activities (Temporal carries the context in its headers),
and each activity's calls to the services (gRPC metadata carries it there). Log lines
written inside a span carry its trace_id and span_id (services/common/logging.py), so
logs and traces join up.

The provider is this module's own, not OpenTelemetry's global one, so that a process (or
a test) can turn tracing on and off again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.common.config import Settings

# Imported when tracing is turned on: a process with tracing off pays nothing for it.
if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer
    from temporalio.client import Interceptor

_provider: TracerProvider | None = None


def configure_tracing(
    settings: Settings, process: str, *, exporter: SpanExporter | None = None
) -> bool:
    """Turn tracing on as TRACING says (or with `exporter`, for tests); True when on."""
    global _provider
    if exporter is None:
        if settings.tracing == "off":
            return False
        exporter = _exporter(settings.tracing)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"mineaction-{process}"}))
    # Batching keeps export off the request path; a test's exporter sees spans at once.
    batched = settings.tracing != "off"
    processor = BatchSpanProcessor(exporter) if batched else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    _provider = provider
    return True


def shutdown_tracing() -> None:
    """Flush what is buffered and turn tracing off."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def tracer(name: str) -> Tracer:
    """A tracer for spans of our own (a no-op one while tracing is off)."""
    if _provider is None:
        from opentelemetry.trace import NoOpTracer

        return NoOpTracer()
    return _provider.get_tracer(name)


def _exporter(kind: str) -> SpanExporter:
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def server_interceptors() -> list[Any]:
    """For a service's grpc.aio server: a span per call, continuing the caller's trace."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=_provider)]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[Any]:
    """For a channel to a service: a span per call, its context sent in the metadata."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=_provider))  # type: ignore[no-untyped-call]


def temporal_interceptors() -> list[Interceptor]:
    """For a Temporal client (and so its workers): spans for starting and running
    workflows and activities, the context carried in Temporal's headers."""
    if _provider is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(tracer("mineaction.temporal"))]
