"""Margin from the usage rollups (price = amount_micros, cost = cost_micros; rater/rollups.py),
never the ledger: a period is ~31 daily rows per series. Shared by the read API
(control.read.margin: grouped) and the rater's Margin Guard (rater.margin_guard: a period's total).

price: what the usage was charged, discounts and percentage charges included, tax left out (tax is
not revenue). margin = price - cost; margin_percent = margin / price (null when nothing was charged).
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from tollgate.money import format_micros

# by= name -> its SQL over a rollup row (`b`: the UTC day). A dimension name not listed here is
# read out of the row's dims.
GROUPS = {
    "day": "b",
    "metric": "metric",
    "outcome": "nullif(outcome, '')",
    "key": "nullif(key_id, '')",
}
NOT_REVENUE = ("tax",)  # rollup rows of ledger lines that are not the provider's revenue


def margin_figures(price: int, cost: int) -> dict:
    margin = price - cost
    pct = None if price == 0 else str((Decimal(margin) * 100 / Decimal(price)).quantize(Decimal("0.01"), ROUND_HALF_UP))
    return {"price": format_micros(price), "cost": format_micros(cost), "margin": format_micros(margin),
            "margin_percent": pct}


async def margin_rows(conn, customer_id: str, start, end, by: list[str]) -> list[asyncpg.Record]:
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
