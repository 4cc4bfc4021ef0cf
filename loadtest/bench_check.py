"""Benchmark of the hot path: the raw Redis ceiling, a do-nothing floor, and /v1/check over HTTP.

    .venv/bin/python -m loadtest.bench_check --workers 1 --rates 1000,3000,5000,7000,9000 --duration 5

(a) raw ceiling: check.lua by EVALSHA straight from Python on the same Redis, at saturation
    (redis-py with 50 concurrent callers, and the enforcer's own pipelined connection).
(b) /v1/check through HTTP on a real enforcer process, open loop: requests are sent on a fixed
    schedule whatever the answers do, and latency is timed from the *scheduled* send (or from
    the actual send when the generator's 1 ms tick sent it early), so a stall shows up as latency
    instead of hiding as a lower rate (no coordinated omission). Per offered rate: p50/p99/p99.9,
    fail-open % by cause (the enforcer's own counters, read from /metrics around the step), 503s
    shed as overloaded, late ALLOW replies undone, and orphaned holds: holds in Redis whose id no
    ALLOW answer carried, counted once the step has settled (1 s, the promise's bound).
(f) the floor, in the same run: a do-nothing ASGI app on the same server stack (uvicorn, uvloop,
    httptools) at the same rates and duration. The box is shared and noisy; (b) against (f) of the
    same run says what the enforcer adds, whatever the box did.
A step is OK when it achieved >= 97% of the offered rate, its p99 meets the target for that rate
(2.5 ms up to 3,000/s, 4 ms up to 5,000/s, else 5 ms), deadline fail-opens are <= 0.01 % and no
hold is orphaned. Everything runs on this machine (Redis, enforcer, load generator), so the
generator's own CPU is part of the picture: on 2 cores it competes with the enforcer.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections import deque
from pathlib import Path

import re
import subprocess

import httpx
import redis.asyncio as aioredis
import uvloop

import lua
from enforcer.keycache import KeyInfo
from enforcer.rediswire import RedisWire
from control.projection.writes import project_api_key, project_customer, project_plan, set_wallet
from tests.servers import ROOT, EnforcerProcess, stop_process
from tollgate.keys import CustomerKeys, api_key_hash
from tollgate.local_services import free_port, start_redis
from tollgate.periods import period_of
from tollgate.plans import parse_plan
from tollgate.redis_client import connect

PLAN = {
    "id": "bench", "billing_mode": "prepaid",
    "limits": {"requests_per_minute": 1_000_000_000, "tokens_per_minute": 1_000_000_000_000},
    "charges": [{"model": "per_unit", "metric": "input_tokens", "unit_price": "0.000003"},
                {"model": "per_unit", "metric": "output_tokens", "unit_price": "0.000015"}],
}
P99_TARGETS = ((3000, 0.0025), (5000, 0.004), (float("inf"), 0.005))  # (up to this rate, p99 target)
DEADLINE_FO_TARGET = 0.0001  # deadline fail-opens with Redis healthy: at most 0.01 %
TRACEPARENT = b""  # set by --traceparent
SETTLE_S = 1.0  # a hold no answer carried must be gone within this


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (uvicorn workers), from /proc."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(f[1]) == pid:
            total += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return total


def pct(sorted_xs: list[float], p: float) -> float:
    if not sorted_xs:
        return float("nan")
    return sorted_xs[min(len(sorted_xs) - 1, int(p / 100 * len(sorted_xs)))]


def line(name: str, rate: float, lat: list[float], extra: str = "") -> str:
    lat.sort()
    ms = [pct(lat, p) * 1000 for p in (50, 99, 99.9)]
    return f"{name:<34} {rate:>9,.0f}/s  p50 {ms[0]:6.2f} ms  p99 {ms[1]:6.2f} ms  p99.9 {ms[2]:6.2f} ms  {extra}"


async def provision(url: str, customers: int) -> list[tuple[str, str, str]]:
    r = connect(url)
    plan = parse_plan(PLAN)
    await project_plan(r, plan)
    tenants = []
    for i in range(customers):
        cid, kid, key = f"cust_b{i}", f"key_b{i}", f"tg_bench_{i:04d}"
        await project_customer(r, cid, plan, "prepaid", "default")
        await project_api_key(r, api_key_hash(key), kid, cid, plan.id, "active")
        await set_wallet(r, cid, 10**15)
        tenants.append((cid, kid, key))
    await r.aclose()
    return tenants


def script_args(tenants, n: int, prefix: str):
    """EVALSHA keys/argv as the enforcer builds them (request ids unique per call)."""
    cid, kid, _ = tenants[n % len(tenants)]
    info = KeyInfo("", cid, kid, None, "", False, 0.0)  # a key without an app, as every bench tenant's
    keys = info.check_keys(period_of(time.time()), f"{prefix}{n}")
    return keys, (f"hold_{prefix}{n}", 1, 2300, 16500, 300_000, 900_000, kid, "", "", *info.path_argv)


# --------------------------------------------------------------------------- (a) raw ceiling


async def _closed_loop(call, seconds: float, concurrency: int) -> tuple[float, list[float]]:
    """`concurrency` callers each awaiting call(i) back to back for `seconds` (i counts calls):
    calls/s and each call's latency."""
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def worker():
        while time.perf_counter() < stop:
            i = next(counter)
            t = time.perf_counter()
            await call(i)
            lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(lat) / (time.perf_counter() - start), lat


