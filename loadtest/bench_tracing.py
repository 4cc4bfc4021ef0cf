"""What tracing adds to one request in the enforcer, alone (no HTTP, no Redis): CPU per call.

    .venv/bin/python -m loadtest.bench_tracing --calls 50000

A do-nothing ASGI endpoint, called directly (tracing off: what create_app serves then), and
wrapped in enforcer.tracing.TracedEndpoint with the SDK set up as TOLLGATE_TRACING=otlp does it
(a batch span processor), the export replaced by the OTLP exporter's own protobuf encoding of each
batch, thrown away: the span and its export's CPU, without a collector. Cases: the gateway's
traceparent sampled (flags 01), not sampled (00: a non-recording span), and none.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import time

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from enforcer.tracing import TracedEndpoint
from tollgate import tracing


class EncodeOnly(SpanExporter):
    """The OTLP exporter's work short of the network: encode the batch to protobuf bytes."""

    def __init__(self):
        self.bytes = 0

    def export(self, spans) -> SpanExportResult:
        self.bytes += len(encode_spans(spans).SerializeToString())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


async def endpoint(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-tollgate-reason", b"ok")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def receive() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict) -> None:
    pass


def scope(traceparent: bytes | None) -> dict:
    headers = [(b"content-type", b"application/json")]
    if traceparent is not None:
        headers.append((b"traceparent", traceparent))
    return {"type": "http", "method": "POST", "path": "/v1/check", "headers": headers}


async def per_call(app, s: dict, calls: int) -> float:
    """CPU seconds per call (process time: the batch processor's export thread included)."""
    for _ in range(min(calls, 2000)):  # warm up
        await app(s, receive, send)
    t0 = time.process_time()
    for _ in range(calls):
        await app(s, receive, send)
    tracing.flush()  # the export of these spans counts too
    return (time.process_time() - t0) / calls


async def main_async(calls: int) -> None:
    off = await per_call(endpoint, scope(None), calls)
    print(f"tracing off (endpoint not wrapped)             {off * 1e6:7.2f} us/call")
    exporter = EncodeOnly()
    os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(2 * calls + 4000)  # every span exported, none dropped
    tracing.setup("bench", exporter=exporter, batched=True)
    traced = TracedEndpoint(endpoint, "/v1/check")
    tp = b"00-%032x-%016x-%s" % (0xABC, 0xDEF, b"%s")
    for label, header in (("traceparent sampled (01)", tp % b"01"), ("traceparent not sampled (00)", tp % b"00"),
                          ("no traceparent (a root span, sampled)", None)):
        t = await per_call(traced, scope(header), calls)
        print(f"tracing on, {label:36s}{t * 1e6:7.2f} us/call  (+{(t - off) * 1e6:.2f})")
    print(f"# {exporter.bytes / 1e6:.1f} MB of OTLP protobuf encoded")
    tracing.shutdown()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=50_000)
    args = p.parse_args(argv)
    asyncio.run(main_async(args.calls))


if __name__ == "__main__":
    main()
