"""The current period's preview: the invoice so far, as the close would write it if the period
ended now, without writing anything.

Priced from the period's cumulatives (rating_cumulatives: one row per charge and dimension key, not
the ledger) by the same pure stages the rater and the close run (tollgate.rating.stages.pipeline):
run_batch gives the whole period's lines and totals, which by the real-time = batch identity equal
the ledger so far plus the close; run_close gives what the close itself would add (flat fees,
minimums, the commit true-up, and their discount and tax). Spend so far = batch - close.
Both with the units carried into the period by rollover, which `allowances` shows per key.

Agent sessions still open in the period (rater.sessions) are in it as if they closed now: the
close bills them first, so the preview stays the invoice the close would write. Each is priced as
the rater will price it (one event, its summed measurements plus `sessions: 1`) on top of the
recorded cumulatives; `pending_sessions` says how many and for how much. Spend so far excludes them.
"""
from __future__ import annotations

import time

import asyncpg
import orjson
from redis.asyncio import Redis

from control.lookup import require_customer, require_plan
from control.accounts.wallets import balances
from tollgate.invoices import describe
from tollgate.money import format_micros
from tollgate.periods import period_bounds, period_of
from tollgate.rating.negotiated import effective_plan
from tollgate.rating.pricing import RatingError
from tollgate.rating.rollover import allowances, applicable
from tollgate.rating.sessions import billable_measurements
from tollgate.rating.stages.pipeline import run_batch, run_close, run_event
from tollgate.rollovers import read as read_carried
from tollgate.tiers import tier_index, tier_reached

# Invoice line order, as the close writes it (rater.periods).
_ORDER = {"usage": 0, "metered": 1, "percentage": 2, "flat": 5, "minimum": 5}


async def preview(db: asyncpg.Pool, redis: Redis, customer_id: str, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    async with db.acquire() as conn:
        row = await require_customer(conn, customer_id)
        plan = effective_plan(await require_plan(conn, row["plan_id"]), row["prices"])  # negotiated prices on top
        period = period_of(now, plan.billing_anchor_day)
        cumulative = {(r["charge_id"], r["dimension_key"]): r["quantity"] for r in await conn.fetch(
            "SELECT charge_id, dimension_key, quantity FROM rating_cumulatives WHERE customer_id = $1 AND period = $2",
            customer_id, period)}
        # Units carried in by rollover: part of the quota the period is rated with.
        carried = applicable(plan, (await read_carried(conn, [(customer_id, period)]))[(customer_id, period)][0])
        open_sessions = await conn.fetch(
            "SELECT dimensions, measurements FROM agent_sessions WHERE customer_id = $1 AND status = 'open'"
            " AND period = $2 ORDER BY first_ts, session_id", customer_id, period)
    wallet = await balances(db, redis, customer_id, plan)
    mode = row["billing_mode"]
    tier = plan.tier(row["tier"])
    cap = plan.limits_for_tier(tier)[2] if row["spend_cap_micros"] is None else int(row["spend_cap_micros"] * tier.multiplier)
    options = {"billing_mode": mode, "spend_cap_micros": None if cap < 0 else cap, "carried_in": carried}
    spend = run_batch(plan, cumulative, **options).total_micros - run_close(plan, cumulative, **options).total_micros
    pending = 0
    for r in open_sessions:  # as the close would bill them, before its own lines
        try:
            ms = billable_measurements(plan, orjson.loads(r["measurements"]))
            ctx = run_event(plan, orjson.loads(r["dimensions"]), ms, cumulative, aggregate=True, **options)
        except RatingError:  # the rater will dead-letter it: not on the invoice
            continue
        cumulative, pending = ctx.cumulative_after, pending + ctx.total_micros
    batch = run_batch(plan, cumulative, **options)
    close = run_close(plan, cumulative, **options)

    lines = [{"kind": ln.kind, "description": describe(ln.kind, ln.charge_id, ln.metric, ln.dimension_key),
              "charge_id": ln.charge_id, "metric": ln.metric, "dimension_key": ln.dimension_key,
              "quantity": str(ln.quantity), "amount": format_micros(ln.amount_micros)}
             for ln in sorted(batch.lines, key=lambda x: (_ORDER.get(x.kind, 5), x.charge_id, x.metric or "",
                                                          x.dimension_key))]
    for kind, amount, desc in (("true_up", batch.commit_true_up_micros, "minimum commit true-up"),
                               ("discount", -batch.discount_micros, "discounts"),
                               ("tax", batch.tax_micros, "tax")):
        if amount:
            lines.append({"kind": kind, "description": desc, "charge_id": None, "metric": None, "dimension_key": None,
                          "quantity": "0", "amount": format_micros(amount)})

    # The tier: the one recorded, or the one this period's spend reached if settlement promoted
    # it since (settle.lua promotes in Redis first); the next tier's threshold, if any.
    current = max(tier_index(plan, row["tier"]), tier_reached(plan, spend))
    nxt = plan.tiers[current + 1] if current + 1 < len(plan.tiers) else None
    start, end = period_bounds(period, plan.billing_anchor_day)
    return {
        "customer_id": customer_id, "period": period, "period_start": start.isoformat(),
        "period_end": end.isoformat(), "plan_id": plan.id, "currency": plan.currency, "billing_mode": mode,
        "lines": lines,
        "subtotal": format_micros(batch.charges_micros + batch.commit_true_up_micros),
        "discount": format_micros(batch.discount_micros), "tax": format_micros(batch.tax_micros),
        "total": format_micros(batch.total_micros),
        "spend_to_date": format_micros(spend),  # what the events so far were charged
        "pending_sessions": {"count": len(open_sessions), "amount": format_micros(pending)},
        "close": {"lines": [{"kind": ln.kind, "description": describe(ln.kind, ln.charge_id),
                             "amount": format_micros(ln.amount_micros)} for ln in close.lines],
                  "commit_true_up": format_micros(close.commit_true_up_micros),
                  "total": format_micros(close.total_micros)},
        # Included quotas per charge and key: the plan's units plus those carried in, used, left,
        # and what a rollover charge would carry into the next period if it closed now.
        "allowances": [{**a, **{k: str(a[k]) for k in ("included_units", "carried_in", "allowance", "used",
                                                        "remaining")},
                        "carried_out": None if a["carried_out"] is None else str(a["carried_out"])}
                       for a in allowances(plan, cumulative, carried)],
        "minimum_commit": format_micros(plan.minimum_commit_micros),
        "projected_commit_true_up": format_micros(batch.commit_true_up_micros),
        "balance": wallet,
        "tier": plan.tiers[current].name,
        "next_tier": None if nxt is None else {"name": nxt.name, "threshold": format_micros(nxt.threshold_micros),
                                               "remaining": format_micros(max(0, nxt.threshold_micros - spend))},
    }
