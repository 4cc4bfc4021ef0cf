"""Read benchmark: one customer's 90 days of usage by model per day, over HTTP, with 10 million
ledger lines in the database.

    .venv/bin/python loadtest/bench_usage_read.py                  # the figures in BENCHMARKS.md
    .venv/bin/python loadtest/bench_usage_read.py --lines 30000 --requests 50    # a smoke run

A fresh PostgreSQL database (TOLLGATE_BENCH_PG_DSN, default the local server), dropped at the end.
Filled by SQL, not through the rater (the rater's speed is bench_rater's): --lines ledger lines
(three per event: input, output and cache-read tokens) of --customers customers over --days days,
each event on one of --models models (dimension key override0..); then their rollups, as the rater
would have written them, by aggregating the ledger once (per customer, hour, metric and model;
then per day).
The measured customer has ~1/customers of the lines. The control API runs as `tollgate admin serve`
(uvicorn, one process); a client asks GET /admin/customers/cus_0/usage?bucket=day&group_by=model
over the 90 days, --requests times one after another (each timed from send to the whole body),
after --warmup requests; the answer is checked against the ledger once.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.bench_rater import drop_database, make_database  # noqa: E402
from tollgate.local_services import free_port, port_open, start_redis  # noqa: E402
from tollgate.money import to_micros  # noqa: E402

TOKEN = "bench-token"
TOLLGATE = str(Path(sys.executable).parent / "tollgate")
CHUNK = 1_000_000  # ledger lines per INSERT


async def fill(dsn: str, lines: int, customers: int, models: int, start: datetime, days: int) -> dict:
    conn = await asyncpg.connect(dsn)
    t0 = time.monotonic()
    await conn.execute("SET synchronous_commit = off")
    await conn.execute("""INSERT INTO plans (id, document) VALUES ('bench', '{"id": "bench"}')""")
    await conn.execute("INSERT INTO customers (id, name, plan_id, billing_mode, tier)"
                       " SELECT 'cus_' || c, 'bench', 'bench', 'postpaid', 'free' FROM generate_series(0, $1 - 1) c",
                       customers)
    events = lines // 3
    span = days * 86400.0
    for lo in range(0, lines, CHUNK):
        hi = min(lines, lo + CHUNK)
        await conn.execute(
            """INSERT INTO ledger_lines (event_id, line_no, correlation_id, customer_id, plan_id, period, kind,
                   charge_id, metric, dimension_key, quantity, unit_price, amount_micros, created_at)
               SELECT 'evt_' || e, n, 'req_' || e, 'cus_' || (e % $3), 'bench', to_char(t, 'YYYYMM'), 'usage',
                      m, m, 'override' || ((e / $3) % $4), q, NULL, q * 3, t
               FROM generate_series($1::int8, $2::int8 - 1) AS i,
                    LATERAL (SELECT i / 3 AS e, (i % 3)::int2 AS n) a,
                    LATERAL (SELECT (ARRAY['input_tokens', 'output_tokens', 'cache_read_tokens'])[n + 1] AS m,
                                    (100 + (e * 7919 + n * 31) % 4000)::int8 AS q,
                                    $5::timestamptz + make_interval(secs => (e::float8 / $6) * $7) AS t) b""",
            lo, hi, customers, models, start, max(events, 1), span)
        print(f"  ledger {hi:,} / {lines:,} lines  ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
    await conn.execute(
        """INSERT INTO usage_rollups (customer_id, hour, metric, dims, key_id, quantity, amount_micros, events)
           SELECT customer_id, date_trunc('hour', created_at, 'UTC'), metric,
                  jsonb_build_object('model', 'model-' || substr(dimension_key, 9)), '', sum(quantity),
                  sum(amount_micros), count(*)
           FROM ledger_lines GROUP BY 1, 2, 3, 4 ORDER BY 2, 1, 3, 4""")  # hour by hour, as the rater writes them
    await conn.execute(
        """INSERT INTO usage_rollups_daily (customer_id, day, metric, dims, key_id, quantity, amount_micros, events)
           SELECT customer_id, (hour AT TIME ZONE 'UTC')::date, metric, dims, key_id, sum(quantity), sum(amount_micros),
                  sum(events)
           FROM usage_rollups GROUP BY 1, 2, 3, 4, 5 ORDER BY 2, 1, 3, 4, 5""")
    await conn.execute("VACUUM ANALYZE ledger_lines")
    await conn.execute("VACUUM ANALYZE usage_rollups")
    await conn.execute("VACUUM ANALYZE usage_rollups_daily")
    out = {"ledger_lines": await conn.fetchval("SELECT count(*) FROM ledger_lines"),
           "rollup_rows": await conn.fetchval("SELECT count(*) FROM usage_rollups"),
           "customer_rollup_rows": await conn.fetchval("SELECT count(*) FROM usage_rollups WHERE customer_id = 'cus_0'"),
           "customer_ledger_lines": await conn.fetchval("SELECT count(*) FROM ledger_lines WHERE customer_id = 'cus_0'"),
           "fill_seconds": round(time.monotonic() - t0, 1)}
    await conn.close()
    return out


async def ledger_truth(dsn: str, start: datetime, end: datetime) -> dict:
    """What the answer must say, from the ledger itself (once, outside the timing)."""
    conn = await asyncpg.connect(dsn)
    rows = await conn.fetch(
        """SELECT date_trunc('day', created_at, 'UTC') AS d, metric, 'model-' || substr(dimension_key, 9) AS model,
                  sum(quantity)::int8 AS q, sum(amount_micros)::int8 AS a
           FROM ledger_lines WHERE customer_id = 'cus_0' AND created_at >= $1 AND created_at < $2
           GROUP BY 1, 2, 3""", start, end)
    await conn.close()
    return {(r["d"].isoformat(), r["metric"], r["model"]): (r["q"], r["a"]) for r in rows}


def measure(url: str, path: str, params: dict, warmup: int, n: int) -> tuple[list[float], dict]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        body = None
        for _ in range(warmup):
            r = c.get(path, params=params)
            assert r.status_code == 200, r.text[:500]
            body = r.json()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            r = c.get(path, params=params)
            r.read()
            times.append(time.perf_counter() - t)
            assert r.status_code == 200
        return times, body or r.json()


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def main(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="tg-bench-read-"))
    admin, dsn = await make_database(tmp, unix=False)
    redis = start_redis()
    proc = None
    end = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=args.days)
    try:
        print(f"filling {args.lines:,} ledger lines of {args.customers} customers over {args.days} days...",
              file=sys.stderr)
        out = await fill(dsn, args.lines, args.customers, args.models, start, args.days)
        port = free_port()
        env = {**os.environ, "TOLLGATE_DATABASE_URL": dsn, "TOLLGATE_REDIS_URL": redis.url, "TOLLGATE_ADMIN_TOKEN": TOKEN}
        proc = subprocess.Popen([TOLLGATE, "admin", "serve", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port):
            assert proc.poll() is None and time.monotonic() < deadline, "the control API did not start"
            time.sleep(0.05)
        params = {"from": start.isoformat(), "to": end.isoformat(), "bucket": "day", "group_by": "model"}
        times, body = measure(f"http://127.0.0.1:{port}", "/admin/customers/cus_0/usage", params, args.warmup,
                              args.requests)
        truth = await ledger_truth(dsn, start, end)
        got = {(r["bucket"], r["metric"], r["dimensions"]["model"]): (r["quantity"], to_micros(r["amount"]))
               for r in body["rows"]}
        assert got == truth, "the rollups do not add up to the ledger"
        ms = [t * 1000 for t in times]
        out.update(requests=len(ms), answer_rows=len(body["rows"]), answer_bytes=len(orjson.dumps(body)),
                   p50_ms=round(statistics.median(ms), 2), p90_ms=round(pct(ms, 90), 2),
                   p99_ms=round(pct(ms, 99), 2), max_ms=round(max(ms), 2), cpus=os.cpu_count())
        return out
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        redis.stop()
        if args.keep:
            print(f"kept the database: {dsn}", file=sys.stderr)
        else:
            await drop_database(admin, dsn)


def run() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=10_000_000)
    ap.add_argument("--customers", type=int, default=100)
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the database (its DSN is printed)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = asyncio.run(main(args))
    if args.json:
        print(orjson.dumps(out).decode())
        return
    print(f"usage read benchmark ({out['cpus']} CPUs)")
    print(f"  database      {out['ledger_lines']:,} ledger lines, {out['rollup_rows']:,} rollup rows"
          f" (filled in {out['fill_seconds']} s)")
    print(f"  customer      cus_0: {out['customer_ledger_lines']:,} ledger lines, {out['customer_rollup_rows']:,} rollup rows")
    print(f"  query         90 days by model per day: {out['answer_rows']:,} rows, {out['answer_bytes']:,} bytes,"
          " equal to the ledger's own sums")
    print(f"  latency       p50 {out['p50_ms']} ms   p90 {out['p90_ms']} ms   p99 {out['p99_ms']} ms"
          f"   max {out['max_ms']} ms   ({out['requests']} requests, one after another, over HTTP)")


if __name__ == "__main__":
    run()
