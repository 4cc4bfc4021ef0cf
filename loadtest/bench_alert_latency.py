"""Alert latency: from a usage event accepted by the enforcer (its 202) to the webhook received,
through the real processes: enforcer -> bus -> rater (rates, settles, raises the alert) -> control
plane (LISTEN tg_alerts, fan-out, signed POST) -> a receiver on loopback.

    .venv/bin/python loadtest/bench_alert_latency.py                    # the figures in BENCHMARKS.md
    .venv/bin/python loadtest/bench_alert_latency.py --customers 400 --rate 40

Each customer (cap 1.00, postpaid) gets one usage event worth 0.60, so each event crosses 50 % of
its cap: one `spend.threshold` alert, one webhook. Events are sent open loop at --rate per second
(one customer after another); --load adds that many other events/s (under any threshold) so the
rater is not idle. Everything is private to the run: a redis-server on a free port and a fresh
PostgreSQL database (as bench_rater), dropped at the end. Prints p50/p99/max of event accepted ->
webhook received; the target is 5 s.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from control.accounts import api_keys as keys_svc  # noqa: E402
from control.accounts import customers as customers_svc  # noqa: E402
from control.accounts import plans as plans_svc  # noqa: E402
from loadtest.bench_rater import drop_database, make_database, pct  # noqa: E402
from tests.control.webhook_receiver import Receiver  # noqa: E402
from tests.rater.processes import RaterProcess  # noqa: E402
from tests.servers import ControlProcess, EnforcerProcess  # noqa: E402
from tollgate.local_services import start_redis  # noqa: E402
from tollgate.redis_client import connect  # noqa: E402

TOKEN = "bench-admin-token"
PLAN = """
id: {pid}
billing_mode: postpaid
limits: {{requests_per_minute: 100000, tokens_per_minute: 100000000, monthly_spend_cap: "1.00"}}
charges:
  - {{id: input_tokens, model: per_unit, metric: input_tokens, unit_price: "0.0001"}}
alerts: {{spend_cap_percents: [50]}}
"""
CROSSING_TOKENS = 6000  # 0.60 of a 1.00 cap
QUIET_TOKENS = 1  # 0.0001: crosses nothing


async def provision(db, redis, n: int) -> tuple[list[str], list[str]]:
    pid = f"alerts_{uuid.uuid4().hex[:8]}"
    await plans_svc.apply_plan(db, redis, PLAN.format(pid=pid))
    ids, keys = [], []
    for i in range(n):
        c = await customers_svc.create_customer(db, redis, name=f"alert bench {i}", plan_id=pid)
        ids.append(c["id"])
        keys.append((await keys_svc.create_api_key(db, redis, c["id"]))["api_key"])
    return ids, keys


async def send(http: httpx.AsyncClient, url: str, key: str, tokens: int) -> float:
    r = await http.post(f"{url}/v1/usage", json={
        "event_id": f"evt_{uuid.uuid4().hex}", "api_key": key, "event_type": "llm.completion",
        "properties": {"model": "m1"}, "measurements": [{"metric": "input_tokens", "value": tokens}]})
    assert r.status_code == 202, r.text
    return time.time()


async def measure(enforcer_url: str, control_url: str, customer_ids: list[str], keys: list[str], rx: Receiver,
                  rate: float, load: float = 0.0, timeout: float = 30.0) -> list[float]:
    """Latencies (s) of one alert per customer, event accepted -> webhook received."""
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{control_url}/admin/webhooks", json={"url": rx.url},
                            headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 201, r.text
        rx.secret = r.json()["secret"]
        accepted: dict[str, float] = {}
        stop = asyncio.Event()

        async def background() -> None:
            i, start = 0, time.monotonic()
            while load and not stop.is_set():
                await send(http, enforcer_url, keys[i % len(keys)], QUIET_TOKENS)
                i += 1
                await asyncio.sleep(max(0.0, start + i / load - time.monotonic()))

        bg = asyncio.create_task(background())
        start = time.monotonic()

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            accepted[customer_ids[i]] = await send(http, enforcer_url, keys[i], CROSSING_TOKENS)

        await asyncio.gather(*(one(i) for i in range(len(customer_ids))))
        deadline = time.monotonic() + timeout
        while len({r.body["customer_id"] for r in rx.ok()} & set(customer_ids)) < len(customer_ids):
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(rx.ok())} of {len(customer_ids)} webhooks within {timeout} s")
            await asyncio.sleep(0.02)
        stop.set()
        await bg
    got = {r.body["customer_id"]: r for r in rx.ok() if r.body["type"] == "spend.threshold"}
    assert all(r.signed for r in got.values())
    return [got[c].at - accepted[c] for c in customer_ids]


async def main(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-alert-bench-"))
    redis_server = start_redis()
    admin, dsn = await make_database(tmp, unix=False)
    env = {"TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_DATABASE_URL": dsn, "TOLLGATE_BUS": "redis",
           "TOLLGATE_ADMIN_TOKEN": TOKEN}
    db = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    redis = connect(redis_server.url)
    procs = []
    try:
        ids, keys = await provision(db, redis, args.customers)
        control = ControlProcess(env).start()
        procs.append(control)
        rater = RaterProcess(env, ["--sweep-interval", "0"]).start().wait_started()
        procs.append(rater)
        enforcer = EnforcerProcess(env).start()
        procs.append(enforcer)
        with Receiver() as rx:
            lat = await measure(enforcer.url, control.url, ids, keys, rx, args.rate, args.load)
        return {"alerts": len(lat), "rate": args.rate, "load": args.load, "p50_ms": pct(lat, 50) * 1000,
                "p99_ms": pct(lat, 99) * 1000, "max_ms": max(lat) * 1000}
    finally:
        for p in reversed(procs):
            p.stop()
        await redis.aclose()
        await db.close()
        await drop_database(admin, dsn)
        redis_server.stop()


def report(r: dict) -> str:
    return (f"alert latency, event accepted (202) -> webhook received: {r['alerts']} alerts at {r['rate']:g}/s"
            f" (+{r['load']:g} other events/s)\n"
            f"  p50 {r['p50_ms']:.0f} ms   p99 {r['p99_ms']:.0f} ms   max {r['max_ms']:.0f} ms   (target: 5,000 ms)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=200, help="alerts measured (one per customer)")
    ap.add_argument("--rate", type=float, default=20, help="crossing events per second")
    ap.add_argument("--load", type=float, default=200, help="other usage events per second meanwhile")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = asyncio.run(main(a))
    print(orjson.dumps(out).decode() if a.json else report(out))