async def raw_redis_py(url: str, tenants, seconds: float, concurrency: int = 50) -> tuple[float, list[float]]:
    script = lua.load("check")
    r = aioredis.Redis.from_url(url, max_connections=concurrency)
    await r.script_load(script.source)

    async def call(i: int) -> None:
        keys, argv = script_args(tenants, i, "rp")
        await r.evalsha(script.sha, len(keys), *keys, *argv)

    try:
        return await _closed_loop(call, seconds, concurrency)
    finally:
        await r.aclose()


async def raw_wire(url: str, tenants, seconds: float, concurrency: int = 200) -> tuple[float, list[float]]:
    script = lua.load("check")
    wire = RedisWire(url, prelude=(("SCRIPT", "LOAD", script.source),))
    await wire.call(("PING",), 1.0)

    async def call(i: int) -> None:
        keys, argv = script_args(tenants, i, "rw")
        reply = await wire.call(("EVALSHA", script.sha, len(keys), *keys, *argv), 1.0)
        assert isinstance(reply, list), reply

    try:
        return await _closed_loop(call, seconds, concurrency)
    finally:
        wire.close()


# --------------------------------------------------------------------------- (b) open-loop HTTP


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, gen: "OpenLoop"):
        self.gen = gen
        self.transport = None
        self.buf = b""
        self.due = 0.0

    def connection_made(self, transport):
        self.transport = transport

    def send(self, request: bytes, due: float) -> None:
        self.due = due
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end + 2]  # every header line with its CRLF
        i = head.find(b"content-length: ")
        length = int(head[i + 16:head.index(b"\r\n", i)]) if i >= 0 else 0
        if len(self.buf) < end + 4 + length:
            return
        self.buf = self.buf[end + 4 + length:]
        i = head.find(b"x-tollgate-hold-id: ")
        hold = head[i + 20:head.index(b"\r\n", i)] if i >= 0 else None
        self.gen.done(self, int(head[9:12]), b"x-tollgate-degraded" in head, hold)

    def connection_lost(self, exc):
        self.gen.lost(self)


