"""A/B of the enforcer's HTTP bounds (tollgate.http_bounds) on the hot path: is /v1/check slower?

    .venv/bin/python -m loadtest.bench_http_bounds [--blocks 10] [--rate 3000] [--rounds 6] [--duration 4] [--workers 1]

(1) In process, no network: the same /v1/check request fed to each protocol class (bounded and
uvicorn's HttpToolsProtocol) on a stub transport, with a trivial ASGI app answering, in
alternating blocks; CPU per request of the whole uvicorn request cycle. This is the cost the
bounds add, measured where the neighbours' load cannot hide it.
(2) Over HTTP: two enforcers run side by side on one Redis: A with the bounds (the default), B with uvicorn's own
httptools protocol (TOLLGATE_HTTP_BOUNDS=0). The same open-loop load (bench_check's generator:
fixed schedule, latency from the scheduled send) goes to one, then the other, in ABBA order each
round, so drift on a shared machine falls on both alike. Prints every step, then per variant the
median over rounds of p50/p99/p99.9 and of the enforcer's CPU per check (the figure least moved
by the neighbours' load).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from tollgate.http_bounds import BoundedHttpToolsProtocol
from loadtest.bench_check import OpenLoop, cpu_seconds, line, pct, provision
from tests.servers import EnforcerProcess
from tollgate.local_services import start_redis

VARIANTS = {"A bounded": {}, "B plain httptools": {"TOLLGATE_HTTP_BOUNDS": "0"}}


class StubTransport(asyncio.Transport):
    """Swallows the responses; enough of a transport for uvicorn's protocol."""

    def __init__(self):
        super().__init__()
        self.closing = False
        self.written = 0

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def write(self, data) -> None:
        self.written += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _answer(scope, receive, send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"decision":"ALLOW"}'})


REQUEST = (b"POST /v1/check HTTP/1.1\r\nHost: enforcer\r\nContent-Type: application/json\r\nContent-Length: 128\r\n\r\n"
           + b'{"api_key":"tg_bench_0001","request_id":"bench_1","dimensions":{"model":"m"},'
             b'"estimate":{"requests":1,"input_tokens":1500}}'.ljust(128))


async def protocol_cpu(cls, n: int) -> float:
    """CPU seconds per request of n keep-alive requests through one connection of `cls`."""
    config = Config(_answer, http=cls, lifespan="off", access_log=False, timeout_keep_alive=75)
    config.load()
    proto = cls(config=config, server_state=ServerState(), app_state={})
    transport = StubTransport()
    proto.connection_made(transport)
    t0 = time.process_time()
    for _ in range(n):
        proto.data_received(REQUEST)
        await asyncio.sleep(0)  # the request's task runs and answers
        await asyncio.sleep(0)
    cpu = time.process_time() - t0
    assert transport.written >= n, transport.written
    proto.connection_lost(None)
    return cpu / n


async def in_process(blocks: int, n: int) -> None:
    per: dict[str, list[float]] = {"A bounded": [], "B plain httptools": []}
    classes = {"A bounded": BoundedHttpToolsProtocol, "B plain httptools": HttpToolsProtocol}
    for name, cls in classes.items():
        await protocol_cpu(cls, 2000)  # warm-up
    for b in range(blocks):
        for name in (list(classes) if b % 2 == 0 else list(classes)[::-1]):
            per[name].append(await protocol_cpu(classes[name], n))
    print(f"# (1) in process: {blocks} blocks x {n:,} requests per class, alternating", flush=True)
    for name, xs in per.items():
        print(f"#   {name:<20} median {statistics.median(xs) * 1e6:.2f} us/request  "
              f"(min {min(xs) * 1e6:.2f}, max {max(xs) * 1e6:.2f})", flush=True)
    a, b = (statistics.median(x) for x in per.values())
    print(f"#   difference A - B: {(a - b) * 1e6:+.2f} us/request ({(a - b) / b:+.1%})", flush=True)


async def step(gen: OpenLoop, enf: EnforcerProcess, rate: int, seconds: float) -> dict:
    cpu0 = cpu_seconds(enf.proc.pid)
    sent, elapsed = await gen.run(rate, seconds)
    cpu = cpu_seconds(enf.proc.pid) - cpu0
    lat = sorted(gen.lat)
    got = max(len(lat), 1)
    return {"lat": lat, "achieved": len(lat) / elapsed, "lost": sent - len(lat), "errors": gen.errors,
            "fail_open": gen.degraded / got, "cpu_us": cpu / got * 1e6,
            "p50": pct(lat, 50), "p99": pct(lat, 99), "p999": pct(lat, 99.9)}


async def main_async(args) -> None:
    if args.blocks:
        await in_process(args.blocks, args.block_requests)
    if args.rounds == 0:
        return
    redis = start_redis()
    procs: dict[str, EnforcerProcess] = {}
    try:
        tenants = await provision(redis.url, args.customers)
        base = {"TOLLGATE_REDIS_URL": redis.url, "TOLLGATE_CHECK_DEADLINE_MS": str(args.deadline_ms),
                "TOLLGATE_STREAM_MAXLEN": "200000", "TOLLGATE_BUS": "redis"}
        for name, env in VARIANTS.items():
            procs[name] = EnforcerProcess({**base, **env}, workers=args.workers).start()
        gens = {name: OpenLoop("127.0.0.1", p.port, tenants, args.max_conns) for name, p in procs.items()}
        for g in gens.values():
            await g.run(500, 1.0)  # warm-up: connections, key and plan caches
        print(f"# (2) HTTP, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f}), workers={args.workers}, "
              f"{args.rate:,}/s offered, {args.duration:.0f} s per step, {args.rounds} rounds ABBA", flush=True)
        results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        names = list(VARIANTS)
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                res = await step(gens[name], procs[name], args.rate, args.duration)
                results[name].append(res)
                extra = f"fail-open {res['fail_open']:.2%}  enforcer CPU {res['cpu_us']:.0f} us/check"
                if res["lost"] or res["errors"]:
                    extra += f"  lost {res['lost']} err {res['errors']}"
                print(line(f"round {r + 1} {name}", res["achieved"], res["lat"], extra), flush=True)
                await asyncio.sleep(0.3)
        print("# medians over rounds:")
        for name, rs in results.items():
            med = {k: statistics.median(x[k] for x in rs) for k in ("p50", "p99", "p999", "cpu_us")}
            print(f"#   {name:<20} p50 {med['p50'] * 1000:.2f} ms  p99 {med['p99'] * 1000:.2f} ms  "
                  f"p99.9 {med['p999'] * 1000:.2f} ms  enforcer CPU {med['cpu_us']:.1f} us/check", flush=True)
    finally:
        for p in procs.values():
            p.cleanup()
        redis.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=6, help="(2): ABBA rounds; 0 skips (2)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per step")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--deadline-ms", type=float, default=10.0)
    p.add_argument("--customers", type=int, default=100)
    p.add_argument("--max-conns", type=int, default=256)
    p.add_argument("--blocks", type=int, default=10, help="(1): alternating blocks per class; 0 skips (1)")
    p.add_argument("--block-requests", type=int, default=20000, help="(1): requests per block")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    uvloop.run(main_async(args))
    print(f"# {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
