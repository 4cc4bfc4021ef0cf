"""Rollover in the rater: the units carried into a period (read for rating), and the carry the
period close writes, with its credit for the next period's events rated before it.

The rule is tollgate.rating.rollover's. Where the carry lives: `rating_rollovers` (migration 0016),
one row per (customer, period carried into, charge, dimension key). The close of P writes P+1's
rows in the transaction that writes P's invoice, and in the same transaction credits P+1 for
what its events so far were charged beyond the new quota (run_rollover: F_new(q) - F_old(q) at
P+1's cumulatives, a processed_events row of kind 'rollover', id `rollover_<P+1>_<customer>`,
ledger lines of kind 'rollover', settled on Redis like the close). The rater rates every later
event of P+1 with the new quota: it reads the rows under the customer's lock group, so an event
is rated either before the close's commit (then the credit covers it) or after (with the rows).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

from rater import grants, ledger
from rater.ledger import Processed
from tollgate.periods import next_period
from tollgate.plans import Plan
from tollgate.rating.pricing import UsageKey
from tollgate.rating.rollover import applicable
from tollgate.rating.stages.pipeline import run_rollover
from tollgate.rollovers import read

log = logging.getLogger(__name__)

MAX_FINAL = 50_000  # (customer, period) whose carried-in units are final, remembered by the rater


def credit_id(customer_id: str, period: str) -> str:
    return f"rollover_{period}_{customer_id}"


class CarriedIn:
    """The rater's view: units carried into each (customer, period) it rates, read only for
    customers whose plan has rollover; once final, remembered (no query for them again)."""

    def __init__(self) -> None:
        self._final: dict[tuple[str, str], dict[UsageKey, int]] = {}

    async def load(self, conn, wanted: Mapping[tuple[str, str], Plan]) -> dict[tuple[str, str], Mapping[UsageKey, int]]:
        """wanted: (customer, period) -> the plan its events are rated with (a rollover plan).
        Read under the customers' lock groups: a close that carries units into one of these
        periods has committed (then they are here) or has not started (its credit covers the
        events rated now)."""
        if not wanted:
            return {}
        raw = {k: self._final[k] for k in wanted if k in self._final}
        missing = [k for k in wanted if k not in raw]
        if missing:
            if len(self._final) > MAX_FINAL:
                self._final.clear()
            for key, (carried, final) in (await read(conn, missing)).items():
                raw[key] = carried
                if final:
                    self._final[key] = carried
        return {k: applicable(plan, raw[k]) for k, plan in wanted.items()}


async def carry(conn, customer_id: str, period: str, carried_out: dict[UsageKey, int], nxt, *,
                wallet_available_micros: int) -> Processed | None:
    """Inside the close's transaction: record what `period` carries into the next and credit the
    next period's events rated so far. `nxt`: the Customer the next period is rated as (its plan,
    mode, cap: a pending plan change included). Returns the credit's processed row (to settle
    after the commit), or None when nothing was needed. The next period already invoiced (closed
    out of order) takes nothing: its invoice is final."""
    into = next_period(period)
    carried = applicable(nxt.plan, carried_out)
    if not carried:
        return None
    if await conn.fetchval("SELECT 1 FROM invoices WHERE customer_id = $1 AND period = $2", customer_id, into):
        log.warning("%s: %s is invoiced already; the units %s carries are not carried", customer_id, into, period)
        return None
    # Nothing was carried into `into` before: only this close carries into it, and it runs once.
    before: dict[UsageKey, int] = {}
    cumulative = (await ledger.read_cumulatives(conn, [(customer_id, into)]))[(customer_id, into)]
    so_far = (await ledger.routed_so_far(conn, [(customer_id, into)]))[(customer_id, into)]
    ctx = run_rollover(nxt.plan, cumulative, before, carried, billing_mode=nxt.billing_mode,
                       spend_cap_micros=nxt.spend_cap_micros, wallet_available_micros=wallet_available_micros,
                       wallet_paid_micros=so_far[0], invoice_due_micros=so_far[1])
    credit = None
    if ctx.lines or ctx.total_micros:
        eid = credit_id(customer_id, into)
        plan_id = nxt.plan.id
        lines = [ledger.line(eid, n, None, customer_id, plan_id, into, ln.kind, ln.charge_id, ln.metric,
                             ln.dimension_key, ln.quantity, ln.unit_price, ln.amount_micros)
                 for n, ln in enumerate(ctx.lines)]
        for kind, amount in (("discount", -ctx.discount_micros), ("tax", ctx.tax_micros)):
            if amount:
                lines.append(ledger.line(eid, len(lines), None, customer_id, plan_id, into, kind, kind, None,
                                         "default", 0, None, amount))
        seq = (await ledger.last_seqs(conn, [customer_id]))[customer_id] + 1  # settled in sequence, after the close
        credit = Processed(eid, "rollover", customer_id, into, ctx.total_micros, ctx.wallet_micros,
                           ctx.invoice_micros, None, 0, None, None, seq)
        await ledger.insert_processed(conn, [credit])
        await ledger.copy_lines(conn, lines)
        await grants.spend_grants(conn, [credit])
    await conn.executemany(
        """INSERT INTO rating_rollovers (customer_id, period, charge_id, dimension_key, units, from_period, credit_event_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        [(customer_id, into, cid, k, units, period, credit.event_id if credit else None)
         for (cid, k), units in sorted(carried.items())])
    return credit
