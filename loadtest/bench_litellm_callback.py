"""What tollgate's LiteLLM callback adds to a request through the LiteLLM proxy (A/B).

    .venv/bin/python -m loadtest.bench_litellm_callback [--requests 300] [--rounds 4] [--concurrency 1]

Two real LiteLLM proxies (.venv-litellm, made by scripts/test) side by side, models answering
`mock_response` (no upstream): A with the callback (a /v1/check before each call, a /v1/usage
after it) against a real enforcer on a private Redis, B without it. The same chat completions go
to one, then the other, in ABBA order each round (drift on a shared machine falls on both alike);
prints each step, then per variant the median over rounds of p50/p99, throughput and the proxy
process's CPU per request, and the differences: the callback's cost per request, as a client of
the proxy sees it (p50) and as the proxy pays it (CPU, the figure least moved by neighbours' load).
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx

from loadtest.bench_check import cpu_seconds, line, pct, provision
from tests.gateways.litellm_harness import MASTER_KEY, LiteLLMProxy
from tests.servers import EnforcerProcess
from tollgate.local_services import start_redis


async def step(proxy: LiteLLMProxy, api_key: str, n: int, concurrency: int) -> tuple[float, list[float]]:
    body = {"model": "gpt-4o", "max_tokens": 50, "messages": [{"role": "user", "content": "Say hi"}]}
    headers = {"Authorization": f"Bearer {MASTER_KEY}", "x-tollgate-api-key": api_key}
    lat: list[float] = []
    async with httpx.AsyncClient(base_url=proxy.url, headers=headers, timeout=30) as client:
        await client.post("/v1/chat/completions", json=body)  # warm the connection

        async def worker(count: int) -> None:
            for _ in range(count):
                t0 = time.perf_counter()
                r = await client.post("/v1/chat/completions", json=body)
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")

        t0 = time.perf_counter()
        await asyncio.gather(*[worker(n // concurrency) for _ in range(concurrency)])
        elapsed = time.perf_counter() - t0
    return len(lat) / elapsed, lat


async def main_async(args) -> None:
    redis = start_redis()
    enforcer = proxies = None
    try:
        (_, _, api_key), = await provision(redis.url, 1)
        enforcer = EnforcerProcess({"TOLLGATE_REDIS_URL": redis.url, "TOLLGATE_BUS": "redis",
                                    "TOLLGATE_CHECK_DEADLINE_MS": "1000"}).start()
        env = {"TOLLGATE_SIDECAR_URL": enforcer.url, "TOLLGATE_TIMEOUT_MS": "1000"}
        proxies = {"A callback": LiteLLMProxy(env, tollgate=True).start(),
                   "B no callback": LiteLLMProxy(env, tollgate=False).start()}
        results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in proxies}
        names = list(proxies)
        for rnd in range(args.rounds):
            for name in (names if rnd % 2 == 0 else names[::-1]):
                cpu0 = cpu_seconds(proxies[name].proc.pid)
                rate, lat = await step(proxies[name], api_key, args.requests, args.concurrency)
                cpu = (cpu_seconds(proxies[name].proc.pid) - cpu0) / len(lat) * 1000
                print(line(f"round {rnd + 1} {name}", rate, list(lat), f"proxy CPU {cpu:.2f} ms/request"))
                lat.sort()
                results[name].append((rate, pct(lat, 50), pct(lat, 99), cpu))
        print(f"\nmedian over {args.rounds} rounds, {args.requests} requests each, concurrency {args.concurrency}:")
        p50, cpu = {}, {}
        for name, rows in results.items():
            p50[name] = statistics.median(r[1] for r in rows) * 1000
            cpu[name] = statistics.median(r[3] for r in rows)
            print(f"{name:<16} {statistics.median(r[0] for r in rows):7.0f} req/s  p50 {p50[name]:6.2f} ms  "
                  f"p99 {statistics.median(r[2] for r in rows) * 1000:6.2f} ms  proxy CPU {cpu[name]:.2f} ms/request")
        print(f"the callback adds {p50['A callback'] - p50['B no callback']:.2f} ms at p50 and "
              f"{cpu['A callback'] - cpu['B no callback']:.2f} ms of the proxy's CPU per request")
    finally:
        for p in (proxies or {}).values():
            p.cleanup()
        if enforcer:
            enforcer.cleanup()
        redis.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=1)
    asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    main()
