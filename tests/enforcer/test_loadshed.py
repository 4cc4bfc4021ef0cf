"""The load shedder judges saturation by the event loop's lag (on uvloop, as the server runs)."""
from __future__ import annotations

import asyncio
import time

import orjson
import uvloop

from enforcer.loadshed import LoadShedder
from tests.enforcer.test_failopen import metric
from tests.servers import run_enforcer
from tests.tenants import DECISION_ENV, check_body, provision


def test_a_standing_queue_sheds_and_a_drained_one_serves_again():
    async def go():
        shedder = LoadShedder(threshold=0.005, window=0.03, interval=0.002)
        monitor = asyncio.ensure_future(shedder.run())
        await asyncio.sleep(0.1)
        idle = shedder.overloaded
        loop, busy = asyncio.get_running_loop(), [True]

        def hog():  # every loop pass now takes 10 ms: callbacks wait, as under too much traffic
            time.sleep(0.01)
            if busy[0]:
                loop.call_soon(hog)
        loop.call_soon(hog)
        deadline = time.monotonic() + 5
        while not shedder.overloaded and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        saturated = shedder.overloaded
        busy[0] = False
        deadline = time.monotonic() + 5
        while shedder.overloaded and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        recovered = not shedder.overloaded
        monitor.cancel()
        return idle, saturated, recovered

    loop = uvloop.new_event_loop()
    try:
        idle, saturated, recovered = loop.run_until_complete(go())
    finally:
        loop.close()
    assert not idle and saturated and recovered


def test_a_single_stall_is_not_saturation():
    """One long pause (a collection, the OS running something else), even longer than the window,
    leaves no standing queue: nothing is shed."""
    async def go():
        shedder = LoadShedder(threshold=0.02, window=0.1, interval=0.005)
        monitor = asyncio.ensure_future(shedder.run())
        await asyncio.sleep(0.15)
        seen = []
        for _ in range(5):
            time.sleep(0.15)  # a stall of 7x the threshold and 1.5x the window, then the loop runs freely
            for _ in range(50):
                await asyncio.sleep(0.002)
                seen.append(shedder.overloaded)
        monitor.cancel()
        return seen

    loop = uvloop.new_event_loop()
    try:
        seen = loop.run_until_complete(go())
    finally:
        loop.close()
    assert not any(seen)


async def burst(port: int, bodies: list[dict], conns: int = 100) -> list[tuple[int, dict, dict]]:
    """All `bodies` as POST /v1/check at once over `conns` raw keep-alive connections (httpx's
    own pool is too slow to overload anything): (status, lower-case headers, JSON body) each."""
    async def one_conn(mine: list[dict]):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        out = []
        writer.write(b"".join(
            b"POST /v1/check HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(b), b) for b in map(orjson.dumps, mine)))  # pipelined: all of them now
        for _ in mine:
            head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in head[1:] if line)
            body = await reader.readexactly(int(headers["content-length"]))
            out.append((int(head[0].split()[1]), headers, orjson.loads(body)))
        writer.close()
        return out
    parts = await asyncio.gather(*(one_conn(bodies[i::conns]) for i in range(conns)))
    return [a for part in parts for a in part]


async def test_an_overloaded_enforcer_answers_503_and_places_nothing(redis_server, redis, http):
    """A burst far beyond what one event loop serves at once, with a shedding threshold of 1 ms:
    some checks are answered 503 `overloaded` (every gateway fails open on a 5xx) without touching
    Redis; the others are real decisions, and Redis holds exactly the holds the answers carried."""
    t = await provision(redis)
    env = {**DECISION_ENV, "TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_SHED_LAG_MS": "1",
           "TOLLGATE_SHED_WINDOW_MS": "10"}
    with run_enforcer(env) as enf:
        answers = []
        for _ in range(5):
            answers += await burst(enf.port, [check_body(t) for _ in range(1000)])
            if any(status == 503 for status, _, _ in answers):
                break
        shed = [(h, b) for status, h, b in answers if status == 503]
        assert shed, "nothing was shed"
        assert all(b["error"] == "overloaded" and h["x-tollgate-reason"] == "overloaded" for h, b in shed)
        served = [(status, b) for status, _, b in answers if status != 503]
        assert all(status == 200 and b["reason"] == "ok" for status, b in served)
        carried = {b["hold_id"] for _, b in served}
        assert {h.decode() for h in await redis.hkeys(t.keys.holds)} == carried
        text = (await http.get(f"{enf.url}/metrics")).text
        assert metric(text, "tollgate_shed_total") == len(shed)