class OpenLoop:
    conn_class = Conn  # the protocol of each connection (bench_kong_modes reads nginx's replies)

    def __init__(self, host: str, port: int, tenants, max_conns: int):
        self.host, self.port = host, port
        self.keys = [t[2] for t in tenants]
        self.max_conns = max_conns
        self.idle: list[Conn] = []
        self.opening = 0
        self.conns = 0
        self.waiting: deque[tuple[bytes, float]] = deque()
        self.loop = asyncio.get_running_loop()
        self.n = 0
        self.holds: set[bytes] = set()  # every hold id an answer carried, whole run
        self.traceparent = TRACEPARENT  # --traceparent: a gateway's W3C header, a trace per request
        self.reset()

    def reset(self) -> None:
        self.lat: list[float] = []
        self.status: dict[int, int] = {}
        self.degraded = 0
        self.errors = 0

    def request(self) -> bytes:
        self.n += 1
        body = (b'{"api_key":"%s","request_id":"bench_%d","dimensions":{"model":"m"},'
                b'"estimate":{"requests":1,"input_tokens":1500,"output_tokens":800}}'
                % (self.keys[self.n % len(self.keys)].encode(), self.n))
        trace = self.traceparent % (self.n, self.n) if self.traceparent else b""
        return (b"POST /v1/check HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n%s"
                b"Content-Length: %d\r\n\r\n%s" % (trace, len(body), body))

    def dispatch(self, due: float) -> None:
        req = self.request()
        start = max(due, time.perf_counter())  # sent a little early on a tick: time from the send
        if self.idle:
            self.idle.pop().send(req, start)
            return
        self.waiting.append((req, start))  # waiting for a connection counts as latency
        if self.conns + self.opening < self.max_conns:
            self.opening += 1
            self.loop.create_task(self.open())

    async def open(self) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: self.conn_class(self), self.host, self.port)
        except OSError:
            self.errors += 1
            return
        finally:
            self.opening -= 1
        self.conns += 1
        self.release(conn)

    def release(self, conn: Conn) -> None:
        if self.waiting:
            req, due = self.waiting.popleft()
            conn.send(req, due)
        else:
            self.idle.append(conn)

    def done(self, conn: Conn, status: int, degraded: bool, hold: bytes | None) -> None:
        self.lat.append(time.perf_counter() - conn.due)
        self.status[status] = self.status.get(status, 0) + 1
        self.degraded += degraded
        if hold:
            self.holds.add(hold)
        self.release(conn)

    def lost(self, conn: Conn) -> None:
        self.conns -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        else:
            self.errors += 1

    async def run(self, rate: float, seconds: float) -> tuple[int, float]:
        """Send `rate`/s for `seconds` on schedule; wait for the answers; returns (sent, elapsed)."""
        self.reset()
        interval = 1.0 / rate
        total = int(rate * seconds)
        clock = time.perf_counter  # uvloop's loop.time() has millisecond resolution
        start = clock() + 0.01
        i = 0
        while i < total:
            # Timers tick in whole milliseconds (a shorter sleep would spin and eat a core the
            # enforcer needs): each tick sends what is due within half a tick.
            horizon = clock() + 0.0005
            while i < total and start + i * interval <= horizon:
                self.dispatch(start + i * interval)
                i += 1
            await asyncio.sleep(0.001)
        give_up = clock() + 10
        while len(self.lat) < total and clock() < give_up:
            await asyncio.sleep(0.001)
        return total, clock() - start


def p99_target(rate: int) -> float:
    return next(target for upto, target in P99_TARGETS if rate <= upto)


_METRIC = re.compile(r'^(tollgate_fail_open_total|tollgate_shed_total|tollgate_late_allows_total|tollgate_lost_checks_total|'
                     r'tollgate_holds_undone_total)(?:{cause="([^"]*)"})? (\S+)$', re.M)


async def counters(url: str) -> dict[str, float]:
    """The enforcer's fail-open (by cause), shed and undo counters, summed over its workers."""
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"{url}/metrics", timeout=5)).text
    out: dict[str, float] = {}
    for name, cause, value in _METRIC.findall(text):
        key = f"fo:{cause}" if cause else name.removeprefix("tollgate_").removesuffix("_total")
        out[key] = out.get(key, 0.0) + float(value)
    return out


