"""The Kong plugin's two check paths on this machine: sidecar (nginx -> the enforcer's /v1/check ->
Redis) against in-gateway (nginx runs check.lua on Redis itself), at p99 < 2 ms.

    .venv/bin/python -m loadtest.bench_kong_modes --rates 500,1000,2000,3000,4000,6000 --duration 5

Real nginx + lua-nginx-module with the plugin under the test PDK shim (tests/gateways/kong_shim),
one nginx worker; a real enforcer process (one worker) on a private redis-server; one tenant per
`--customers`, projected by the control plane's code (check.lua holds real money). Each request
is a chat completion: the plugin checks it, the location answers a fixed completion itself
(content_by_lua: no upstream hop, so the figures are the gateway's own work), and the plugin
reads its usage block and reports it after the response. Usage reports go to a 202 stub in the same nginx
in both modes (`usage_url`), unless `--usage enforcer`: the figures compare the check paths, and
the report costs both modes the same. Load: the open-loop generator of bench_check (a fixed
schedule; latency from the scheduled send, so stalls count), from this same machine.
A step is OK when it achieved >= 97 % of the offered rate, its p99 is under --p99-ms (2), and no
request failed or failed open. Prints each step, then the highest OK rate per mode and the ratio.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
from pathlib import Path

import uvloop

from loadtest.bench_check import Conn, OpenLoop, cpu_seconds, line, pct, provision
from tests.gateways.harness import Nginx, kong_http_body, kong_location
from tests.servers import EnforcerProcess
from tollgate.local_services import start_redis

ANSWER = ('{"id":"chatcmpl-1","object":"chat.completion","choices":[],'
          '"usage":{"prompt_tokens":42,"completion_tokens":17,"total_tokens":59}}')
BODY = b'{"model":"gpt-4o","max_tokens":64,"messages":[{"role":"user","content":"Say hi"}]}'


class GatewayConn(Conn):
    """bench_check's connection, reading nginx's capitalised header names."""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end + 2].lower()
        i = head.find(b"content-length: ")
        length = int(head[i + 16:head.index(b"\r\n", i)]) if i >= 0 else 0
        if len(self.buf) < end + 4 + length:
            return
        self.buf = self.buf[end + 4 + length:]
        self.gen.done(self, int(head[9:12]), b"x-tollgate-degraded" in head, None)


class GatewayLoad(OpenLoop):
    """Chat completions through one plugin instance (`path`), keys round robin."""

    conn_class = GatewayConn

    def __init__(self, port: int, tenants, max_conns: int, path: str):
        super().__init__("127.0.0.1", port, tenants, max_conns)
        self.path = path.encode()

    def request(self) -> bytes:
        self.n += 1
        key = self.keys[self.n % len(self.keys)].encode()
        return (b"POST /%s/v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                b"x-api-key: %s\r\nContent-Length: %d\r\n\r\n%s" % (self.path, key, len(BODY), BODY))


def start_nginx(prefix: Path, redis_port: int, enforcer_url: str, usage: str, timeout_ms: int) -> Nginx:
    configs = {
        "sidecar": {"sidecar_url": enforcer_url, "timeout_ms": timeout_ms},
        "redis": {"mode": "redis", "redis_port": redis_port, "sidecar_url": enforcer_url, "timeout_ms": timeout_ms},
    }
    nginx = Nginx(prefix, "", lua=True)  # its port first: the usage stub's URL names it
    for c in configs.values():
        c["usage_url"] = f"{nginx.url}/stub" if usage == "stub" else enforcer_url
    # the LLM's answer comes from the location itself (content_by_lua after the plugin's access
    # phase, its header/body filters and log phase as for a proxied answer): no upstream hop
    content = ("    default_type application/json;\n    content_by_lua_block { "
               f"ngx.header['Content-Length'] = {len(ANSWER)}; ngx.print('{ANSWER}') }}\n")
    server = (
        "".join(kong_location(name, None, content=content) for name in configs)
        + "  location = /stub/v1/usage { default_type application/json; return 202 '{}'; }\n"
    )
    extra = "  keepalive_requests 10000000;\n"
    body = kong_http_body(prefix, configs, server, extra)
    nginx.conf = nginx.conf.replace("http {\n", "http {\n" + body.replace("$PORT", str(nginx.port)), 1)
    nginx.conf = nginx.conf.replace("worker_connections 256;", "worker_connections 8192;")
    return nginx.start()


async def step(gen: GatewayLoad, pids: dict[str, int], mode: str, rate: int, seconds: float, p99_ms: float) -> dict:
    cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
    sent, elapsed = await gen.run(rate, seconds)
    cpu1 = {n: cpu_seconds(p) for n, p in pids.items()}
    lat = sorted(gen.lat)
    got = len(lat)
    achieved = got / elapsed
    p99 = pct(lat, 99)
    bad = sum(n for s, n in gen.status.items() if s != 200)
    served = got >= 0.97 * sent and not bad and not gen.degraded and not gen.errors
    ok = served and p99 * 1000 < p99_ms
    cpu = {n: (cpu1[n] - cpu0[n]) / max(got, 1) * 1e6 for n in pids}
    extra = (f"offered {rate:>6,}/s  non-200 {bad}  fail-open {gen.degraded}  errors {gen.errors}  {'OK' if ok else 'MISS'}"
             f"  CPU/request: " + "  ".join(f"{n} {us:.0f} us" for n, us in cpu.items()) + f"  (sum {sum(cpu.values()):.0f} us)")
    print(line(f"{mode} @ {rate:,}/s", achieved, lat, extra), flush=True)
    return {"rate": rate, "achieved": achieved, "p99": p99, "ok": ok, "served": served, "cpu": sum(cpu.values())}


async def main_async(args) -> None:
    redis = start_redis()
    enf = None
    nginx = None
    try:
        tenants = await provision(redis.url, args.customers)
        enf = EnforcerProcess({"TOLLGATE_REDIS_URL": redis.url, "TOLLGATE_BUS": "redis",
                               "TOLLGATE_STREAM_MAXLEN": "200000"}, workers=1).start()
        prefix = Path(tempfile.mkdtemp(prefix="bench_kong_"))
        nginx = start_nginx(prefix, redis.port, enf.url, args.usage, args.timeout_ms)
        print(f"# {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f}), nginx 1 worker, enforcer 1 worker, "
              f"usage reports to {args.usage}, {args.duration:.0f} s per step, {len(tenants)} customers; "
              f"modes alternate at each rate (the box's noise falls on both)", flush=True)
        pids = {"nginx": nginx.proc.pid, "redis": redis.proc.pid, "enforcer": enf.proc.pid}
        gens = {mode: GatewayLoad(nginx.port, tenants, args.max_conns, mode) for mode in args.modes}
        for gen in gens.values():
            await gen.run(300, 1.0)  # warm-up: connections, key and plan caches, script cache
        results: dict[str, list[dict]] = {mode: [] for mode in args.modes}
        for rate in args.rates:
            for mode in args.modes:
                results[mode].append(await step(gens[mode], pids, mode, rate, args.duration, args.p99_ms))
                await asyncio.sleep(0.5)
        best = {}
        for mode, rs in results.items():
            best[mode] = max((r["achieved"] for r in rs if r["ok"]), default=0.0)
            served = max((r["achieved"] for r in rs if r["served"]), default=0.0)
            cpu = sorted(r["cpu"] for r in rs)
            print(f"# {mode}: highest OK step (p99 < {args.p99_ms:g} ms, >= 97% of offered, no failure): "
                  f"{best[mode]:,.0f}/s; highest step served whatever its p99 (>= 97%, no failure, no fail-open): "
                  f"{served:,.0f}/s; median CPU per request, nginx + redis + enforcer: {cpu[len(cpu) // 2]:.0f} us",
                  flush=True)
        if best.get("sidecar") and "redis" in best:
            print(f"# in-gateway / sidecar throughput at p99 < {args.p99_ms:g} ms: {best['redis'] / best['sidecar']:.2f}x")
        elif "sidecar" in best and "redis" in best:
            print(f"# in-gateway / sidecar throughput at p99 < {args.p99_ms:g} ms: no ratio (sidecar reached no OK step)")
        errors = [x for x in nginx.log().splitlines() if "[error]" in x]
        if errors:
            print(f"# nginx error.log: {len(errors)} errors, the last: {errors[-1][-200:]}")
    finally:
        if nginx:
            nginx.stop()
        if enf:
            enf.cleanup()
        redis.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="500,1000,2000,3000,4000,6000")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per step")
    p.add_argument("--modes", default="sidecar,redis")
    p.add_argument("--customers", type=int, default=100)
    p.add_argument("--max-conns", type=int, default=128)
    p.add_argument("--p99-ms", type=float, default=2.0)
    p.add_argument("--timeout-ms", type=int, default=50, help="the plugin's timeout_ms in both modes")
    p.add_argument("--usage", choices=("stub", "enforcer"), default="stub",
                   help="where usage reports go: a 202 stub in nginx (default), or the enforcer")
    args = p.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",")]
    args.modes = args.modes.split(",")
    gc.freeze()
    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
