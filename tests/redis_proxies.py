"""TCP proxies between a service (the enforcer, a rater) and a real Redis, to cause faults on the
path: silence (FreezableProxy), replies held back (DelayingProxy), every chunk held back and then
the link cut (SlowProxy). They run on the test's event loop."""
from __future__ import annotations

import asyncio
import time


class RedisProxy:
    """Listens on a free loopback port; `_handle` (per subclass) serves each connection."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task] = set()

    async def start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _handle(self, reader, writer) -> None:
        raise NotImplementedError

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        self.server.close()
        for t in list(self.tasks):
            t.cancel()


class FreezableProxy(RedisProxy):
    """A proxy that can go silent: while frozen, nothing passes in either direction and
    connections are left hanging (a Redis that accepts and never answers). Connections that froze
    stay dead after a thaw: the enforcer has to notice and reconnect."""

    def __init__(self, upstream_port: int):
        super().__init__(upstream_port)
        self.frozen = False

    async def _handle(self, reader, writer) -> None:
        if self.frozen:
            self._spawn(self._swallow(reader))
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        dead = asyncio.Event()
        self._spawn(self._pipe(reader, up_writer, dead))
        self._spawn(self._pipe(up_reader, writer, dead))

    async def _pipe(self, reader, writer, dead: asyncio.Event) -> None:
        while data := await reader.read(65536):
            if self.frozen:
                dead.set()
            if dead.is_set():
                continue  # swallowed: this connection hangs for good
            writer.write(data)

    async def _swallow(self, reader) -> None:
        while await reader.read(65536):
            pass


class DelayingProxy(RedisProxy):
    """A proxy that passes commands at once and holds each reply for `delay` seconds (in order):
    Redis runs every script in time, but the enforcer hears about it late."""

    def __init__(self, upstream_port: int):
        super().__init__(upstream_port)
        self.delay = 0.0

    async def _handle(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        queue: asyncio.Queue = asyncio.Queue()
        self._spawn(self._commands(reader, up_writer))
        self._spawn(self._read_replies(up_reader, queue))
        self._spawn(self._write_replies(queue, writer))

    async def _commands(self, reader, writer) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    async def _read_replies(self, reader, queue) -> None:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + self.delay, data))
        queue.put_nowait((0, b""))

    async def _write_replies(self, queue, writer) -> None:
        while True:
            due, data = await queue.get()
            if not data:
                writer.close()
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)


class SlowProxy(RedisProxy):
    """Holds every chunk, both ways, `delay_s` before passing it on, and drops everything once
    `cut` is set (what was not passed on by then never arrives)."""

    def __init__(self, upstream_port: int, delay_s: float):
        super().__init__(upstream_port)
        self.delay_s = delay_s
        self.cut = False

    async def _handle(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._spawn(self._pipe(reader, up_writer))
        self._spawn(self._pipe(up_reader, writer))

    async def _pipe(self, reader, writer) -> None:
        while data := await reader.read(65536):
            await asyncio.sleep(self.delay_s)
            if self.cut:
                return
            writer.write(data)
