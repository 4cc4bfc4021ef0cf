"""The rater's spans for a batch of bus messages (tollgate.tracing; nothing while tracing is off).

One span covers many events, so it follows the OpenTelemetry messaging conventions for batch
processing: `rater.batch` (kind CONSUMER) starts its own trace and links to the context each
event carries (its `traceparent` field: the enforcer's check or usage span); the stages of the
batch (decode, customers, the lock groups' transactions with sessions, pricing and the ledger
write, settlement, alerts, ...) are its children. And so that a request's own trace shows what
became of its event, each traced event gets a `rater.event` span in that trace (child of the
event's context, over the batch's time, linked back to the batch span) with its outcome.
"""
from __future__ import annotations

import functools
import time

import orjson

from tollgate import tracing

_MARK = tracing.TRACEPARENT.encode()


def traced_events(raws) -> list[tuple]:
    """(index, event, its span context) of the messages that carry a valid trace context."""
    out = []
    for i, raw in enumerate(raws):
        if _MARK not in raw:  # most batches in a sampled deployment: no JSON parsed twice
            continue
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        sc = tracing.span_context_of(body) if isinstance(body, dict) else None
        if sc is not None:
            out.append((i, body, sc))
    return out


def traced_batch(process_raw):
    """Decorate Pipeline.process_raw: the batch span, its links and the per-event spans."""
    @functools.wraps(process_raw)
    async def process(self, raws, **kwargs):
        if not tracing.ENABLED:
            return await process_raw(self, raws, **kwargs)
        from opentelemetry.trace import Link, SpanKind  # noqa: PLC0415  (the otel extra, when on)

        tracer = tracing.tracer()
        events = traced_events(raws)
        links = [Link(sc, {"tollgate.event.id": str(body.get("id"))}) for _, body, sc in events]
        start = time.time_ns()
        res = None
        with tracer.start_as_current_span("rater.batch", kind=SpanKind.CONSUMER, links=links, attributes={
                "messaging.operation.type": "process", "messaging.batch.message_count": len(raws)}) as batch:
            try:
                res = await process_raw(self, raws, **kwargs)
            finally:
                end = time.time_ns()
                _event_spans(tracer, batch, events, res, start, end)
            batch.set_attributes({"tollgate.rated": res.rated, "tollgate.replayed": res.replayed,
                                  "tollgate.dead_letters": len(res.dead), "tollgate.spend_micros": res.spend_micros})
        return res
    return process


def _event_spans(tracer, batch, events, res, start: int, end: int) -> None:
    """Each traced event's `rater.event` span, in its own trace; `res` None: the batch failed."""
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.trace import Link, NonRecordingSpan, SpanKind, Status, StatusCode  # noqa: PLC0415

    back = [Link(batch.get_span_context())]
    for i, body, sc in events:
        span = tracer.start_span("rater.event", context=trace.set_span_in_context(NonRecordingSpan(sc)),
                                 kind=SpanKind.CONSUMER, links=back, start_time=start, attributes={
                                     "tollgate.event.id": str(body.get("id")), "tollgate.event.kind": str(body.get("kind"))})
        if res is None:  # nothing acknowledged: the batch is delivered again
            span.set_status(Status(StatusCode.ERROR, "batch failed; it will be delivered again"))
        elif (dead := res.dead_by_index[i]) is not None:
            span.set_attribute("tollgate.dead_letter", dead.reason)
            span.set_status(Status(StatusCode.ERROR, dead.detail[:200]))
        span.end(end_time=end)
