"""A discarding OTLP/HTTP trace receiver: the collector end of a benchmark with tracing on.

    .venv/bin/python -m loadtest.otlp_sink --port 4318

Answers every POST /v1/traces with 200 and an empty ExportTraceServiceResponse without decoding
it (so it costs the shared box little), and prints how many exports and bytes it took on exit.
"""
from __future__ import annotations

import argparse
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the exporter reuses its connection
    exports = 0
    received = 0

    def do_POST(self):  # noqa: N802  (http.server's naming)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Sink.exports += 1
        Sink.received += len(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=4318)
    args = p.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Sink)

    def stop(*_):
        print(f"# otlp_sink: {Sink.exports} exports, {Sink.received:,} bytes", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
