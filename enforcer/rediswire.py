"""The hot path's Redis connection: one pipelined connection shared by all requests of a process.

Why not redis-py: a pooled client costs ~50 µs of Python per command and one write per command.
Here a command is packed by hiredis, queued, and every command issued in one event-loop pass goes
out in one write (Redis answers them in order, so replies are matched first-in first-out). Replies
and failures are *returned*, not raised: a miss on the hot path costs no exception machinery.

The deadline means "Redis has been silent", not "our reply is late": a call fails with DEADLINE
only when nothing at all was read from the connection for `timeout` since its command was written
(after giving unread socket data one round of I/O). A busy event loop delays the write and the
read of a reply, but Redis answering other commands in the meantime proves it is alive, so the
call keeps waiting, up to `max(timeout, max_wait)` after it was issued (then SLOW). A hung or
stopped Redis still fails calls at about the deadline; our own load no longer does.
A reply that arrives after its call gave up is handed to `on_late(args, reply)`; a command that
was written but whose reply will never come (the connection was lost) to `on_lost(args)`: Redis
may have run it, or may still run it from its input buffer.
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
    """A call that got no reply: `cause` is "deadline" (Redis silent), "slow" (Redis answering,
    but not this call within the cap), "connect" or "disconnected"."""

    __slots__ = ("cause",)

    def __init__(self, cause: str):
        self.cause = cause

    def __repr__(self) -> str:
        return f"Failure({self.cause})"


DEADLINE = Failure("deadline")
SLOW = Failure("slow")
CONNECT = Failure("connect")
DISCONNECTED = Failure("disconnected")

_EARLY = 0.0001  # uvloop timers have millisecond resolution and may fire this much early


class _Batch:
    """The commands of one write: when it went out (perf_counter; None while still queued)."""

    __slots__ = ("at",)

    def __init__(self):
        self.at: float | None = None


class RedisWire:
    def __init__(self, url: str, connect_timeout: float = 0.25, hang_timeout: float = 0.5,
                 prelude: tuple[tuple, ...] = (), max_wait: float = 0.04):
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
        self.hang_timeout = hang_timeout  # silent this long with commands waiting: the connection is dead
        self.max_wait = max_wait  # while Redis answers, a call waits at most this long (or its timeout)
        self.on_reply = None  # called with each reply as it arrives (late ones too)
        self.on_late = None  # called with (args, reply) for a reply whose call already gave up
        self.on_lost = None  # called with args of each written command whose reply will never come
        self._conn: _Conn | None = None  # the live connection
        self._connecting: asyncio.Task | None = None
        # [future, timer handle, time called, timeout, batch, args, deferred], in send order
        self._pending: deque[list] = deque()
        self._wbuf: list[bytes] = []
        self._batch = _Batch()  # the batch the queued commands will go out with
        self._flush_scheduled = False
        self._last_read = 0.0  # perf_counter of the last bytes read from the live connection
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def call(self, args: tuple[Any, ...], timeout: float) -> asyncio.Future:
        """Queue one command; the future gets the reply, a ReplyError, or a Failure (never raises)."""
        loop = self._loop or self._bind_loop()
        fut = loop.create_future()
        entry = [fut, None, time.perf_counter(), timeout, self._batch, args, False]
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
            self._batch.at = time.perf_counter()
            self._batch = _Batch()
            self._conn.transport.write(data)

    def _expire(self, entry: list) -> None:
        """The call's timer: fail it if Redis has been silent for its timeout since it was written,
        or if it has waited its cap; otherwise look again when that could next be true."""
        fut, _, called, timeout, batch, _, deferred = entry
        if fut.done():
            return
        loop, now = self._loop, time.perf_counter()
        cap = called + max(timeout, self.max_wait)
        if batch.at is None:  # not written yet
            if self._conn is not None:  # connected: our own loop has not run the flush yet
                return self._again(entry, min(now + timeout, cap) - now)
            if now < called + timeout - _EARLY:  # still connecting
                return self._again(entry, called + timeout - now)
            fut.set_result(DEADLINE)  # no connection within the deadline
            return
        quiet_since = max(batch.at, self._last_read)
        if now - quiet_since < timeout - _EARLY:  # Redis spoke recently: it is alive, keep waiting
            if now >= cap - _EARLY:
                fut.set_result(SLOW)
                return
            return self._again(entry, min(quiet_since + timeout, cap) - now)
        if not deferred:
            # Silent for the deadline, as far as we have read: the reply may be sitting unread in
            # the socket (uvloop runs timers before it reads sockets). Look again after one round
            # of I/O (two hops of call_soon get past it).
            entry[6] = True
            loop.call_soon(loop.call_soon, self._expire, entry)
            return
        fut.set_result(DEADLINE)
        # The oldest command has had no answer for too long: Redis (or the path to it) is hung.
        if self._conn is not None and self._pending:
            head = self._pending[0][4].at
            if head is not None and now - max(head, self._last_read) > self.hang_timeout:
                log.warning("redis: silent for %.0f ms, dropping the connection", self.hang_timeout * 1000)
                self._drop()

    def _again(self, entry: list, delay: float) -> None:
        entry[6] = False
        entry[1] = self._loop.call_later(max(delay, 0.0), self._expire, entry)

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
        self._last_read = 0.0
        # The prelude goes before everything queued while connecting.
        now = time.perf_counter()
        first = []
        for cmd in self._prelude:
            fut = loop.create_future()
            fut.add_done_callback(_check_prelude_reply(cmd[0]))
            entry = [fut, None, now, self.hang_timeout, self._batch, cmd, False]
            entry[1] = loop.call_later(self.hang_timeout, self._expire, entry)
            first.append(entry)
        self._pending.extendleft(reversed(first))
        self._wbuf[:0] = [hiredis.pack_command(c) for c in self._prelude]
        self._flush()

    def _replies(self, conn: _Conn, data: bytes) -> None:
        if conn is not self._conn:
            return  # a connection already given up on
        self._last_read = time.perf_counter()
        reader, pending = conn.reader, self._pending
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if not pending:  # cannot happen with a well-behaved server
                log.error("redis: unexpected reply %r", reply)
                continue
            fut, handle, _, _, _, args, _ = pending.popleft()
            handle.cancel()
            if not fut.done():
                fut.set_result(reply)
            elif self.on_late is not None:
                self.on_late(args, reply)
            if self.on_reply is not None:
                self.on_reply(reply)

    def _lost(self, conn: _Conn) -> None:
        if conn is self._conn:
            self._conn = None
            self._fail_all(DISCONNECTED)

    def _fail_all(self, failure: Failure) -> None:
        self._wbuf.clear()
        self._batch = _Batch()  # a batch already written keeps its time: on_lost tells them apart
        while self._pending:
            fut, handle, _, _, batch, args, _ = self._pending.popleft()
            handle.cancel()
            if not fut.done():
                fut.set_result(failure)
            if batch.at is not None and self.on_lost is not None:
                self.on_lost(args)


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
