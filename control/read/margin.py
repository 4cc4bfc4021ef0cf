"""Margin: what a customer's usage was charged against what it cost the provider, per period,
from the daily rollups (price = amount_micros, cost = cost_micros; rater/rollups.py), never the
ledger: a period is ~31 rows per series.

price: what the usage was charged, discounts and percentage charges included, tax left out
(tax is not revenue). cost: the plan's costs and its cost catalog's (ledger cost_micros).
margin = price - cost; margin_percent = margin / price (null when nothing was charged).

Grouped by any of: day, metric, outcome (the composite charge whose price covered the row; '' =
outside any outcome: null), key (the API key), or a dimension (model, tool, ...). A grouping is
one entry of GROUPS (its SQL over a rollup row): `by=session` is one line there once the rollups
carry the session (a session_id column beside key_id).

The period is the customer's billing period (its plan's anchor day), its UTC days: usage is
counted by when it happened, so a late event billed in a later period counts in its own days.
The period's flat fees and commit true-up are written by the close, not by usage: not in it.
"""
from __future__ import annotations

import re
import time
from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from control.errors import InvalidInput
from control.lookup import require_customer, require_plan
from tollgate.money import format_micros
from tollgate.periods import is_period, period_bounds, period_of

# by= name -> its SQL over a rollup row (`b`: the UTC day). A dimension name not listed here is
# read out of the row's dims.
GROUPS = {
    "day": "b",
    "metric": "metric",
    "outcome": "nullif(outcome, '')",
    "key": "nullif(key_id, '')",
}
MAX_GROUPS = 4
NOT_REVENUE = ("tax",)  # rollup rows of ledger lines that are not the provider's revenue
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def parse_by(value: str | None) -> list[str]:
    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    if len(names) > MAX_GROUPS:
        raise InvalidInput("by", f"at most {MAX_GROUPS} names")
    for n in names:
        if not _NAME.match(n):
            raise InvalidInput("by", f"{n[:70]!r} is neither one of {', '.join(GROUPS)} nor a dimension name")
    if len(set(names)) != len(names):
        raise InvalidInput("by", "a name repeats")
    return names


def margin_figures(price: int, cost: int) -> dict:
    margin = price - cost
    pct = None if price == 0 else str((Decimal(margin) * 100 / Decimal(price)).quantize(Decimal("0.01"), ROUND_HALF_UP))
    return {"price": format_micros(price), "cost": format_micros(cost), "margin": format_micros(margin),
            "margin_percent": pct}


async def customer_margin(db: asyncpg.Pool, customer_id: str, *, period: str | None = None,
                          by: list[str] | None = None, now: float | None = None) -> dict:
    if period is not None and not is_period(period):
        raise InvalidInput("period", "must be a billing period, YYYYMM")
    by = by or []
    async with db.acquire() as conn:
        row = await require_customer(conn, customer_id)
        plan = await require_plan(conn, row["plan_id"])
        period = period or period_of(time.time() if now is None else now, plan.billing_anchor_day)
        start, end = period_bounds(period, plan.billing_anchor_day)
        rows = await _query(conn, customer_id, start.date(), end.date(), by)
    out_rows, total_price, total_cost = [], 0, 0
    for r in rows:
        price, cost = r["price"], r["cost"]
        total_price += price
        total_cost += cost
        if not by:
            continue  # the one row of sums is the total
        item = {name: (r[f"g{i}"].isoformat() if name == "day" else r[f"g{i}"]) for i, name in enumerate(by)}
        if "metric" in by:
            item["quantity"] = r["quantity"]
        out_rows.append({**item, **margin_figures(price, cost)})
    return {"customer_id": customer_id, "period": period, "period_start": start.isoformat(),
            "period_end": end.isoformat(), "currency": plan.currency, "by": by, "rows": out_rows,
            "total": margin_figures(total_price, total_cost)}


async def _query(conn, customer_id: str, start, end, by: list[str]) -> list[asyncpg.Record]:
    """One statement over usage_rollups_daily and the deltas not compacted yet (one snapshot, as
    control.read.usage): the period's days, summed by the groups asked for."""
    args: list = [customer_id, start, end, list(NOT_REVENUE)]
    cols = []
    for i, name in enumerate(by):
        expr = GROUPS.get(name)
        if expr is None:
            args.append(name)
            expr = f"dims ->> ${len(args)}"
        cols.append(f"{expr} AS g{i}")
    rollup = ("SELECT day AS b, metric, dims, key_id, outcome, quantity, amount_micros, cost_micros"
              " FROM usage_rollups_daily WHERE customer_id = $1 AND day >= $2 AND day < $3")
    day = "(hour AT TIME ZONE 'UTC')::date"
    deltas = (f"SELECT {day} AS b, metric, dims::jsonb, key_id, outcome, quantity, amount_micros, cost_micros"
              f" FROM usage_rollup_deltas WHERE customer_id = $1 AND {day} >= $2 AND {day} < $3")
    group = (" GROUP BY " + ", ".join(str(i + 1) for i in range(len(cols))) + " ORDER BY "
             + ", ".join(f"{i + 1} NULLS FIRST" for i in range(len(cols)))) if cols else ""
    sql = (f"SELECT {''.join(c + ', ' for c in cols)}"
           "coalesce(sum(amount_micros) FILTER (WHERE metric <> ALL($4::text[])), 0)::int8 AS price,"
           " coalesce(sum(cost_micros), 0)::int8 AS cost, coalesce(sum(quantity), 0)::int8 AS quantity"
           f" FROM ({rollup} UNION ALL {deltas}) r{group}")
    return await conn.fetch(sql, *args)
