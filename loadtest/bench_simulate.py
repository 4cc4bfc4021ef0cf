"""Billing simulator benchmark: a month of 10,000 customers rated under a draft plan.

    .venv/bin/python loadtest/bench_simulate.py                         # the figure in BENCHMARKS.md
    .venv/bin/python loadtest/bench_simulate.py --customers 500         # a smoke run

A fresh PostgreSQL database (TOLLGATE_BENCH_PG_DSN, default the local server, else the embedded
pgserver), dropped at the end. Filled by SQL, not through the rater (the rater's speed is
bench_rater's): --customers customers on the example plan (examples/plans/llm-standard.yaml), each
with the previous calendar month's usage in usage_rollups_daily as the rater's compaction leaves it
(every day, --models models, input, output and cache-read tokens, and requests: 30 x 3 x 4 rows a
customer by default), the month's rating_cumulatives, and (a past period is normally closed) each
customer's invoice and its lines, as the close writes them: the batch rating of those cumulatives
(computed while filling, not timed). With --open there are no invoices: the current amounts are then
the batch rating of the cumulatives, done in the timed run (one more rating per customer). Then the simulation of
that month under a draft (the opus input price and the minimum commit changed) is timed, as
`tollgate simulate` and POST /admin/simulate run it (control.simulator.simulate.simulate), and its
result is checked: with the current plan as the draft every customer's difference is zero.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from control.accounts import plans  # noqa: E402
from control.simulator.simulate import simulate  # noqa: E402
from loadtest.bench_rater import drop_database, make_database  # noqa: E402
from tollgate.rating.stages.pipeline import run_batch  # noqa: E402

TARGET_S = 10.0
MODELS = ["claude-sonnet-4-6", "claude-opus-4-1", "claude-haiku-4-5", "gpt-x", "gpt-y"]
# input_tokens' dimension key per model in the example plan (opus override0, haiku override1)
INPUT_KEY = {"claude-opus-4-1": "override0", "claude-haiku-4-5": "override1"}


def plan_doc() -> dict:
    doc = yaml.safe_load((ROOT / "examples" / "plans" / "llm-standard.yaml").read_text())
    doc["id"] = "bench"
    return doc


def draft_doc() -> dict:
    doc = plan_doc()
    doc["charges"][0]["overrides"][0]["unit_price"] = "0.000012"
    doc["minimum_commit"] = "20.00"
    return doc


async def _invoices(conn: asyncpg.Connection, period: str) -> None:
    """Each customer's invoice as the close writes it: the batch rating of its cumulatives."""
    plan = plans.validate(plan_doc())
    cums: dict[str, dict] = {}
    for r in await conn.fetch("SELECT customer_id, charge_id, dimension_key, quantity FROM rating_cumulatives"):
        cums.setdefault(r["customer_id"], {})[(r["charge_id"], r["dimension_key"])] = r["quantity"]
    invoices, lines = [], []
    for cid, cum in cums.items():
        b = run_batch(plan, cum, billing_mode="postpaid")
        inv = f"inv_{period}_{cid}"
        invoices.append((inv, cid, period, "bench", "USD", "postpaid", b.charges_micros + b.commit_true_up_micros,
                         b.discount_micros, b.tax_micros, b.total_micros, 0, b.total_micros))
        rows = [(ln.kind, ln.charge_id, ln.metric, ln.dimension_key, ln.amount_micros) for ln in b.lines]
        rows += [(k, None, None, None, a) for k, a in (("true_up", b.commit_true_up_micros),
                                                       ("discount", -b.discount_micros), ("tax", b.tax_micros)) if a]
        lines += [(inv, i, k, c, m, d, k, 0, a) for i, (k, c, m, d, a) in enumerate(rows)]
    await conn.copy_records_to_table("invoices", records=invoices, columns=[
        "id", "customer_id", "period", "plan_id", "currency", "billing_mode", "subtotal_micros", "discount_micros",
        "tax_micros", "total_micros", "prepaid_micros", "amount_due_micros"])
    await conn.copy_records_to_table("invoice_lines", records=lines, columns=[
        "invoice_id", "line_no", "kind", "charge_id", "metric", "dimension_key", "description", "quantity",
        "amount_micros"])