async def all_holds(r: aioredis.Redis, tenants) -> set[bytes]:
    pipe = r.pipeline(transaction=False)
    for cid, _, _ in tenants:
        pipe.hkeys(CustomerKeys(cid).holds)
    return {h for ids in await pipe.execute() for h in ids}


async def http_steps(url: str, port: int, pid: int, redis_pid: int | None, tenants, rates: list[int], seconds: float,
                     max_conns: int, redis_url: str | None, name: str) -> list[dict]:
    """One open-loop step per rate against `port`; for the enforcer (redis_url given) also its
    counters and the orphaned holds."""
    gen = OpenLoop("127.0.0.1", port, tenants, max_conns)
    r = aioredis.Redis.from_url(redis_url) if redis_url else None
    await gen.run(500, 1.0)  # warm-up: connections, key cache, plan cache
    baseline = await all_holds(r, tenants) - gen.holds if r else set()  # the raw phase's
    results = []
    for rate in rates:
        before = await counters(url) if r else {}
        cpu0 = cpu_seconds(pid), cpu_seconds(redis_pid) if redis_pid else 0.0, time.process_time()
        sent, elapsed = await gen.run(rate, seconds)
        cpu1 = cpu_seconds(pid), cpu_seconds(redis_pid) if redis_pid else 0.0, time.process_time()
        lat = gen.lat
        got = len(lat)
        achieved = got / elapsed
        lat.sort()
        p99 = pct(lat, 99)
        us = [(b - a) / max(got, 1) * 1e6 for a, b in zip(cpu0, cpu1)]
        res = {"rate": rate, "achieved": achieved, "p99": p99}
        extra = f"offered {rate:>6,}/s"
        if r:
            await asyncio.sleep(SETTLE_S)
            after = await counters(url)
            diff = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
            causes = {k[3:]: v for k, v in diff.items() if k.startswith("fo:") and v}
            orphans = len(await all_holds(r, tenants) - gen.holds - baseline)
            fo = gen.degraded / max(got, 1)
            deadline_fo = causes.get("deadline", 0.0) / max(got, 1)
            shed = gen.status.get(503, 0) / max(got, 1)
            ok = (got >= 0.97 * sent and p99 <= p99_target(rate) and deadline_fo <= DEADLINE_FO_TARGET
                  and orphans == 0 and not gen.errors and not shed)
            by_cause = ", ".join(f"{c} {v / max(got, 1):.3%}" for c, v in sorted(causes.items())) or "-"
            extra += (f"  fail-open {fo:.3%} ({by_cause})  shed {shed:.2%}  orphaned holds {orphans}"
                      f"  late ALLOWs undone {diff.get('holds_undone', 0):.0f}/{diff.get('late_allows', 0):.0f}"
                      f"  {'OK' if ok else 'MISS'}")
            res.update(ok=ok, orphans=orphans, deadline_fo=deadline_fo, shed=shed)
        extra += f"  CPU/check: server {us[0]:.0f} us, redis {us[1]:.0f} us, generator {us[2]:.0f} us"
        if gen.errors or got < sent:
            extra += f"  lost {sent - got} err {gen.errors}"
        print(line(f"{name} @ {rate:,}/s", achieved, lat, extra), flush=True)
        results.append(res)
        await asyncio.sleep(0.5)
    if r:
        await r.aclose()
    return results


# --------------------------------------------------------------------------- (f) the floor


async def floor_app(scope, receive, send) -> None:
    """Reads the request, answers a JSON body of the enforcer's size: the HTTP stack alone."""
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    body = b'{"decision":"ALLOW","reason":"ok","hold_id":"hold_0123456789abcdef01","retry_after_ms":0}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def start_floor(workers: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "loadtest.bench_check:floor_app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
         "--log-level", "warning", "--backlog", "4096"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            stop_process(proc, 5)
            raise RuntimeError("the floor app did not start")
        time.sleep(0.05)


