"""Bounds on how a client may send a request, which uvicorn's httptools protocol does not have.

uvicorn (0.54) bounds a request's head only on its h11 protocol (`h11_max_incomplete_event_size`);
with httptools a head may grow without limit (httptools itself buffers a header value until the
line ends), and no timer runs while a request is being read, so a client that sends a header line
now and then (slowloris) holds the connection for ever. The keep-alive timer runs only between
requests, and only once a first response has been sent. This subclass, passed to uvicorn.run as
`http=`, adds:
- head size: request line and headers of one request at most TOLLGATE_MAX_HEADER_BYTES (32 KiB,
  what nginx itself accepts by default, so an `auth_request` subrequest that forwards the
  client's headers fits) -> 431 and the connection closed;
- read time: a request whose head and body have not all arrived TOLLGATE_REQUEST_READ_TIMEOUT_S
  (10 s) after its first byte -> 408 (or only the close, when a response is already under way);
- a connection that never sends a byte is closed after the keep-alive timeout, as an idle one is.
Only the head's size is counted byte by byte; the body's size is the application's (64 KiB).

Hot path: a request that arrives in one read costs four thin overrides of uvicorn's callbacks
(about a microsecond of CPU, under 1 % of a check: loadtest/bench_http_bounds.py); the timer and
the exact measure of the head are paid only by a request split across reads.
"""
from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from tollgate.config import _env

MAX_HEAD_BYTES = int(_env("MAX_HEADER_BYTES", str(32 * 1024)))
READ_TIMEOUT_S = float(_env("REQUEST_READ_TIMEOUT_S", "10"))


class _HeadTooLarge(Exception):
    """Raised inside the parser's callback: llhttp stops, uvicorn calls send_400_response."""


def _error_response(status: int, error: str, message: str) -> bytes:
    body = orjson.dumps({"error": error, "message": message})
    return b"".join((STATUS_LINE[status], b"content-type: application/json\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n" % len(body), body))


HEAD_TOO_LARGE = _error_response(431, "header_too_large", f"the request line and headers are over {MAX_HEAD_BYTES} bytes")
READ_TIMEOUT = _error_response(408, "request_timeout", f"the request did not arrive within {READ_TIMEOUT_S:g} s")


_base = HttpToolsProtocol  # called as _base.method(self, ...): cheaper than super() per request


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = MAX_HEAD_BYTES
    read_timeout_s = READ_TIMEOUT_S

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # the current (or next) request's headers are not complete
        self._head_bytes = 0  # bytes of that head counted so far
        self._head_split = False  # that head did not come in one read
        self._completed = 0  # requests read completely: a request boundary inside a read
        self._read_len = 0  # size of the read being parsed
        self._idle = True  # no request is partly read
        self._read_timer = None
        self._refusal: bytes | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        # uvicorn arms the keep-alive timer only after a response: a silent connection would stay.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        completed = self._completed
        self._read_len = len(data)
        self._idle = False
        _base.data_received(self, data)
        if self._idle or self.transport.is_closing():
            return
        # Part of a request is here, the rest is not (a head or a body split across reads).
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_too_slow)
        if self._in_head:
            self._head_split = True
            # No request ended inside this read: all of it was head. (After one did, the next
            # head's share of the read is unknown: it is counted from the next read on.)
            if completed == self._completed:
                self._head_bytes += len(data)
                if self._head_bytes > self.max_head_bytes:
                    self._refuse(HEAD_TOO_LARGE)

    def on_message_begin(self) -> None:
        self._idle = False
        _base.on_message_begin(self)

    def on_headers_complete(self) -> None:
        # A head that came in one read no larger than the bound is within it: measure the others.
        if (self._head_split or self._read_len > self.max_head_bytes) and self._head_size() > self.max_head_bytes:
            self._refusal = HEAD_TOO_LARGE
            raise _HeadTooLarge
        self._in_head = False
        _base.on_headers_complete(self)

    def on_message_complete(self) -> None:
        _base.on_message_complete(self)
        self._completed += 1
        self._idle = self._in_head = True
        self._head_bytes = 0
        self._head_split = False
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error; the error may be our own refusal."""
        if self._refusal is not None:
            self._refuse(self._refusal)
        else:
            super().send_400_response(msg)

    def _head_size(self) -> int:
        size = len(self.url) + 12  # method, version, spaces, CRLF
        for name, value in self.headers:
            size += len(name) + len(value) + 4  # ": " and CRLF
        return size

    def _read_too_slow(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # we stopped reading (a pipelined request waits): not the client's delay
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_too_slow)
            return
        cycle = self.cycle
        if cycle is not None and not self._in_head and not cycle.response_started:
            cycle.disconnected = True  # the body will not come: the app's receive() says so now
            cycle.message_event.set()
        self._refuse(READ_TIMEOUT)

    def _refuse(self, response: bytes) -> None:
        """Close the connection; answer `response` first unless the request being read already has
        an answer, or the one before it is still being answered (the client would take ours for it)."""
        cycle = self.cycle
        if self._in_head:
            answer = cycle is None or cycle.response_complete
        else:
            answer = not cycle.response_started
        if answer:
            self.transport.write(response)
        self._cancel_read_timer()
        self.transport.close()

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

