"""The Kong plugin's two check paths on this machine: sidecar (nginx -> the enforcer's /v1/check ->
Redis) against in-gateway (nginx runs check.lua on Redis itself), at p99 < 2 ms.

    .venv/bin/python -m loadtest.bench_kong_modes --rates 500,1000,1500,2000,3000,4000 --rounds 3 --duration 3

Real nginx + lua-nginx-module with the plugin under the test PDK shim (tests/gateways/kong_shim),
one nginx worker; a real enforcer process (one worker) on a private redis-server; one tenant per
`--customers`, projected by the control plane's code (check.lua holds real money). Each request
is a chat completion: the plugin checks it, the location answers a fixed completion itself
(content_by_lua: no upstream hop, so the figures are the gateway's own work), and the plugin
reads its usage block and reports it after the response. Usage reports go to a 202 stub in the same nginx
in both modes (`usage_url`), unless `--usage enforcer`: the figures compare the check paths, and
the report costs both modes the same. The plugin batches them (`--usage-batch-size`, its default
50: one CloudEvents batch per 50 reports or 100 ms); `--usage-batch-size 1` is one POST per request. Load: the open-loop generator of bench_check (a fixed
schedule; latency from the scheduled send, so stalls count), from this same machine.
Every rate is run --rounds times per mode, the modes alternating (ABBA), since the box is shared
and noisy. A rate is OK for a mode when, over its rounds, the median achieved rate is >= 97 % of
the offered one, the median p99 is under --p99-ms (2), no request failed and at most 0.01 %
failed open. Prints each step, the medians, the highest OK rate per mode and their ratio.
(2) Then the same with wrk (closed loop, -c 1..16 connections, `--wrk-conns`): per mode the best
requests/s whose median p99 (wrk's) stays under --p99-ms, and the ratio. A closed loop hides a
stall as a lower rate, so (1) is the honest latency figure and (2) a second view.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import statistics
import tempfile
from pathlib import Path

import uvloop

from loadtest.bench_check import Conn, OpenLoop, cpu_seconds, line, pct, provision
from tests.gateways.harness import Nginx, kong_http_body, kong_location
from tests.servers import EnforcerProcess
from tollgate.local_services import start_redis

ANSWER = ('{"id":"chatcmpl-1","object":"chat.completion","choices":[],'
          '"usage":{"prompt_tokens":42,"completion_tokens":17,"total_tokens":59}}')
FAIL_OPEN_BUDGET = 0.0001  # fail-opens a served step may have (Redis or the sidecar past timeout_ms)
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


def start_nginx(prefix: Path, redis_port: int, enforcer_url: str, usage: str, timeout_ms: int,
                usage_batch_size: int) -> Nginx:
    configs = {
        "sidecar": {"sidecar_url": enforcer_url, "timeout_ms": timeout_ms},
        "redis": {"mode": "redis", "redis_port": redis_port, "sidecar_url": enforcer_url, "timeout_ms": timeout_ms},
    }
    nginx = Nginx(prefix, "", lua=True)  # its port first: the usage stub's URL names it
    for c in configs.values():
        c["usage_url"] = f"{nginx.url}/stub" if usage == "stub" else enforcer_url
        c["usage_batch_size"] = usage_batch_size
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


async def step(gen: GatewayLoad, pids: dict[str, int], mode: str, rate: int, seconds: float) -> dict:
    cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
    sent, elapsed = await gen.run(rate, seconds)
    cpu1 = {n: cpu_seconds(p) for n, p in pids.items()}
    lat = sorted(gen.lat)
    got = len(lat)
    bad = sum(n for s, n in gen.status.items() if s != 200) + gen.errors + (sent - got)
    cpu = {n: (cpu1[n] - cpu0[n]) / max(got, 1) * 1e6 for n in pids}
    extra = (f"offered {rate:>6,}/s  failed {bad}  fail-open {gen.degraded}  CPU/request: "
             + "  ".join(f"{n} {us:.0f} us" for n, us in cpu.items()) + f"  (sum {sum(cpu.values()):.0f} us)")
    print(line(f"{mode} @ {rate:,}/s", got / elapsed, lat, extra), flush=True)
    return {"achieved": got / elapsed, "sent": sent, "p99": pct(lat, 99), "failed": bad, "fail_open": gen.degraded,
            "got": got, "cpu": sum(cpu.values())}


def verdict(rate: int, runs: list[dict], p99_ms: float) -> dict:
    """A (mode, rate) over its rounds: the median p99 and achieved rate; failures and fail-opens summed."""
    med = lambda xs: statistics.median(xs)  # noqa: E731
    got = sum(r["got"] for r in runs)
    p99, achieved = med([r["p99"] for r in runs]), med([r["achieved"] for r in runs])
    fail_open = sum(r["fail_open"] for r in runs) / max(got, 1)
    served = achieved >= 0.97 * rate and not sum(r["failed"] for r in runs) and fail_open <= FAIL_OPEN_BUDGET
    return {"rate": rate, "p99": p99, "achieved": achieved, "fail_open": fail_open, "served": served,
            "ok": served and p99 * 1000 < p99_ms, "cpu": med([r["cpu"] for r in runs])}


async def main_async(args) -> None:
    redis = start_redis()
    enf = None
    nginx = None
    try:
        tenants = await provision(redis.url, args.customers)
        enf = EnforcerProcess({"TOLLGATE_REDIS_URL": redis.url, "TOLLGATE_BUS": "redis",
                               "TOLLGATE_STREAM_MAXLEN": "200000"}, workers=1).start()
        prefix = Path(tempfile.mkdtemp(prefix="bench_kong_"))
        nginx = start_nginx(prefix, redis.port, enf.url, args.usage, args.timeout_ms, args.usage_batch_size)
        print(f"# {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f}), nginx 1 worker, enforcer 1 worker, "
              f"usage reports to {args.usage} in batches of {args.usage_batch_size}, {args.rounds} rounds of {args.duration:g} s per step, "
              f"{len(tenants)} customers; the modes alternate at each rate, ABBA", flush=True)
        pids = {"nginx": nginx.proc.pid, "redis": redis.proc.pid, "enforcer": enf.proc.pid}
        gens = {mode: GatewayLoad(nginx.port, tenants, args.max_conns, mode) for mode in args.modes}
        for gen in gens.values():
            await gen.run(300, 1.0)  # warm-up: connections, key and plan caches, script cache
        runs: dict[tuple[str, int], list[dict]] = {}
        for rnd in range(args.rounds):
            for rate in args.rates:
                order = args.modes if rnd % 2 == 0 else args.modes[::-1]  # the box's drift falls on both
                for mode in order:
                    runs.setdefault((mode, rate), []).append(await step(gens[mode], pids, mode, rate, args.duration))
                    await asyncio.sleep(0.3)
        best = {}
        print(f"# per mode and rate, the median over {args.rounds} rounds:")
        for mode in args.modes:
            vs = [verdict(rate, runs[mode, rate], args.p99_ms) for rate in args.rates]
            for v in vs:
                print(f"#   {mode:<8} @ {v['rate']:>6,}/s  achieved {v['achieved']:>7,.0f}/s  p99 {v['p99'] * 1000:7.2f} ms  "
                      f"fail-open {v['fail_open']:.3%}  CPU/request {v['cpu']:.0f} us  "
                      f"{'OK' if v['ok'] else 'served' if v['served'] else 'MISS'}")
            best[mode] = max((v["achieved"] for v in vs if v["ok"]), default=0.0)
            served = max((v["achieved"] for v in vs if v["served"]), default=0.0)
            print(f"# {mode}: highest OK rate (median p99 < {args.p99_ms:g} ms, >= 97% of offered, no failure, "
                  f"fail-open <= {FAIL_OPEN_BUDGET:.2%}): {best[mode]:,.0f}/s; highest served whatever its p99: "
                  f"{served:,.0f}/s", flush=True)
        if len(best) == 2:
            a, b = best.get("redis", 0.0), best.get("sidecar", 0.0)
            print(f"# in-gateway / sidecar throughput at p99 < {args.p99_ms:g} ms: "
                  + (f"{a / b:.2f}x" if b else "no ratio (the sidecar reached no OK rate)"))
        if args.wrk_conns:
            wrk_phase(nginx, pids, tenants, args)
        errors = [x for x in nginx.log().splitlines() if "[error]" in x]
        if errors:
            print(f"# nginx error.log: {len(errors)} errors (timeouts of fail-opens), the last: {errors[-1][-160:]}")
    finally:
        if nginx:
            nginx.stop()
        if enf:
            enf.cleanup()
        redis.stop()


# --------------------------------------------------------------------------- (2) closed loop, wrk

WRK_SCRIPT = """
local keys = {%s}
local body = [[%s]]
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json", ["x-api-key"] = keys[i %% #keys + 1] }, body)
end
"""
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def wrk_step(nginx: Nginx, pids: dict[str, int], mode: str, conns: int, seconds: float, script: Path) -> dict:
    """wrk -c conns against one mode: requests/s, p99 (wrk's, closed loop), non-2xx, fail-opens
    (the plugin logs each one), CPU per request."""
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk is not installed: run scripts/test (it installs the Debian packages) or apt-get install wrk")
    failed_before = nginx.log().count("tollgate check failed")
    cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
    out = subprocess.run([wrk, "-t1", f"-c{conns}", f"-d{seconds:g}s", "--latency", "-s", str(script),
                          f"{nginx.url}/{mode}/v1/chat/completions"], capture_output=True, text=True, timeout=seconds + 30).stdout
    cpu1 = {n: cpu_seconds(p) for n, p in pids.items()}
    total = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    v, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)$", out, re.M).groups()
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    fail_open = nginx.log().count("tollgate check failed") - failed_before
    cpu = sum((cpu1[n] - cpu0[n]) for n in pids) / max(total, 1) * 1e6
    return {"rps": rps, "p99": float(v) * _UNITS[unit], "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "fail_open": fail_open, "total": total, "cpu": cpu}


def wrk_phase(nginx: Nginx, pids: dict[str, int], tenants, args) -> None:
    """Throughput at p99 < target by wrk (the brief allows it): more connections until the p99
    passes the target; per mode the best requests/s under it, the modes alternating (ABBA)."""
    script = Path(tempfile.mkdtemp(prefix="bench_kong_wrk_")) / "post.lua"
    script.write_text(WRK_SCRIPT % (", ".join(f'"{t[2]}"' for t in tenants), BODY.decode()))
    print(f"# (2) closed loop: wrk -t1 -c<n> --latency, {args.wrk_duration:g} s per step, {args.rounds} rounds, ABBA; "
          "latency of wrk's own requests only (a closed loop waits: stalls hide as a lower rate)", flush=True)
    runs: dict[tuple[str, int], list[dict]] = {}
    for rnd in range(args.rounds):
        for conns in args.wrk_conns:
            for mode in (args.modes if rnd % 2 == 0 else args.modes[::-1]):
                r = wrk_step(nginx, pids, mode, conns, args.wrk_duration, script)
                runs.setdefault((mode, conns), []).append(r)
                print(f"{mode:<8} wrk -c{conns:<3} {r['rps']:>8,.0f} req/s  p99 {r['p99'] * 1000:7.2f} ms  non-2xx {r['non2xx']}"
                      f"  fail-open {r['fail_open']}  CPU/request {r['cpu']:.0f} us", flush=True)
    best = {}
    for mode in args.modes:
        ok = []
        for conns in args.wrk_conns:
            rs = runs[mode, conns]
            rps, p99 = statistics.median(r["rps"] for r in rs), statistics.median(r["p99"] for r in rs)
            clean = not sum(r["non2xx"] for r in rs) and sum(r["fail_open"] for r in rs) <= FAIL_OPEN_BUDGET * sum(r["total"] for r in rs)
            good = clean and p99 * 1000 < args.p99_ms
            print(f"#   {mode:<8} -c{conns:<3} median {rps:>8,.0f} req/s  p99 {p99 * 1000:6.2f} ms  CPU/request "
                  f"{statistics.median(r['cpu'] for r in rs):.0f} us  {'OK' if good else 'MISS'}")
            if good:
                ok.append(rps)
        best[mode] = max(ok, default=0.0)
        print(f"# {mode}: wrk throughput at median p99 < {args.p99_ms:g} ms (no failure, fail-open <= "
              f"{FAIL_OPEN_BUDGET:.2%}): {best[mode]:,.0f} req/s", flush=True)
    if len(best) == 2:
        a, b = best.get("redis", 0.0), best.get("sidecar", 0.0)
        print(f"# wrk: in-gateway / sidecar throughput at p99 < {args.p99_ms:g} ms: "
              + (f"{a / b:.2f}x" if b else "no ratio (the sidecar reached no OK step)"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="500,1000,1500,2000,3000,4000")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per step")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all rates; figures are the median")
    p.add_argument("--modes", default="sidecar,redis")
    p.add_argument("--customers", type=int, default=100)
    p.add_argument("--max-conns", type=int, default=128)
    p.add_argument("--p99-ms", type=float, default=2.0)
    p.add_argument("--timeout-ms", type=int, default=50, help="the plugin's timeout_ms in both modes")
    p.add_argument("--wrk-conns", default="1,2,4,8,16", help="(2) wrk connection counts; '' skips it")
    p.add_argument("--wrk-duration", type=float, default=3.0)
    p.add_argument("--usage", choices=("stub", "enforcer"), default="stub",
                   help="where usage reports go: a 202 stub in nginx (default), or the enforcer")
    p.add_argument("--usage-batch-size", type=int, default=50,
                   help="the plugin's usage_batch_size (1: one usage POST per request, as before batching)")
    args = p.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",")]
    args.modes = args.modes.split(",")
    args.wrk_conns = [int(c) for c in args.wrk_conns.split(",") if c]
    gc.freeze()
    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
