"""OpenTelemetry, off unless configured: a server span per call (opentelemetry-instrumentation-grpc
for gRPC calls, `http_server_span` for the HTTP facades' calls) and a client span per upstream
call, whose context HTTP providers forward as W3C `traceparent`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

TRACER_NAME = "modelwire"
_tracing = False
_NO_SPAN: AbstractContextManager[None] = nullcontext()


def server_interceptor(otlp_endpoint: str | None) -> Any:
    """The instrumentation's aio interceptor, on the global tracer provider.

    An application (or a test) that already installed a provider keeps it; otherwise an SDK provider
    is installed, exporting over OTLP when an endpoint is configured (the `tracing` extra).
    """
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.sdk.trace import TracerProvider

    global _tracing
    _tracing = True
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint))
            )
        trace.set_tracer_provider(provider)
    return aio_server_interceptor()  # type: ignore[no-untyped-call]


def tracing_on() -> bool:
    """Whether this process records spans: set once `server_interceptor` installed tracing (the
    configuration's `tracing`). Read per call, so tracing off costs nothing on the hot path (an
    unrecorded span, its context and `traceparent` header; OpenTelemetry's own check for a
    provider reads the environment)."""
    return _tracing


def upstream_span(provider: str, model: str) -> AbstractContextManager[None]:
    """A client span around a call to the provider, current while it runs; nothing unless
    tracing_on()."""
    return _recorded_span(provider, model) if tracing_on() else _NO_SPAN


@contextmanager
def _recorded_span(provider: str, model: str) -> Iterator[None]:
    """A stream's span lives across yields, and gRPC may close the stream from another task (another
    contextvars Context) than the one that opened it: the span is current only where it was made
    current, and is ended wherever the stream ends (OpenTelemetry's own context manager would log
    "Failed to detach context" each time)."""
    tracer = trace.get_tracer(TRACER_NAME)
    span = tracer.start_span(
        f"upstream {provider}",
        kind=trace.SpanKind.CLIENT,
        attributes={"modelwire.provider": provider, "modelwire.model": model},
    )
    previous = otel_context.get_current()
    made_current = trace.set_span_in_context(span)
    otel_context.attach(made_current)
    try:
        yield
    except BaseException as error:
        span.record_exception(error)
        raise
    finally:
        # The previous context set again rather than the attach's token reset: a token resets only
        # in the Context that made it, and a stream read ahead (core/coalesce.py) ends in a copy.
        if otel_context.get_current() is made_current:
            otel_context.attach(previous)
        span.end()


def http_server_span(name: str, headers: Mapping[str, str]) -> AbstractContextManager[None]:
    """A server span around an HTTP facade call, a child of the caller's W3C `traceparent` when it
    sent one; nothing unless tracing_on()."""
    return _recorded_server_span(name, headers) if tracing_on() else _NO_SPAN


@contextmanager
def _recorded_server_span(name: str, headers: Mapping[str, str]) -> Iterator[None]:
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        name, context=propagate.extract(headers), kind=trace.SpanKind.SERVER
    ):
        yield


def inject_trace_headers(headers: MutableMapping[str, str]) -> None:
    """Adds `traceparent` (and `tracestate`) of the current span, for an outgoing HTTP request."""
    if tracing_on():
        propagate.inject(headers)
