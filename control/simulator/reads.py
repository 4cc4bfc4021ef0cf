"""The simulator's inputs for a period, for many customers at once: a handful of statements,
never one per customer (10,000 customers are one read each of the rollups, the invoices and the
cumulatives).

- usage: the period's rollups (usage_rollups_daily, plus usage_rollup_deltas not compacted yet,
  read in one statement so a compaction between two reads cannot count a row twice or never),
  summed per (dimension set, outcome, metric). Rollups are per UTC day and every period starts at
  00:00 UTC on its anchor day, so the days are the period exactly.
- current: the period's invoice and its lines where the period is closed; otherwise the
  period's rating_cumulatives (what the close will invoice: control.read.preview's rule).
- carried: the units rollover carried into the period (tollgate.rollovers).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import orjson

from tollgate.plans import Plan
from tollgate.rating.pricing.base import UsageKey
from tollgate.rollovers import read as read_carried

# Invoice lines that are not charges: what the wallet paid, units carried in and out (amount 0).
NOT_CHARGES = ("prepaid", "carried_in", "carried_out")
WORK_MEM = "256MB"  # for the rollup read's aggregate (a session setting of that one transaction)


@dataclass
class CustomerInputs:
    id: str
    row: asyncpg.Record  # the customers row
    plan: Plan  # its plan today (negotiated prices not applied)
    start: datetime
    end: datetime
    # (dims JSON text, outcome) -> metric -> units: the period's usage as the rollups have it
    usage: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    invoice: asyncpg.Record | None = None
    invoice_lines: list[asyncpg.Record] = field(default_factory=list)
    cumulative: dict[UsageKey, int] = field(default_factory=dict)  # read only when not invoiced
    carried: dict[UsageKey, int] = field(default_factory=dict)


async def read_inputs(conn: asyncpg.Connection, customers: Sequence[asyncpg.Record], plans: dict[str, Plan],
                      period: str, bounds) -> dict[str, CustomerInputs]:
    """`customers`: customers rows; `plans`: plan id -> Plan; `bounds(plan)` -> the period's
    [start, end) under that plan's anchor day."""
    out: dict[str, CustomerInputs] = {}
    for r in customers:
        plan = plans[r["plan_id"]]
        start, end = bounds(plan)
        out[r["id"]] = CustomerInputs(r["id"], r, plan, start, end)
    if not out:
        return out
    ids = list(out)
    starts = [out[c].start for c in ids]
    ends = [out[c].end for c in ids]
    async with conn.transaction(readonly=True):
        # One analytic read of millions of rows: JIT compilation alone cost ~0.7 s of ~3 s, and the
        # default work_mem sorted on disk (a hash aggregate in memory is what it wants).
        await conn.execute("SET LOCAL jit = off")
        await conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
        rows = await conn.fetch(
            """WITH b(c, s, e) AS (SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]))
               SELECT u.customer_id, u.dims::text AS dims, u.outcome, u.metric, u.quantity
               FROM (SELECT customer_id, dims, outcome, metric, sum(quantity)::int8 AS quantity
                     FROM (SELECT d.customer_id, d.dims, d.outcome, d.metric, d.quantity
                           FROM b JOIN usage_rollups_daily d
                             ON d.customer_id = b.c AND d.day >= (b.s AT TIME ZONE 'UTC')::date
                                                    AND d.day < (b.e AT TIME ZONE 'UTC')::date
                           UNION ALL
                           SELECT x.customer_id, x.dims::jsonb, x.outcome, x.metric, x.quantity
                           FROM b JOIN usage_rollup_deltas x ON x.customer_id = b.c AND x.hour >= b.s AND x.hour < b.e
                          ) a
                     GROUP BY 1, 2, 3, 4) u
               WHERE u.quantity <> 0""", ids, starts, ends)
    for r in rows:
        out[r["customer_id"]].usage.setdefault((r["dims"], r["outcome"]), {})[r["metric"]] = r["quantity"]

    for r in await conn.fetch("SELECT * FROM invoices WHERE period = $1 AND customer_id = ANY($2::text[])",
                              period, ids):
        out[r["customer_id"]].invoice = r
    invoiced = [c for c in ids if out[c].invoice is not None]
    if invoiced:
        for r in await conn.fetch(
                """SELECT i.customer_id, l.line_no, l.kind, l.charge_id, l.metric, l.dimension_key, l.description,
                          l.quantity, l.amount_micros
                   FROM invoices i JOIN invoice_lines l ON l.invoice_id = i.id
                   WHERE i.period = $1 AND i.customer_id = ANY($2::text[]) AND l.kind <> ALL($3::text[])
                   ORDER BY i.customer_id, l.line_no""", period, invoiced, list(NOT_CHARGES)):
            out[r["customer_id"]].invoice_lines.append(r)
    open_ = [c for c in ids if out[c].invoice is None]
    if open_:
        for r in await conn.fetch(
                """SELECT customer_id, charge_id, dimension_key, quantity FROM rating_cumulatives
                   WHERE period = $1 AND customer_id = ANY($2::text[])""", period, open_):
            out[r["customer_id"]].cumulative[(r["charge_id"], r["dimension_key"])] = r["quantity"]
    for (cid, _), (carried, _final) in (await read_carried(conn, [(c, period) for c in ids])).items():
        out[cid].carried = carried
    return out


def dims_of(text: str) -> dict[str, str]:
    return orjson.loads(text) if text and text != "{}" else {}
