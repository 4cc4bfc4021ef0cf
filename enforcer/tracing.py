"""The enforcer's spans, put in place at start-up only when tracing is on (tollgate.tracing).

`create_app` wraps the /v1/check and /v1/usage endpoints in `TracedEndpoint` and queues decision
events through `TracedEventQueue`; with tracing off neither exists and the endpoints run as they
are (nothing per request, not even a flag test on the check path).

A request's span continues the gateway's trace (its `traceparent`/`tracestate` headers) and the
events it produces carry the span's own context onward to the rater (tollgate.tracing).
"""
from __future__ import annotations

from opentelemetry.trace import SpanKind, Status, StatusCode

from enforcer.events import EventQueue
from tollgate import tracing

_TRACEPARENT, _TRACESTATE = tracing.TRACEPARENT.encode(), tracing.TRACESTATE.encode()
_NOT_SAMPLED = frozenset(b"02468aceACE")  # last hex digit of the flags: the sampled bit is clear


class TracedEndpoint:
    """A raw ASGI endpoint inside a SERVER span named `POST <path>`, child of the caller's trace."""

    def __init__(self, endpoint, path: str):
        self.endpoint = endpoint
        self.name = f"POST {path}"
        self.path = path
        self.skip_unsampled = tracing.UNSAMPLED_PARENT_DROPS

    async def __call__(self, scope: dict, receive, send) -> None:
        carrier = {}
        for k, val in scope["headers"]:
            if k == _TRACEPARENT:
                if self.skip_unsampled and len(val) == 55 and val[-1] in _NOT_SAMPLED:
                    # the gateway did not sample it: the SDK would only make a non-recording span
                    return await self.endpoint(scope, receive, send)
                carrier["traceparent"] = val.decode("latin-1")
            elif k == _TRACESTATE:
                carrier["tracestate"] = val.decode("latin-1")
        attributes = {"http.request.method": scope["method"], "url.path": self.path}
        with tracing.tracer().start_as_current_span(self.name, context=tracing.context_from(carrier),
                                                    kind=SpanKind.SERVER, attributes=attributes) as span:
            async def traced_send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    for k, val in message.get("headers", ()):
                        if k == b"x-tollgate-reason":
                            span.set_attribute("tollgate.reason", val.decode())
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.endpoint(scope, receive, traced_send)


class TracedEventQueue(EventQueue):
    """Decision and fail-open events carry the context of the check that produced them."""

    def put(self, event: dict) -> None:
        tracing.inject(event)
        super().put(event)
