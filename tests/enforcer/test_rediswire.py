"""The hot path's pipelined Redis connection, on uvloop (what the server runs) against real Redis."""
from __future__ import annotations

import asyncio
import socket
import time

import uvloop

from enforcer.rediswire import CONNECT, DEADLINE, DISCONNECTED, SLOW, RedisWire, ReplyError
from tollgate.local_services import free_port


def run(coro):
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_replies_come_back_in_order_and_errors_are_values(redis_server):
    async def go():
        wire = RedisWire(redis_server.url)
        key = f"wire:{time.time_ns()}"
        calls = [wire.call(("INCR", key), 1.0) for _ in range(500)]  # one event-loop pass: one write
        bad = wire.call(("HGET", key, "x"), 1.0)  # WRONGTYPE: a reply, not an exception
        got = await asyncio.gather(*calls, bad)
        wire.close()
        return got
    got = run(go())
    assert got[:-1] == list(range(1, 501))
    assert type(got[-1]) is ReplyError and str(got[-1]).startswith("WRONGTYPE")


def test_refused_connection_fails_at_once():
    async def go():
        wire = RedisWire(f"redis://127.0.0.1:{free_port()}/0")
        start = time.perf_counter()
        reply = await wire.call(("PING",), 2.0)
        return reply, time.perf_counter() - start
    reply, elapsed = run(go())
    assert reply is CONNECT and elapsed < 1.0


def test_silent_server_misses_the_deadline_then_the_connection_is_dropped(black_hole):
    async def go():
        wire = RedisWire(black_hole.url, hang_timeout=0.2)
        start = time.perf_counter()
        first = await wire.call(("PING",), 0.003)
        took = time.perf_counter() - start
        assert wire.connected
        await asyncio.sleep(0.25)
        late = await wire.call(("PING",), 0.003)  # its deadline finds the oldest call 250 ms old
        dropped = not wire.connected
        wire.close()
        return first, took, late, dropped
    first, took, late, dropped = run(go())
    assert first is DEADLINE and took < 0.003 + 0.15
    assert late in (DEADLINE, DISCONNECTED) and dropped


def test_a_stalled_loop_still_takes_a_reply_that_arrived_in_time(redis_server):
    """The process, not Redis, was late: after a stall uvloop runs due timers before it reads
    the sockets, so the deadline must look at the socket once more before failing open."""
    async def go():
        loop = asyncio.get_running_loop()
        wire = RedisWire(redis_server.url)
        await wire.call(("PING",), 1.0)  # connected
        a, b = socket.socketpair()
        loop.add_reader(a, lambda: (a.recv(1), time.sleep(0.05)))  # an I/O callback that hogs the CPU
        fut = wire.call(("PING",), 0.003)
        loop.call_soon(b.send, b"x")  # after the PING is written: the stall starts in the poll phase
        reply = await fut
        loop.remove_reader(a)
        a.close(), b.close()
        wire.close()
        return reply
    assert run(go()) == "PONG"


def test_a_command_our_busy_loop_wrote_late_is_not_failed_by_its_deadline(redis_server):
    """The deadline counts from the write, not from the call: our own loop being busy between the
    two (CPU, a long callback) is not Redis being silent."""
    async def go():
        loop = asyncio.get_running_loop()
        wire = RedisWire(redis_server.url)
        await wire.call(("PING",), 1.0)  # connected
        loop.call_soon(time.sleep, 0.02)  # runs before the flush this call schedules
        return await wire.call(("PING",), 0.003), wire
    reply, wire = run(go())
    assert reply == "PONG"


class TrickleProxy:
    """Passes commands to Redis at once and its replies back one byte per millisecond: Redis is
    answering all the time, but a reply behind a long one takes a while."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port

    async def start(self) -> "TrickleProxy":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"
        self.tasks = []
        return self

    async def _handle(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def commands():
            while data := await reader.read(65536):
                up_writer.write(data)

        async def replies():
            while data := await up_reader.read(65536):
                for i in range(len(data)):
                    writer.write(data[i:i + 1])
                    await asyncio.sleep(0.001)
        self.tasks += [asyncio.ensure_future(commands()), asyncio.ensure_future(replies())]

    def close(self) -> None:
        self.server.close()
        for t in self.tasks:
            t.cancel()


def test_while_redis_answers_a_call_waits_up_to_its_cap_then_fails_slow(redis_server):
    async def go():
        proxy = await TrickleProxy(redis_server.port).start()
        wire = RedisWire(proxy.url, max_wait=0.05)
        key = f"wire:{time.time_ns()}"
        assert await wire.call(("SET", key, "x" * 300), 1.0) == "OK"
        long = wire.call(("GET", key), 2.0)  # ~300 ms of bytes to come
        behind = await wire.call(("PING",), 0.003)  # silent for 3 ms? never: bytes keep coming
        value = await long
        wire.close()
        proxy.close()
        return behind, value
    behind, value = run(go())
    assert behind is SLOW
    assert value == "x" * 300
