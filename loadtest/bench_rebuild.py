"""Self-healing projection benchmark: seconds from an empty Redis to real decisions.

    .venv/bin/python loadtest/bench_rebuild.py                          # 10,000 customers
    .venv/bin/python loadtest/bench_rebuild.py --customers 50000 --events-per-customer 2

Everything is private to the run: a redis-server (--redis-port, default a free port), a fresh
PostgreSQL database (TOLLGATE_BENCH_PG_DSN, default the local server, else the embedded
pgserver), dropped at the end. PostgreSQL is filled by COPY: one plan, N prepaid customers, each
with an API key, a top-up, --events-per-customer processed usage events of this period (their
settle sequence numbers give each customer its settled mark) and, for one customer in ten, an open hold.

1. In-process: `rebuild_locked` on an empty Redis, --repeat times (its PostgreSQL read and Redis
   write times as it reports them, and the CPU time of this process and of Redis: on a shared
   box the wall times mostly show the other work).
2. The drill, real processes: an enforcer and a `tollgate-rater` run on the projected Redis; Redis is
   SIGKILLed and started empty on the same port. From the moment it accepts connections: seconds
   until the projection marker is back (the rater noticed and rebuilt, no human step), and until
   /v1/check gives a real decision (reason ok with a hold, not fail_open) for every sampled key
   (the last customers projected among them). Meanwhile every answer for a valid key must be 200
   (fail_open until then), never 401.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import httpx
import orjson
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.bench_rater import drop_database, make_database  # noqa: E402
from control.projection.rebuild import rebuild_locked  # noqa: E402
from tests.rater.processes import RaterProcess  # noqa: E402
from tests.servers import EnforcerProcess  # noqa: E402
from tollgate.keys import PROJECTION_MARKER, api_key_hash  # noqa: E402
from tollgate.local_services import LocalRedis, free_port  # noqa: E402
from tollgate.periods import period_of  # noqa: E402
from tollgate.plans import parse_plan  # noqa: E402

PLAN = {
    "id": "bench", "billing_mode": "prepaid",
    "limits": {"requests_per_minute": 100_000, "tokens_per_minute": 100_000_000},
    "tiers": [{"name": "free", "threshold": "0", "multiplier": 1},
              {"name": "build", "threshold": "1000", "multiplier": 2}],
    "charges": [{"id": "in", "model": "per_unit", "metric": "input_tokens", "unit_price": "0.000003"},
                {"id": "req", "model": "per_unit", "metric": "requests", "unit_price": "0.001"}],
}
SAMPLED_KEYS = 8


def api_key(i: int) -> str:
    return f"tg_bench_{i:08d}"


async def fill(dsn: str, n: int, events_per_customer: int) -> dict:
    """The PostgreSQL state of n customers, by COPY."""
    started = time.monotonic()
    now = datetime.now(timezone.utc)
    period = period_of(now)
    conn = await asyncpg.connect(dsn)
    try:
        plan = parse_plan(PLAN)
        await conn.execute("INSERT INTO plans (id, document) VALUES ($1, $2::jsonb)", plan.id,
                           orjson.dumps(plan.document).decode())
        cids = [f"cus_{i:08d}" for i in range(n)]
        await conn.copy_records_to_table("customers", columns=("id", "name", "plan_id", "billing_mode", "tier"),
                                         records=[(c, c, plan.id, "prepaid", "free") for c in cids])
        await conn.copy_records_to_table("api_keys", columns=("id", "customer_id", "key_hash", "prefix"),
                                         records=[(f"key_{i:08d}", c, api_key_hash(api_key(i)), "tg_bench")
                                                  for i, c in enumerate(cids)])
        await conn.copy_records_to_table("wallet_transactions", columns=("id", "customer_id", "kind", "amount_micros"),
                                         records=[(f"top_{c}", c, "topup", 100_000_000) for c in cids])
        # each customer's events numbered 1..n, as the rater's settle sequence numbers them
        events = [(f"evt_{i:08d}_{j}", "usage", c, period, 4_000, 4_000, 0, now - timedelta(seconds=j), j + 1)
                  for i, c in enumerate(cids) for j in range(events_per_customer)]
        await conn.copy_records_to_table(
            "processed_events", records=events,
            columns=("event_id", "kind", "customer_id", "period", "spend_micros", "wallet_micros", "invoice_micros",
                     "processed_at", "settle_seq"))
        holds = [(f"hold_{c}", c, f"key_{i:08d}", 5_000, 100, now, now + timedelta(minutes=5))
                 for i, c in enumerate(cids) if i % 10 == 0]
        await conn.copy_records_to_table(
            "holds", records=holds,
            columns=("hold_id", "customer_id", "key_id", "amount_micros", "estimated_tokens", "placed_at", "expires_at"))
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return {"customers": n, "events": len(events), "holds": len(holds), "fill_seconds": round(time.monotonic() - started, 1)}


async def in_process(redis: Redis, dsn: str, repeat: int) -> list[dict]:
    out = []
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(repeat):
            await redis.flushall()
            t0, cpu0, redis_cpu0 = time.monotonic(), time.process_time(), await _redis_cpu_s(redis)
            counts = await rebuild_locked(redis, conn)
            counts["seconds"] = round(time.monotonic() - t0, 3)
            counts["cpu_seconds"] = round(time.process_time() - cpu0, 3)
            counts["redis_cpu_seconds"] = round(await _redis_cpu_s(redis) - redis_cpu0, 3)
            out.append(counts)
    finally:
        await conn.close()
    return out


async def _redis_cpu_s(redis: Redis) -> float:
    info = await redis.info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


async def drill(redis_server: LocalRedis, dsn: str, n: int, timeout: float) -> dict:
    """Kill Redis under a running enforcer and rater, start it empty: until the marker, until real decisions."""
    sample = sorted({0, n // 2, *range(max(0, n - SAMPLED_KEYS + 2), n)})
    env = {"TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_DATABASE_URL": dsn, "TOLLGATE_BUS": "redis",
           "TOLLGATE_CHECK_DEADLINE_MS": "100"}
    enf = EnforcerProcess(env).start()
    rater = RaterProcess(env, ["--sweep-interval", "0"]).start()
    redis = Redis.from_url(redis_server.url)
    statuses: dict[int, int] = {}
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            async def decision(i: int) -> tuple[int, str]:
                r = await http.post(f"{enf.url}/v1/check", json={
                    "api_key": api_key(i), "request_id": uuid.uuid4().hex, "estimate": {"requests": 1}})
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                return r.status_code, r.json().get("reason", "") if r.status_code in (200, 429) else r.text

            # The rater projects the fresh (empty) Redis at its start: real decisions, then the drill.
            await _until(lambda: _all_real(decision, sample), timeout, "real decisions before the drill", rater)
            statuses.clear()
            redis_server.stop()  # SIGKILL: no persistence, everything is gone
            redis_server.start()
            t0 = time.monotonic()
            await redis.connection_pool.disconnect()
            t_marker = t_real = None
            while t_marker is None or t_real is None:
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"no recovery within {timeout} s:\n{rater.logs()[-3000:]}")
                if t_marker is None and await redis.exists(PROJECTION_MARKER):
                    t_marker = time.monotonic() - t0
                if t_real is None and await _all_real(decision, sample):
                    t_real = time.monotonic() - t0
                await asyncio.sleep(0.05)  # the polling itself takes CPU from the rebuild on a small box
        rebuilt = [ln for ln in rater.logs().splitlines() if "projection rebuilt" in ln]
        return {"marker_seconds": round(t_marker, 2), "real_decisions_seconds": round(t_real, 2),
                "check_statuses_during": statuses, "rater_log": rebuilt[-1].split("projection rebuilt: ")[-1] if rebuilt else ""}
    finally:
        await redis.aclose()
        rater.stop()
        enf.stop()


async def _all_real(decision, sample: list[int]) -> bool:
    results = await asyncio.gather(*(decision(i) for i in sample))
    bad = [r for r in results if r[0] not in (200, 429)]
    if bad:
        raise AssertionError(f"a valid key was refused: {bad[0]}")
    return all(reason == "ok" for _, reason in results)


async def _until(cond, timeout: float, what: str, rater: RaterProcess) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline or not rater.alive():
            raise RuntimeError(f"timed out waiting for {what}:\n{rater.logs()[-3000:]}")
        await asyncio.sleep(0.05)


async def main(args) -> dict:
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"tg-bench-rebuild-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True, exist_ok=True)
    redis_server = LocalRedis(args.redis_port or free_port()).start()
    admin, dsn = await make_database(tmp, unix=False)
    redis = Redis.from_url(redis_server.url)
    out: dict = {"cpus": os.cpu_count()}
    try:
        out.update(await fill(dsn, args.customers, args.events_per_customer))
        out["in_process"] = await in_process(redis, dsn, args.repeat)
        await redis.flushall()
        out["drill"] = await drill(redis_server, dsn, args.customers, args.timeout)
    finally:
        await redis.aclose()
        await drop_database(admin, dsn)
        redis_server.stop()
    return out


def report(r: dict) -> str:
    runs = r["in_process"]
    secs = [x["seconds"] for x in runs]
    first = runs[0]
    d = r["drill"]
    return "\n".join([
        f"projection rebuild benchmark ({r['cpus']} CPUs; {r['customers']:,} customers with a key and a wallet, "
        f"{r['events']:,} processed events, {r['holds']:,} open holds; filled in {r['fill_seconds']} s)",
        f"  rebuild in-process   median {statistics.median(secs)} s of {len(secs)} (each: "
        + ", ".join(f"{x['seconds']} s = PostgreSQL {x['read_seconds']} + Redis {x['write_seconds']}" for x in runs) + ")",
        f"                       CPU: this process {statistics.median(x['cpu_seconds'] for x in runs)} s, Redis "
        f"{statistics.median(x['redis_cpu_seconds'] for x in runs)} s (medians; PostgreSQL not counted)",
        f"                       wrote {first['customers']:,} customers, {first['api_keys']:,} keys, {first['wallets']:,} wallets, "
        f"{first['spend_keys']:,} spend keys, {first['holds']:,} holds, {first['markers']:,} settled marks",
        f"  drill (Redis SIGKILLed, started empty; enforcer + rater running)",
        f"    marker back after  {d['marker_seconds']} s   (the rater: {d['rater_log']})",
        f"    real decisions     {d['real_decisions_seconds']} s   (every sampled key ALLOW ok; /v1/check statuses meanwhile "
        f"{d['check_statuses_during']}: 200 fail_open, never 401)",
    ])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--events-per-customer", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="in-process rebuilds timed")
    ap.add_argument("--redis-port", type=int, help="default: a free port")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    result = asyncio.run(main(a))
    print(orjson.dumps(result).decode() if a.json else report(result))