async def main_async(args) -> None:
    own_redis = None if args.redis_url else start_redis()
    url = args.redis_url or own_redis.url
    try:
        tenants = await provision(url, args.customers)
        print(f"# {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f}), enforcer workers={args.workers}, "
              f"deadline {args.deadline_ms} ms, {args.duration:.0f} s per step, {len(tenants)} customers", flush=True)
        rp_rate, rp_lat = await raw_redis_py(url, tenants, args.duration)
        print(line("(a) raw EVALSHA redis-py x50", rp_rate, rp_lat), flush=True)
        rw_rate, rw_lat = await raw_wire(url, tenants, args.duration)
        print(line("(a) raw EVALSHA pipelined x200", rw_rate, rw_lat), flush=True)
        ceiling = max(rp_rate, rw_rate)

        env = {"TOLLGATE_REDIS_URL": url, "TOLLGATE_CHECK_DEADLINE_MS": str(args.deadline_ms),
               "TOLLGATE_STREAM_MAXLEN": "200000", "TOLLGATE_BUS": "redis"}
        env.update(kv.split("=", 1) for kv in args.env)
        enf = EnforcerProcess(env, workers=args.workers).start()
        try:
            results = await http_steps(enf.url, enf.port, enf.proc.pid, own_redis.proc.pid if own_redis else None,
                                       tenants, args.rates, args.duration, args.max_conns, url, "(b) HTTP /v1/check")
        finally:
            enf.cleanup()
        if args.floor:
            proc, port = start_floor(args.workers)
            try:
                floor = await http_steps(f"http://127.0.0.1:{port}", port, proc.pid, None, tenants, args.rates,
                                         args.duration, args.max_conns, None, "(f) floor: do-nothing ASGI")
            finally:
                stop_process(proc, 5)
            print("# same-run comparison, p99 (ms): " + "  ".join(
                f"{b['rate']:,}/s enforcer {b['p99'] * 1000:.2f} floor {f['p99'] * 1000:.2f} (+{(b['p99'] - f['p99']) * 1000:.2f})"
                for b, f in zip(results, floor)))
        sustained = [x["achieved"] for x in results if x["ok"]]
        best = max(sustained, default=0.0)
        for rate, _ in P99_TARGETS[:2]:
            step = next((x for x in results if x["rate"] == rate), None)
            verdict = "not measured" if step is None else "yes" if step["p99"] <= p99_target(rate) else "no"
            print(f"# p99 <= {p99_target(rate) * 1000:g} ms at {rate:,}/s: {verdict}")
        print(f"# orphaned holds, all steps: {sum(x['orphans'] for x in results)}")
        print(f"# highest OK step (p99 target, >= 97% of offered, deadline fail-open <= 0.01%, no orphan, no shed): {best:,.0f}/s")
        print(f"# ratio (b)/(a): {best / ceiling:.2f} of the raw ceiling {ceiling:,.0f}/s")
    finally:
        if own_redis:
            own_redis.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rates", default="1000,3000,5000,7000,9000")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per step")
    p.add_argument("--deadline-ms", type=float, default=10.0)
    p.add_argument("--customers", type=int, default=100)
    p.add_argument("--max-conns", type=int, default=256)
    p.add_argument("--redis-url", help="use this Redis instead of starting one (it gets bench keys)")
    p.add_argument("--no-floor", dest="floor", action="store_false", help="skip the do-nothing floor (f)")
    p.add_argument("--traceparent", nargs="?", const="01", choices=("01", "00"),
                   help="send a W3C traceparent header with each check (as a traced gateway does), its flags "
                        "01 (sampled, the default) or 00 (not sampled)")
    p.add_argument("--env", action="append", default=[], metavar="TOLLGATE_X=V", help="extra enforcer setting")
    args = p.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",")]
    if args.traceparent:
        global TRACEPARENT
        TRACEPARENT = b"traceparent: 00-%032x-%016x-" + args.traceparent.encode() + b"\r\n"
    gc.freeze()
    uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