async def fill(dsn: str, customers: int, models: int, start: datetime, days: int, open_: bool) -> dict:
    conn = await asyncpg.connect(dsn)
    t0 = time.monotonic()
    await conn.execute("SET synchronous_commit = off")
    await conn.execute("INSERT INTO plans (id, document) VALUES ('bench', $1::jsonb)",
                       __import__("orjson").dumps(plans.validate(plan_doc()).document).decode())
    await conn.execute("INSERT INTO customers (id, name, plan_id, billing_mode, tier, created_at)"
                       " SELECT 'cus_' || c, 'bench', 'bench', 'postpaid', 'free', $2"
                       " FROM generate_series(0, $1 - 1) c", customers, start - timedelta(days=1))
    # The daily rollups: per customer, day, model and metric; quantities vary by customer and day.
    await conn.execute(
        """INSERT INTO usage_rollups_daily (customer_id, day, metric, dims, key_id, quantity, amount_micros, events)
           SELECT 'cus_' || c, ($2::date + d), m.metric, jsonb_build_object('model', ($4::text[])[mo + 1]), 'key_' || c,
                  (m.base + (c * 7919 + d * 104729 + mo * 31) % m.base)::int8, 0, 10
           FROM generate_series(0, $1 - 1) c, generate_series(0, $3 - 1) d, generate_series(0, $5 - 1) mo,
                (VALUES ('input_tokens', 20000), ('output_tokens', 4000), ('cache_read_tokens', 50000),
                        ('requests', 10)) AS m(metric, base)""",
        customers, start.date(), days, MODELS, models)
    # The month's cumulatives under the current plan, as the rater would have kept them.
    await conn.execute(
        """INSERT INTO rating_cumulatives (customer_id, period, charge_id, dimension_key, quantity)
           SELECT customer_id, $1, metric,
                  CASE WHEN metric = 'input_tokens' AND dims->>'model' = 'claude-opus-4-1' THEN 'override0'
                       WHEN metric = 'input_tokens' AND dims->>'model' = 'claude-haiku-4-5' THEN 'override1'
                       ELSE 'default' END, sum(quantity)::int8
           FROM usage_rollups_daily GROUP BY 1, 2, 3, 4""", start.strftime("%Y%m"))
    if not open_:
        await _invoices(conn, start.strftime("%Y%m"))
    await conn.execute("VACUUM ANALYZE usage_rollups_daily")
    await conn.execute("VACUUM ANALYZE rating_cumulatives")
    out = {"customers": customers, "rollup_rows": await conn.fetchval("SELECT count(*) FROM usage_rollups_daily"),
           "cumulative_rows": await conn.fetchval("SELECT count(*) FROM rating_cumulatives"),
           "fill_seconds": round(time.monotonic() - t0, 1)}
    await conn.close()
    return out


async def main(args: argparse.Namespace) -> int:
    now = datetime.now(timezone.utc)
    start = (now.replace(day=1) - timedelta(days=1)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    period = start.strftime("%Y%m")
    with tempfile.TemporaryDirectory() as tmp:
        admin, dsn = await make_database(Path(tmp), unix=False)
        try:
            filled = await fill(dsn, args.customers, args.models, start, (end - start).days, args.open)
            print(f"filled: {filled}", file=sys.stderr)
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
            try:
                draft = plans.validate(draft_doc())
                times = []
                for _ in range(args.runs):
                    t = time.perf_counter()
                    out = await simulate(pool, draft, period, None)
                    times.append(time.perf_counter() - t)
                assert out["totals"]["customers"] == args.customers, out["totals"]
                assert out["totals"]["difference"] != "0.00"
                same = await simulate(pool, plans.validate(plan_doc()), period, None)
                assert same["totals"]["difference"] == "0.00", same["totals"]
                assert all(c["difference"] == "0.00" and c["error"] is None for c in same["customers"])
                src = "cumulatives" if args.open else "invoice"
                assert all(c["current_source"] == src for c in same["customers"])
            finally:
                await pool.close()
        finally:
            await drop_database(admin, dsn)
    best = min(times)
    print(f"simulate {period} ({'open: current from cumulatives' if args.open else 'closed: current from invoices'}): "
          f"{args.customers:,} customers, {filled['rollup_rows']:,} rollup rows: "
          f"{best:.2f} s (runs: {', '.join(f'{x:.2f}' for x in times)}; target {TARGET_S:.0f} s)")
    print(f"totals: current {out['totals']['current']}, draft {out['totals']['draft']}, "
          f"difference {out['totals']['difference']}")
    return 0 if best < TARGET_S else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=10_000)
    p.add_argument("--models", type=int, default=3, choices=range(1, len(MODELS) + 1))
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--open", action="store_true", help="no invoices: the current amounts from the cumulatives")
    sys.exit(asyncio.run(main(p.parse_args())))
