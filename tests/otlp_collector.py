"""A tiny real OTLP/HTTP trace collector for tests: POST /v1/traces bodies (protobuf
ExportTraceServiceRequest) decoded into plain span records a test can assert on."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class CollectedSpan:
    service: str
    name: str
    kind: int  # opentelemetry.proto Span.SpanKind: 2 SERVER, 5 CONSUMER
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict


class OtlpCollector:
    def __init__(self):
        self.spans: list[CollectedSpan] = []
        self.requests = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802  (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                collector.receive(self.path, body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """For OTEL_EXPORTER_OTLP_TRACES_ENDPOINT."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def env(self) -> dict[str, str]:
        """A service's settings to export its spans here, each batch within 50 ms."""
        return {"TOLLGATE_TRACING": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "50"}

    def receive(self, path: str, body: bytes) -> None:
        assert path == "/v1/traces", path
        req = ExportTraceServiceRequest.FromString(body)
        self.requests += 1
        for rs in req.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {a.key: _value(a.value) for a in s.attributes}
                    self.spans.append(CollectedSpan(service, s.name, s.kind, s.trace_id.hex(), s.span_id.hex(),
                                                    s.parent_span_id.hex(), attrs))

    async def wait_for(self, names: list[str], timeout: float = 15.0) -> dict[str, CollectedSpan]:
        """The last span of each name, once all have arrived."""
        deadline = time.monotonic() + timeout
        while True:
            got = {s.name: s for s in self.spans}
            if all(n in got for n in names):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"the collector got no span named {[n for n in names if n not in got]}"
                                     f" in {timeout}s (got {sorted(got)})")
            await asyncio.sleep(0.05)

    def __enter__(self) -> OtlpCollector:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None
