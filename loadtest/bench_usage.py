"""Benchmark of /v1/usage with the write-ahead spool: latency of a durable 202, open loop.

    .venv/bin/python -m loadtest.bench_usage [--rates 1000] [--duration 10] [--workers 1] [--consumer ack|none]

A real enforcer process on a Redis of its own (the embedded bus), sent usage reports on a fixed
schedule whatever the answers do; latency is timed from the *scheduled* send (loadtest.bench_check's
OpenLoop: no coordinated omission). Every 202 waited for the spool's fsync (a group commit shared
by the requests waiting) and for the bus's acknowledgement. `--consumer ack` (default) runs a
consumer group that reads and acknowledges the stream as the rater would, so the spool is trimmed
as in steady operation; `none` leaves everything unconsumed (the spool only grows).
Prints p50/p99/p99.9 per offered rate, the 202s answered `spooled` (should be 0: the bus is up),
and what the spool holds at the end; first, the floor of the same run: a 300-byte write + fsync
on the spool's disk, one after another (a 202 cannot be faster than one of those). Target: p99 < 5 ms at 1,000 events/s.
Everything runs on this machine (Redis, enforcer, generator, consumer): on a busy box the tail
is the box's, so compare runs made together.
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import os
import time

import httpx
import uvloop

from loadtest.bench_check import OpenLoop, cpu_seconds, line, pct, provision
from tests.servers import EnforcerProcess
from tollgate.keys import EVENTS_STREAM
from tollgate.local_services import start_redis
from tollgate.redis_client import connect

P99_TARGET = 0.005


class UsageLoop(OpenLoop):
    """OpenLoop sending POST /v1/usage, one fresh event id per request."""

    def request(self) -> bytes:
        self.n += 1
        body = (b'{"event_id":"bench_%d_%d","api_key":"%s","correlation_id":"req_%d",'
                b'"properties":{"model":"m"},"measurements":[{"metric":"input_tokens","value":1500},'
                b'{"metric":"output_tokens","value":800}]}'
                % (os.getpid(), self.n, self.keys[self.n % len(self.keys)].encode(), self.n))
        return (b"POST /v1/usage HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


async def consume(url: str, stop: asyncio.Event) -> int:
    """A consumer group that reads and acknowledges everything (the rater's part on the bus)."""
    r = connect(url)
    try:
        try:
            await r.xgroup_create(EVENTS_STREAM, "rater", id="0", mkstream=True)
        except Exception:  # noqa: BLE001  (BUSYGROUP: it exists)
            pass
        n = 0
        while not stop.is_set():
            got = await r.xreadgroup("rater", "bench", {EVENTS_STREAM: ">"}, count=2000, block=100)
            for _, entries in got or ():
                if entries:
                    await r.xack(EVENTS_STREAM, "rater", *[i for i, _ in entries])
                    await r.xtrim(EVENTS_STREAM, minid=entries[-1][0], approximate=True)
                    n += len(entries)
        return n
    finally:
        await r.aclose()


def fsync_floor(directory: str, n: int = 1000) -> list[float]:
    """Latency of write + fsync of one event-sized line, n times, on the disk of the spool."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    lat = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, b"x" * 299 + b"\n")
            os.fsync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    return lat


def spool_files(enf: EnforcerProcess) -> tuple[int, int]:
    paths = glob.glob(enf.spool_path + "*.wal.*")
    return len(paths), sum(os.path.getsize(p) for p in paths)


async def main_async(args) -> None:
    redis = start_redis()
    stop = asyncio.Event()
    consumer = asyncio.create_task(consume(redis.url, stop)) if args.consumer == "ack" else None
    try:
        tenants = await provision(redis.url, args.customers)
        enf = EnforcerProcess({"TOLLGATE_REDIS_URL": redis.url, "TOLLGATE_BUS": "redis"}, workers=args.workers).start()
        try:
            print(f"# {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f}), enforcer workers={args.workers}, "
                  f"{args.duration:.0f} s per step, consumer={args.consumer}, spool {enf.spool_path}", flush=True)
            floor = fsync_floor(os.path.dirname(enf.spool_path))
            print(line("floor: write + fsync, serial", len(floor) / sum(floor), floor), flush=True)
            gen = UsageLoop("127.0.0.1", enf.port, tenants, args.max_conns)
            await gen.run(200, 1.0)  # warm-up: connections, key cache
            for rate in args.rates:
                cpu0 = cpu_seconds(enf.proc.pid), cpu_seconds(redis.proc.pid)
                sent, elapsed = await gen.run(rate, args.duration)
                cpu1 = cpu_seconds(enf.proc.pid), cpu_seconds(redis.proc.pid)
                lat = gen.lat
                got = len(lat)
                lat.sort()
                accepted = gen.status.get(202, 0)
                ok = accepted == sent and pct(lat, 99) < P99_TARGET and not gen.degraded
                us = [(b - a) / max(got, 1) * 1e6 for a, b in zip(cpu0, cpu1)]
                extra = (f"offered {rate:,}/s  202 {accepted}/{sent}  spooled {gen.degraded}  "
                         f"{'OK' if ok else 'MISS'}  CPU/event: enforcer {us[0]:.0f} us, redis {us[1]:.0f} us")
                if gen.errors or got < sent:
                    extra += f"  lost {sent - got} err {gen.errors}"
                print(line(f"HTTP /v1/usage @ {rate:,}/s", got / elapsed, lat, extra), flush=True)
                await asyncio.sleep(0.5)
            await asyncio.sleep(2.0)  # a confirmation round or two
            depth = httpx.get(f"{enf.url}/readyz").json().get("spool_depth")
            files, size = spool_files(enf)
            print(f"# spool at the end: {files} segment files, {size:,} bytes, {depth} events not yet on the bus", flush=True)
        finally:
            enf.cleanup()
    finally:
        stop.set()
        if consumer:
            print(f"# consumer acknowledged {await consumer:,} events")
        redis.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="1000", help="offered events/s, comma-separated (default 1000)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--customers", type=int, default=100)
    p.add_argument("--max-conns", type=int, default=256)
    p.add_argument("--consumer", choices=("ack", "none"), default="ack")
    args = p.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",")]
    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
