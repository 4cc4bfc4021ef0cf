"""Benchmark: checks/s on one Redis, on a Redis Cluster of 1 master and of 3 masters.

    .venv/bin/python -m loadtest.bench_cluster [--rounds 3] [--duration 4] [--workers 2] [--rate 20000]

For each topology (a plain Redis, the enforcer on RedisWire; a 1-master cluster and a 3-master
cluster, the enforcer on ClusterWire with TOLLGATE_REDIS_CLUSTER=1):
(a) the Redis side: check.lua by EVALSHA through the enforcer's own wire (RedisWire or
    ClusterWire), 200 callers back to back, for --duration seconds: the most checks/s the
    topology gives one Python process, and its CPU per check; on the 1-master cluster also
    through a RedisWire on the node itself, which singles out ClusterWire's own cost;
(b) /v1/check over HTTP on a real enforcer process: requests offered at --rate/s (more than it
    can take), on --max-conns keep-alive connections, for --duration seconds; what counts is the
    rate of real decisions (answers not degraded to fail-open; the deadline is --deadline-ms, set
    generous so that a fail-open means Redis failed, not that the box was busy).
The topologies are measured in turn, --rounds times (A B C A B C ...), and each figure is the
median of its rounds with the lowest and highest beside it: the box is shared, and interleaving
spreads any slow stretch over all three instead of loading it onto one.

Everything runs on this machine: with 2 cores, three masters compete with the enforcer and the
generator for the same CPU, so (b) shows what cluster routing costs the enforcer, not what three
machines would give; (a) shows how the Redis side spreads. The cluster has no replicas here
(--replicas to add them): replication is the price of failover, measured apart.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time

import uvloop

import lua
from enforcer.clusterwire import ClusterWire
from enforcer.rediswire import RedisWire
from loadtest.bench_check import OpenLoop, _closed_loop, cpu_seconds, provision, script_args
from tests.servers import EnforcerProcess
from tollgate.local_services import start_cluster, start_redis


class Topology:
    def __init__(self, name: str, cluster: bool, server):
        self.name, self.cluster, self.server = name, cluster, server
        self.enforcer: EnforcerProcess | None = None
        self.raw: list[float] = []
        self.raw_cpu: list[float] = []  # the caller's CPU µs per check through the wire
        self.http: list[float] = []
        self.fail_open: list[float] = []
        self.cpu: list[float] = []  # enforcer CPU µs per check

    @property
    def url(self) -> str:
        return self.server.url

    def pids(self) -> list[int]:
        if self.cluster:
            return [n.proc.pid for n in self.server.nodes]
        return [self.server.proc.pid]

    def stop(self) -> None:
        if self.enforcer:
            self.enforcer.cleanup()
        self.server.stop()


async def raw_checks(t: Topology, tenants, seconds: float, concurrency: int = 200, plain: bool = False) -> tuple[float, float]:
    """(checks/s, this process's CPU µs per check: the wire's own cost, steadier than a rate on a busy box).
    `plain`: a 1-master cluster's node through RedisWire, to single out ClusterWire's own cost."""
    script = lua.load("check")
    if plain:
        wire = RedisWire(f"redis://{t.server.nodes[0].addr}/0", prelude=(("SCRIPT", "LOAD", script.source),))
    else:
        wire = (ClusterWire if t.cluster else RedisWire)(t.url, prelude=(("SCRIPT", "LOAD", script.source),))
    await wire.call(("PING",), 2.0)
    failed = 0

    async def call(i: int) -> None:
        nonlocal failed
        keys, argv = script_args(tenants, i, f"raw{t.name}{time.monotonic_ns()}_")
        reply = await wire.call(("EVALSHA", script.sha, len(keys), *keys, *argv), 1.0)
        failed += not isinstance(reply, list)

    try:
        cpu = time.process_time()
        rate, lat = await _closed_loop(call, seconds, concurrency)
        cpu = time.process_time() - cpu
    finally:
        wire.close()
    return rate * (1 - failed / max(len(lat), 1)), cpu / max(len(lat), 1) * 1e6


async def http_checks(t: Topology, tenants, rate: int, seconds: float, max_conns: int) -> tuple[float, float, float]:
    """(real decisions/s, fail-open share, enforcer CPU µs per answer)."""
    gen = OpenLoop("127.0.0.1", t.enforcer.port, tenants, max_conns)
    gen.n = int(time.time() * 1000) * 1000  # request ids unique across rounds
    cpu0 = cpu_seconds(t.enforcer.proc.pid)
    _, elapsed = await gen.run(rate, seconds)
    cpu1 = cpu_seconds(t.enforcer.proc.pid)
    got = len(gen.lat)
    real = got - gen.degraded
    return real / elapsed, gen.degraded / max(got, 1), (cpu1 - cpu0) / max(got, 1) * 1e6


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):>9,.0f}/s (low {min(xs):,.0f}, high {max(xs):,.0f})"


async def main_async(args) -> None:
    topologies: list[Topology] = []
    try:
        topologies.append(Topology("redis", False, start_redis()))
        topologies.append(Topology("cluster-1", True, start_cluster(1, 0)))
        topologies.append(Topology("cluster-3", True, start_cluster(3, args.replicas)))
        tenants = None
        for t in topologies:
            os.environ["TOLLGATE_REDIS_CLUSTER"] = "1" if t.cluster else "0"  # what connect() reads
            tenants = await provision(t.url, args.customers)
            env = {"TOLLGATE_REDIS_URL": t.url, "TOLLGATE_REDIS_CLUSTER": "1" if t.cluster else "0",
                   "TOLLGATE_CHECK_DEADLINE_MS": str(args.deadline_ms), "TOLLGATE_STREAM_MAXLEN": "200000",
                   "TOLLGATE_BUS": "redis"}
            t.enforcer = EnforcerProcess(env, workers=args.workers).start()
            warm = OpenLoop("127.0.0.1", t.enforcer.port, tenants, args.max_conns)
            await warm.run(500, 1.0)  # connections, key cache, plan cache
        print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; enforcer workers={args.workers}, "
              f"deadline {args.deadline_ms} ms, offered {args.rate:,}/s on {args.max_conns} connections, "
              f"{args.duration:.0f} s per run, {args.rounds} rounds, {args.customers} customers, "
              f"cluster replicas {args.replicas}", flush=True)
        plain_cpu: list[float] = []
        for r in range(args.rounds):
            for t in topologies:
                rate, cpu = await raw_checks(t, tenants, args.duration)
                t.raw.append(rate)
                t.raw_cpu.append(cpu)
                if t.name == "cluster-1":
                    plain_cpu.append((await raw_checks(t, tenants, args.duration, plain=True))[1])
                    print(f"  round {r + 1} cluster-1 node through RedisWire: {plain_cpu[-1]:4.0f} us CPU/check "
                          f"(ClusterWire {cpu:4.0f})", flush=True)
                await asyncio.sleep(0.3)
                real, fo, cpu = await http_checks(t, tenants, args.rate, args.duration, args.max_conns)
                t.http.append(real)
                t.fail_open.append(fo)
                t.cpu.append(cpu)
                print(f"  round {r + 1} {t.name:<10} (a) {t.raw[-1]:>9,.0f}/s, {t.raw_cpu[-1]:4.0f} us CPU/check  (b) {real:>8,.0f}/s real decisions,"
                      f" fail-open {fo:6.2%}, enforcer {cpu:5.0f} us CPU/check  (load {os.getloadavg()[0]:.2f})", flush=True)
                await asyncio.sleep(0.3)
        print("# medians over the rounds")
        for t in topologies:
            print(f"{t.name:<10} (a) check.lua through the wire {spread(t.raw)}, {statistics.median(t.raw_cpu):.0f} us CPU/check  "
                  f"(b) /v1/check real decisions {spread(t.http)}  fail-open max {max(t.fail_open):.2%}"
                  f"  enforcer {statistics.median(t.cpu):.0f} us CPU/check")
        print(f"# ClusterWire's own cost: {statistics.median(topologies[1].raw_cpu) - statistics.median(plain_cpu):+.1f} us "
              f"CPU per check over RedisWire on the same node (medians {statistics.median(topologies[1].raw_cpu):.1f} "
              f"and {statistics.median(plain_cpu):.1f})")
        base = statistics.median(topologies[0].http)
        for t in topologies[1:]:
            print(f"# {t.name}: (b) {statistics.median(t.http) / base:.2f} of a plain Redis's, "
                  f"(a) {statistics.median(t.raw) / statistics.median(topologies[0].raw):.2f}")
        print(f"# load average {os.getloadavg()[0]:.2f} at the end")
    finally:
        for t in topologies:
            t.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rate", type=int, default=20000, help="offered /v1/check rate (above saturation)")
    p.add_argument("--max-conns", type=int, default=64)
    p.add_argument("--deadline-ms", type=float, default=100.0)
    p.add_argument("--customers", type=int, default=300)
    p.add_argument("--replicas", type=int, default=0)
    args = p.parse_args(argv)
    gc.freeze()
    uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
