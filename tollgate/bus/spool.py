"""A local spool: events the bus could not take, kept on disk and replayed in order.

One JSON line per event, flushed and fsync'd before `append` returns, so an event reported as
accepted survives a crash. Replay publishes from the head in batches and truncates the file only
once the bus has acknowledged everything in it; a crash mid-replay re-sends some events, which
consumers drop by event id.

Each process needs a file of its own (truncation would race between writers): a process claims
the first of `path`, `path.1`, `path.2`, ... it can lock, and takes over the contents of unlocked
files left by processes that are gone (e.g. a server restarted with fewer workers).
"""
from __future__ import annotations

import asyncio
import fcntl
import glob
import logging
import os
from typing import Any, Callable

import orjson

from tollgate.bus import BusUnavailable, EventBus

log = logging.getLogger("tollgate.spool")
_READ_CHUNK = 1 << 20


class Spool:
    def __init__(self, path: str):
        self.path, self._fd = _claim(path)
        self._lock = asyncio.Lock()  # serialises file writes with the truncation after a replay
        self._queue: list[tuple[bytes, int, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        self._read_pos = 0  # bytes already replayed (and acknowledged)
        _drop_torn_tail(self._fd)
        self._adopt_orphans(path)
        self.depth = _count_lines(self._fd)  # events waiting for the bus

    async def append(self, events: list[dict[str, Any]]) -> None:
        """Durably store events; concurrent appends share one write and one fsync."""
        data = b"".join(orjson.dumps(e) + b"\n" for e in events)
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((data, len(events), fut))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_queued())
        await fut

    async def _write_queued(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    async with self._lock:
                        await asyncio.to_thread(_write_sync, self._fd, b"".join(b[0] for b in batch))
                except BaseException as e:  # disk full, ...: the callers must not report success
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(OSError(f"spool {self.path}: {e}"))
                    continue
                self.depth += sum(b[1] for b in batch)
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._writer = None

    async def replay(self, bus: EventBus, batch_size: int = 500) -> int:
        """Publish the spooled events in order; raises BusUnavailable, keeping its place, if the bus fails."""
        sent = 0
        while True:
            async with self._lock:
                lines, end = _read_lines(self._fd, self._read_pos, batch_size)
                if not lines:
                    os.ftruncate(self._fd, 0)
                    os.fsync(self._fd)
                    self._read_pos, self.depth = 0, 0
                    return sent
            events = []
            for line in lines:
                try:
                    events.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    log.error("spool %s: dropping an unreadable line: %r", self.path, line[:200])
            await bus.publish(events)
            self._read_pos = end
            self.depth -= len(lines)
            sent += len(events)

    def close(self) -> None:
        os.close(self._fd)  # also releases the lock

    def _adopt_orphans(self, base: str) -> None:
        slots = [base] + [p for p in glob.glob(glob.escape(base) + ".*") if p[len(base) + 1:].isdigit()]
        for other in slots:
            if other == self.path:
                continue
            try:
                fd = os.open(other, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live process owns it
            try:
                _drop_torn_tail(fd)
                pos = 0
                while chunk := os.pread(fd, _READ_CHUNK, pos):
                    _write_sync(self._fd, chunk)
                    pos += len(chunk)
                os.unlink(other)
                log.warning("spool: took over %d bytes from %s", pos, other)
            finally:
                os.close(fd)


class SpooledPublisher:
    """The bus with the spool behind it: publish never loses an event while the disk works.

    While anything is spooled, new events are spooled too, so the replay keeps their order.
    """

    def __init__(self, bus: EventBus, spool: Spool, on_depth: Callable[[int], None] | None = None):
        self.bus = bus
        self.spool = spool
        self._on_depth = on_depth or (lambda n: None)
        self._wake = asyncio.Event()

    async def publish(self, events: list[dict[str, Any]]) -> bool:
        """True: acknowledged by the bus; False: spooled (durable locally, replayed later)."""
        if not self.spool.depth:
            try:
                await self.bus.publish(events)
                return True
            except BusUnavailable as e:
                log.warning("bus unavailable, spooling %d events: %s", len(events), e)
        await self.spool.append(events)
        self._on_depth(self.spool.depth)
        self._wake.set()
        return False

    async def run_replay(self, min_wait: float = 0.2, max_wait: float = 5.0) -> None:
        """Background task: drain the spool whenever the bus takes events again."""
        wait = min_wait
        while True:
            if self.spool.depth:
                try:
                    n = await self.spool.replay(self.bus)
                    log.info("spool replayed %d events", n)
                    wait = min_wait
                except BusUnavailable:
                    wait = min(wait * 2, max_wait)
                self._on_depth(self.spool.depth)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait if self.spool.depth else None)
            except asyncio.TimeoutError:
                pass


# --------------------------------------------------------------------------- file helpers


def _claim(base: str) -> tuple[str, int]:
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    for i in range(1024):
        path = base if i == 0 else f"{base}.{i}"
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return path, fd
        except BlockingIOError:
            os.close(fd)
    raise RuntimeError(f"spool: no free file next to {base}")


def _write_sync(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _drop_torn_tail(fd: int) -> None:
    """A line without its newline was cut by a crash before it was acknowledged: drop it."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        i = os.pread(fd, pos - start, start).rfind(b"\n")
        if i >= 0:
            os.ftruncate(fd, start + i + 1)
            return
        pos = start
    os.ftruncate(fd, 0)


def _count_lines(fd: int) -> int:
    n, pos = 0, 0
    while chunk := os.pread(fd, _READ_CHUNK, pos):
        n += chunk.count(b"\n")
        pos += len(chunk)
    return n


def _read_lines(fd: int, pos: int, limit: int) -> tuple[list[bytes], int]:
    """Up to `limit` complete lines from byte `pos`; returns them and the position after them."""
    lines: list[bytes] = []
    buf = b""
    while len(lines) < limit:
        chunk = os.pread(fd, _READ_CHUNK, pos + len(buf))
        if not chunk:
            break
        buf += chunk
        parts = buf.split(b"\n")
        complete = parts[:-1][: limit - len(lines)]
        lines.extend(p for p in complete if p.strip())
        consumed = sum(len(p) + 1 for p in complete)
        pos += consumed
        buf = buf[consumed:]
    return lines, pos
