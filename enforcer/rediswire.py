"""The hot path's Redis connection: one pipelined connection shared by all requests of a process.

Why not redis-py: a pooled client costs ~50 µs of Python per command and one write per command.
Here a command is packed by hiredis, queued, and every command issued in one event-loop pass goes
out in one write (Redis answers them in order, so replies are matched first-in first-out). Each
call has its own deadline: a reply that comes later is dropped, so a slow batch never holds a
request past its deadline. Replies and failures are *returned*, not raised: a miss on the hot
path costs no exception machinery.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import hiredis
from redis.connection import parse_url

log = logging.getLogger("tollgate.enforcer.redis")

ReplyError = hiredis.ReplyError


class Failure:
    """A call that got no reply: `cause` is "deadline", "connect" or "disconnected"."""

    __slots__ = ("cause",)

    def __init__(self, cause: str):
        self.cause = cause

    def __repr__(self) -> str:
        return f"Failure({self.cause})"


DEADLINE = Failure("deadline")
CONNECT = Failure("connect")
DISCONNECTED = Failure("disconnected")


class RedisWire:
    def __init__(self, url: str, connect_timeout: float = 0.25, hang_timeout: float = 0.5, prelude: tuple[tuple, ...] = ()):
        kw = parse_url(url)
        self._addr = kw.get("path") or (kw.get("host", "127.0.0.1"), kw.get("port", 6379))
        self._ssl = ssl.create_default_context() if urlsplit(url).scheme == "rediss" else None
        setup: list[tuple] = []
        if kw.get("password"):
            setup.append(("AUTH", kw["username"], kw["password"]) if kw.get("username") else ("AUTH", kw["password"]))
        if kw.get("db"):
            setup.append(("SELECT", kw["db"]))
        self._prelude = tuple(setup) + prelude  # sent first on every new connection
        self.connect_timeout = connect_timeout
        self.hang_timeout = hang_timeout  # no reply for this long: the connection is dead, drop it
        self.on_reply = None  # called with each reply as it arrives (late ones too)
        self._conn: _Conn | None = None  # the live connection
        self._connecting: asyncio.Task | None = None
        # [future, deadline handle, time sent, timeout, verdict deferred], in send order
        self._pending: deque[list] = deque()
        self._wbuf: list[bytes] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def call(self, args: tuple[Any, ...], timeout: float) -> asyncio.Future:
        """Queue one command; the future gets the reply, a ReplyError, or a Failure (never raises)."""
        loop = self._loop or self._bind_loop()
        fut = loop.create_future()
        entry = [fut, None, time.perf_counter(), timeout, False]
        entry[1] = loop.call_later(timeout, self._expire, entry)
        self._pending.append(entry)
        self._wbuf.append(hiredis.pack_command(args))
        if self._conn is not None:
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        elif self._connecting is None:
            self._connecting = loop.create_task(self._connect())
        return fut

    def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        self._drop()

    # ------------------------------------------------------------------ internals

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._conn is not None and self._wbuf:
            data = b"".join(self._wbuf)
            self._wbuf.clear()
            self._conn.transport.write(data)

    def _expire(self, entry: list) -> None:
        fut, _, sent, timeout, deferred = entry
        now = time.perf_counter()
        if now - sent < timeout - 0.0001:
            # uvloop's timers have millisecond resolution and start from the time cached at the top
            # of the loop iteration: they can fire early. Wait out the rest of the deadline.
            entry[1] = self._loop.call_later(timeout - (now - sent), self._expire, entry)
            return
        if not fut.done():
            if not deferred and now - sent > timeout + 0.001:
                # The timer is late: this process was stalled (CPU, GC), and the reply may be
                # sitting unread in the socket. uvloop runs timers before reading sockets, so look
                # again after one round of I/O (two hops of call_soon get past it).
                entry[4] = True
                self._loop.call_soon(self._loop.call_soon, self._expire, entry)
                return
            fut.set_result(DEADLINE)
        # The oldest command has waited too long: Redis (or the path to it) is hung.
        if self._conn is not None and self._pending and now - self._pending[0][2] > self.hang_timeout:
            log.warning("redis: no reply for %.0f ms, dropping the connection", self.hang_timeout * 1000)
            self._drop()

    def _drop(self) -> None:
        """Forget the current connection and fail what waits on it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.transport.abort()
        self._fail_all(DISCONNECTED)

    async def _connect(self) -> None:
        loop = self._loop
        try:
            if isinstance(self._addr, str):
                coro = loop.create_unix_connection(lambda: _Conn(self), self._addr)
            else:
                coro = loop.create_connection(lambda: _Conn(self), *self._addr, ssl=self._ssl)
            _, conn = await asyncio.wait_for(coro, self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            log.debug("redis connect failed: %s", e)
            self._fail_all(CONNECT)
            return
        finally:
            self._connecting = None
        self._conn = conn
        # The prelude goes before everything queued while connecting.
        now = time.perf_counter()
        first = []
        for cmd in self._prelude:
            fut = loop.create_future()
            fut.add_done_callback(_check_prelude_reply(cmd[0]))
            entry = [fut, None, now, self.hang_timeout, True]
            entry[1] = loop.call_later(self.hang_timeout, self._expire, entry)
            first.append(entry)
        self._pending.extendleft(reversed(first))
        self._wbuf[:0] = [hiredis.pack_command(c) for c in self._prelude]
        self._flush()

    def _replies(self, conn: _Conn, data: bytes) -> None:
        if conn is not self._conn:
            return  # a connection already given up on
        reader, pending = conn.reader, self._pending
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if not pending:  # cannot happen with a well-behaved server
                log.error("redis: unexpected reply %r", reply)
                continue
            fut, handle, _, _, _ = pending.popleft()
            handle.cancel()
            if not fut.done():
                fut.set_result(reply)
            if self.on_reply is not None:
                self.on_reply(reply)

    def _lost(self, conn: _Conn) -> None:
        if conn is self._conn:
            self._conn = None
            self._fail_all(DISCONNECTED)

    def _fail_all(self, failure: Failure) -> None:
        self._wbuf.clear()
        while self._pending:
            fut, handle, _, _, _ = self._pending.popleft()
            handle.cancel()
            if not fut.done():
                fut.set_result(failure)


class _Conn(asyncio.Protocol):
    """One TCP (or unix) connection of a RedisWire; a dropped one can no longer touch the wire."""

    def __init__(self, wire: RedisWire):
        self.wire = wire
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(encoding="utf-8", errors="replace")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.wire._replies(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.wire._lost(self)


def _check_prelude_reply(name: str):
    def check(fut: asyncio.Future) -> None:
        reply = fut.result()
        if isinstance(reply, (ReplyError, Failure)):
            log.error("redis %s on connect failed: %r", name, reply)
    return check
