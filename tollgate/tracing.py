"""OpenTelemetry traces, off unless TOLLGATE_TRACING turns them on (docs/ARCHITECTURE.md, "Tracing").

TOLLGATE_TRACING:
- `off` (default): `ENABLED` stays False, opentelemetry is never imported, `span()` is a shared
  no-op and `traced` functions call straight through; the enforcer does not even wrap its
  endpoints (enforcer.tracing), so a check pays nothing for it.
- `otlp`: spans go in batches to an OTLP/HTTP (protobuf) collector; where and how come from the
  standard OTEL_EXPORTER_OTLP_* variables (default http://localhost:4318/v1/traces), batching
  from OTEL_BSP_*, sampling from OTEL_TRACES_SAMPLER (default: parent-based, always on).
- `console`: each span as JSON on stdout (a look without a collector).
OTEL_SERVICE_NAME overrides the service name (tollgate-enforcer, tollgate-rater).

The trace context crosses the bus inside the event itself, as the W3C `traceparent` (and
`tracestate`) fields: the spool keeps events as JSON and both transports carry that JSON, so the
context survives a bus outage and a Redis bus as well as Kafka.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

ENABLED = False  # read by the traced call sites (rater stages, /v1/usage); the check path has none (enforcer.tracing)
# The sampler records nothing under a remote parent that was not sampled (every parentbased_*
# OTEL_TRACES_SAMPLER, the default): such a request may skip its span altogether (enforcer.tracing).
UNSAMPLED_PARENT_DROPS = False
TRACEPARENT, TRACESTATE = "traceparent", "tracestate"
MODES = ("off", "otlp", "console")

_tracer = None
_provider = None
_propagator = None  # W3C trace context (traceparent, tracestate); set by setup()
_current_span = None  # opentelemetry.trace.get_current_span, once imported
_NOOP = contextlib.nullcontext()


def setup(service: str, exporter=None, *, batched: bool = False) -> bool:
    """Turn tracing on in this process as TOLLGATE_TRACING says; `exporter` (tests: the SDK's
    InMemorySpanExporter) turns it on whatever the setting, each span exported as it ends (or in
    batches, `batched`, as otlp does: loadtest.bench_tracing)."""
    global ENABLED, UNSAMPLED_PARENT_DROPS, _tracer, _provider, _propagator, _current_span
    mode = os.environ.get("TOLLGATE_TRACING", "off").strip().lower() or "off"
    if mode not in MODES:
        raise ValueError(f"TOLLGATE_TRACING={mode!r}: expected one of {', '.join(MODES)}")
    if exporter is None and mode == "off":
        return False
    try:
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415  (only when tracing is on)
        from opentelemetry.trace import get_current_span  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor  # noqa: PLC0415
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator  # noqa: PLC0415
    except ImportError as e:
        raise RuntimeError(f"TOLLGATE_TRACING={mode} needs the otel extra: pip install 'tollgate[otel]' ({e})") from e
    if exporter is not None:
        processor = BatchSpanProcessor(exporter) if batched else SimpleSpanProcessor(exporter)
    elif mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        processor = BatchSpanProcessor(OTLPSpanExporter())
    else:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        processor = SimpleSpanProcessor(ConsoleSpanExporter())
    if _provider is not None:
        _provider.shutdown()
    _provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service}))
    _provider.add_span_processor(processor)
    _tracer = _provider.get_tracer("tollgate")
    _propagator = TraceContextTextMapPropagator()
    _current_span = get_current_span
    UNSAMPLED_PARENT_DROPS = "remoteParentNotSampled:AlwaysOffSampler" in _provider.sampler.get_description()
    ENABLED = True
    return True


def flush() -> None:
    """Export every span ended so far (a benchmark's export counts to its time)."""
    if _provider is not None:
        _provider.force_flush()


def shutdown() -> None:
    """Export what is buffered and turn tracing off (tests; the SDK also flushes at exit)."""
    global ENABLED, _tracer, _provider
    ENABLED = False
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def tracer():
    """The tollgate tracer (only while ENABLED)."""
    return _tracer


def span(name: str, **kw):
    """A child span of the current one as a context manager; a shared no-op while tracing is off."""
    if not ENABLED:
        return _NOOP
    return _tracer.start_as_current_span(name, **kw)


def traced(name: str):
    """Decorate an async function: its call is span `name` while tracing is on (checked per call,
    so modules decorated at import follow a setup() made later)."""
    def decorate(fn):
        @functools.wraps(fn)
        async def call(*args, **kwargs):
            if not ENABLED:
                return await fn(*args, **kwargs)
            with _tracer.start_as_current_span(name):
                return await fn(*args, **kwargs)
        return call
    return decorate


def context_from(carrier: dict[str, Any]):
    """The OpenTelemetry context a W3C `traceparent` (and `tracestate`) in `carrier` names (an
    empty context when there is none or it is malformed: the span then starts a trace)."""
    return _propagator.extract(carrier)


def span_context_of(carrier: dict[str, Any]):
    """The sampled remote span context in `carrier` (an event), or None when it has none valid."""
    if not isinstance(carrier.get(TRACEPARENT), str):
        return None
    sc = _current_span(context_from(carrier)).get_span_context()
    return sc if sc.is_valid and sc.trace_flags.sampled else None


def inject(carrier: dict[str, Any]) -> None:
    """Write the current span's context into `carrier` as `traceparent` (and `tracestate`), when
    it is sampled: an event of an unsampled request stays as small as without tracing, and the
    rater has nothing to record for it anyway."""
    if _current_span().is_recording():
        _propagator.inject(carrier)
