"""Period close: one invoice per customer and period, its lines tracing to correlation_ids.

Periods follow each customer's plan: calendar months unless `billing_period.anchor_day` says
otherwise (tollgate.periods); the id is the 'YYYYMM' of the month a period starts in.
Month-to-date counters need no reset job: cumulatives (rating_cumulatives) and spend
(`tg:{c}:spend:<YYYYMM>`) are keyed by period, so a new period starts from zero by construction.
Closing period P (by default each customer's last period that is over), for each customer that
existed in it and whose P is over (an anchored plan's P ends after calendar month P: until then
the customer is skipped, reported as `open_until`):
1. the close step of the stages (tollgate.rating.stages.pipeline.run_close) over P's cumulatives: flat
   fees, percentage minimums, the minimum-commit true-up, and the discount and tax on them;
2. in one transaction: the close's own processed_events row (kind 'close', so `redis rebuild`
   counts its wallet debit and spend like any event's) and ledger lines, the invoice and its
   lines; then the close is settled on Redis like an event (idempotent by its id);
3. checks before anything is written: the invoice total equals the period's recorded spend plus
   the close, and equals the batch rating of P's totals (tollgate.rating.stages.pipeline.run_batch);
4. rollover (rater.rollovers): the units P carries into P+1 (tollgate.rating.rollover), and in
   the same transaction the credit for P+1's events rated before they were known; the invoice
   shows the units carried in and out per charge and key (lines of amount 0);
5. the spend tier it enters the next period with (rater.tiers.reset_for_next_period): the tier
   P's spend reached, never lower than what the new period's own spend has already reached;
   customers.tier, a tier_transitions row (reason 'period_reset') and Redis cfg `tier`. Only
   when the period after P is the customer's current one.
0. before anything: the customer's agent sessions still open in P (or before) are closed and
   billed (rater.sessions, close_reason 'period_close'), so the invoice has them all;
Idempotent: a customer already invoiced for P is not invoiced again (its close is re-settled and
its tier reset re-applied, in case the previous run died between the commit and Redis). Events
of P that arrive after its close are billed in the period they arrive in (rater.pipeline).

An invoice line of kind 'usage' (and 'discount'/'tax') sums the ledger lines with its
(customer, period, kind, charge, dimension key): `tollgate.invoices.line_sources` lists them, with each line's
correlation_id, so every amount traces back to the requests that caused it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import asyncpg

from rater import grants, ledger, rollovers
from rater.ledger import Processed
from rater.pipeline import Directory, Pipeline
from rater.plan_changes import apply_pending, repriced_in
from rater.settlement import fill_from, item_of, settle_filling
from rater.tiers import reset_for_next_period
from tollgate import locks
from tollgate.keys import CustomerKeys
from tollgate.periods import next_period, period_bounds, period_of, prev_period
from tollgate.invoices import describe, invoice, summary
from tollgate.rating.rollover import applicable, carried_out
from tollgate.rating.stages.pipeline import run_batch, run_close
from tollgate.rollovers import read as read_carried

log = logging.getLogger(__name__)


class PeriodCloseError(RuntimeError):
    pass


@dataclass
class InvoiceLine:
    kind: str
    description: str
    amount_micros: int
    quantity: int = 0
    charge_id: str | None = None
    metric: str | None = None
    dimension_key: str | None = None
    ledger_kinds: tuple[str, ...] = ()
    ledger_lines: int = 0


def previous_period(now: float | None = None, anchor_day: int = 1) -> str:
    """The last period that is over at `now` (default: calendar months)."""
    return prev_period(period_of(time.time() if now is None else now, anchor_day))


def close_id(customer_id: str, period: str) -> str:
    return f"close_{period}_{customer_id}"


async def close_period(pool: asyncpg.Pool, redis, period: str | None, *, customer_ids: list[str] | None = None,
                       now: float | None = None, allow_open: bool = False) -> list[dict]:
    """Close `period` (None: each customer's last period that is over, by its plan's anchor day)
    for every customer that existed in it (or the given ones); one summary per customer: an
    invoice, `error`, or `open_until` (its plan's period `period` is not over yet)."""
    now = time.time() if now is None else now
    if period is not None:
        try:
            period_bounds(period)
        except ValueError as e:
            raise PeriodCloseError(str(e)) from None
    # No anchor day ends period P before calendar month P is over: that one is refused outright.
    if period is not None and not allow_open and period >= period_of(now):
        raise PeriodCloseError(f"period {period} is not over yet (events may still arrive for it)")
    directory = Directory(ttl_s=0)
    sessions = Pipeline(pool, redis, cache_ttl_s=0)  # bills the agent sessions still open first
    out: list[dict] = []
    async with pool.acquire() as conn:
        if customer_ids is None:
            rows = await conn.fetch("SELECT id, created_at FROM customers ORDER BY id")
        else:
            rows = [(cid, None) for cid in customer_ids]
        for cid, created_at in rows:
            customer = await directory.customer(conn, cid)
            p = period
            if customer is not None:
                anchor = customer.plan.billing_anchor_day
                p = period or previous_period(now, anchor)
                end = period_bounds(p, anchor)[1]
                if created_at is not None and created_at >= end:
                    continue  # not a customer yet in that period
                if not allow_open and end.timestamp() > now:
                    out.append({"customer_id": cid, "period": p, "open_until": end.isoformat()})
                    continue
            group = locks.lock_group(cid)
            await locks.lock_group_wait(conn, group)  # no event of this customer is rated meanwhile
            try:
                if customer is None:
                    raise PeriodCloseError(f"no customer {cid!r}")
                closed = await sessions.close_sessions_locked(conn, cid, p, now)
                if closed.dead:
                    raise PeriodCloseError(f"{len(closed.dead)} agent sessions could not be rated"
                                           f" ({closed.dead[0].reason}: {closed.dead[0].detail}): see dead letters")
                summary = await _close_customer(conn, redis, customer, p, now)
                out.append({**summary, **await apply_pending(conn, redis, cid, p)})  # a plan change at this boundary
            except PeriodCloseError as e:  # reported; the other customers are still invoiced
                log.error("closing %s for %s failed: %s", p, cid, e)
                out.append({"customer_id": cid, "period": p, "error": str(e)})
            finally:
                await locks.unlock_group(conn, group)
    return out


async def _close_customer(conn, redis, customer, period: str, now: float) -> dict:
    customer_id = customer.id
    eid = close_id(customer_id, period)
    existing = await conn.fetchrow("SELECT * FROM invoices WHERE customer_id = $1 AND period = $2", customer_id, period)
    if existing is not None:
        credit = rollovers.credit_id(customer_id, next_period(period))
        done = await ledger.processed(conn, [eid, credit])
        if done:  # the close, and the rollover credit it gave the next period
            await settle_filling(redis, [item_of(p) for p in sorted(done.values(), key=lambda p: p.settle_seq)],
                                 fill_from(conn), now=now)
        tier = await reset_for_next_period(conn, redis, customer_id, customer.plan, period, now)
        return {**summary(existing), **tier, "already_closed": True}

    plan = customer.plan
    cumulative = (await ledger.read_cumulatives(conn, [(customer_id, period)]))[(customer_id, period)]
    carried_in = applicable(plan, (await read_carried(conn, [(customer_id, period)]))[(customer_id, period)][0])
    wallet = int(await redis.get(CustomerKeys(customer_id).wallet) or 0) if customer.billing_mode == "hybrid" else 0
    ctx = run_close(plan, cumulative, billing_mode=customer.billing_mode, carried_in=carried_in,
                    spend_cap_micros=customer.spend_cap_micros, wallet_available_micros=wallet)
    nxt = customer.next[1] if customer.next and next_period(period) >= customer.next[0] else customer
    carry_out = applicable(nxt.plan, carried_out(plan, cumulative, carried_in)) if plan.has_rollover else {}

    lines = await _ledger_summary(conn, customer_id, period)
    close_ledger: list[tuple] = []
    n = 0
    for ln in ctx.lines:  # flat fees, percentage minimums
        close_ledger.append(ledger.line(eid, n, None, customer_id, plan.id, period, ln.kind, ln.charge_id, ln.metric,
                                        ln.dimension_key, ln.quantity, ln.unit_price, ln.amount_micros))
        lines.append(InvoiceLine(ln.kind, describe(ln.kind, ln.charge_id), ln.amount_micros, ln.quantity,
                                 ln.charge_id, ln.metric, ln.dimension_key))
        n += 1
    for kind, amount, desc in (("true_up", ctx.commit_true_up_micros, "minimum commit true-up"),
                               ("discount", -ctx.discount_micros, "discounts on the close"),
                               ("tax", ctx.tax_micros, "tax on the close")):
        if amount:
            close_ledger.append(ledger.line(eid, n, None, customer_id, plan.id, period, kind, kind, None, "default",
                                            0, None, amount))
            lines.append(InvoiceLine(kind, desc, amount))
            n += 1

    subtotal = sum(x.amount_micros for x in lines if x.kind not in ("discount", "tax"))
    discount = -sum(x.amount_micros for x in lines if x.kind == "discount")
    tax = sum(x.amount_micros for x in lines if x.kind == "tax")
    total = subtotal - discount + tax
    spent = await conn.fetchval(
        "SELECT coalesce(sum(spend_micros), 0)::int8 FROM processed_events WHERE customer_id = $1 AND period = $2",
        customer_id, period)
    prepaid = await conn.fetchval(
        "SELECT coalesce(sum(wallet_micros), 0)::int8 FROM processed_events WHERE customer_id = $1 AND period = $2",
        customer_id, period) + ctx.wallet_micros
    if total != spent + ctx.total_micros:
        raise PeriodCloseError(f"{customer_id} {period}: ledger {total} != recorded spend {spent} + close {ctx.total_micros}")
    batch = run_batch(plan, cumulative, billing_mode=customer.billing_mode, spend_cap_micros=customer.spend_cap_micros,
                      carried_in=carried_in)
    # A period whose prices changed midway (control.accounts.lifecycle: plan change now, negotiated prices)
    # was rated under two price lists: no single batch rating can match it, the ledger is the truth.
    if batch.total_micros != total and not await repriced_in(conn, customer_id, period):
        raise PeriodCloseError(f"{customer_id} {period}: real-time total {total} != batch rating {batch.total_micros}")
    # Units carried in and out (rollover): amount 0, for the reader; the credit for the carry in
    # is the usage's 'rollover' ledger lines, above.
    charge_of = {c.id: c for c in plan.charges}
    for kind, carried, other in (("carried_in", carried_in, prev_period(period)), ("carried_out", carry_out,
                                                                                 next_period(period))):
        for (cid, dim), units in sorted(carried.items()):
            lines.append(InvoiceLine(kind, describe(kind, cid, charge_of[cid].metric, dim, other), 0, units, cid,
                                     charge_of[cid].metric, dim))
    lines.append(InvoiceLine("prepaid", "paid from the prepaid wallet", -prepaid))

    inv_id = f"inv_{period}_{customer_id}"
    async with conn.transaction():
        seq = (await ledger.last_seqs(conn, [customer_id]))[customer_id] + 1  # settled in sequence, like an event
        close = Processed(eid, "close", customer_id, period, ctx.total_micros, ctx.wallet_micros, ctx.invoice_micros,
                          None, 0, None, None, seq)
        await ledger.insert_processed(conn, [close])
        await ledger.copy_lines(conn, close_ledger)
        await grants.spend_grants(conn, [close])
        row = await conn.fetchrow(
            """INSERT INTO invoices (id, customer_id, period, plan_id, currency, billing_mode, subtotal_micros,
                   discount_micros, tax_micros, total_micros, prepaid_micros, amount_due_micros)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING *""",
            inv_id, customer_id, period, plan.id, plan.currency, customer.billing_mode, subtotal, discount, tax,
            total, prepaid, total - prepaid)
        await conn.executemany(
            """INSERT INTO invoice_lines (invoice_id, line_no, kind, charge_id, metric, dimension_key, description,
                   quantity, amount_micros, ledger_kinds, ledger_lines)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
            [(inv_id, i, x.kind, x.charge_id, x.metric, x.dimension_key, x.description, x.quantity,
              x.amount_micros, list(x.ledger_kinds), x.ledger_lines) for i, x in enumerate(lines)])
        credit = await rollovers.carry(conn, customer_id, period, carry_out, nxt, wallet_available_micros=(
            wallet - ctx.wallet_micros if nxt.billing_mode == "hybrid" else 0)) if carry_out else None
    # even at zero: its number advances the mark; then the rollover credit, the next number
    await settle_filling(redis, [item_of(close)] + ([item_of(credit)] if credit else []), fill_from(conn), now=now)
    tier = await reset_for_next_period(conn, redis, customer_id, plan, period, now)
    return {**summary(row), **tier, "already_closed": False}


async def _ledger_summary(conn, customer_id: str, period: str) -> list[InvoiceLine]:
    """The period's ledger, one invoice line per (kind, charge, metric, dimension key). Lines of
    kind 'cost' (amount 0, the provider's cost of an unbilled metric) are not the customer's."""
    rows = await conn.fetch(
        """SELECT kind, charge_id, metric, dimension_key, sum(quantity)::int8 AS quantity,
                  sum(amount_micros)::int8 AS amount, count(*) AS n
           FROM ledger_lines WHERE customer_id = $1 AND period = $2 AND kind <> 'cost'
           GROUP BY kind, charge_id, metric, dimension_key
           ORDER BY CASE kind WHEN 'usage' THEN 0 WHEN 'rollover' THEN 1 WHEN 'metered' THEN 1 WHEN 'percentage' THEN 2
                              WHEN 'discount' THEN 8 WHEN 'tax' THEN 9 ELSE 5 END, charge_id, metric, dimension_key""",
        customer_id, period)
    return [InvoiceLine(r["kind"], describe(r["kind"], r["charge_id"], r["metric"], r["dimension_key"]),
                        r["amount"], r["quantity"], r["charge_id"], r["metric"], r["dimension_key"],
                        (r["kind"],), r["n"]) for r in rows]


# ----------------------------------------------------------------------------- CLI


def register(sub) -> None:
    from tollgate.cli import command, group  # noqa: PLC0415

    g = group(sub, "periods", "billing periods: close them into invoices")
    p = command(g, "close", _close_cmd,
                "close a period: one invoice per customer, and the spend tier each enters the next period with")
    p.add_argument("--period", help="YYYYMM (default: each customer's last period that is over: the previous"
                                    " calendar month, UTC, unless its plan has a billing_period.anchor_day)")
    p.add_argument("--customer", action="append", help="only this customer (repeatable)")
    p = command(g, "invoice", _invoice_cmd, "show an invoice and its lines")
    p.add_argument("invoice_id")


async def _close_cmd(ctx) -> int:
    async with ctx.backends() as (pool, redis):
        out = await close_period(pool, redis, ctx.args.period, customer_ids=ctx.args.customer)
    from tollgate.cli import table  # noqa: PLC0415

    ctx.emit(out, table(out, ["invoice_id", "customer_id", "period", "total", "prepaid", "amount_due", "tier",
                              "already_closed", "open_until", "error"]))
    return 0


async def _invoice_cmd(ctx) -> int:
    async with ctx.backends() as (pool, _), pool.acquire() as conn:
        inv = await invoice(conn, ctx.args.invoice_id)
    if inv is None:
        raise PeriodCloseError(f"no invoice {ctx.args.invoice_id!r}")
    from tollgate.cli import table  # noqa: PLC0415

    head = (f"{inv['invoice_id']}  {inv['customer_id']}  {inv['period']}  {inv['currency']}\n"
            f"total {inv['total']}  prepaid {inv['prepaid']}  amount due {inv['amount_due']}\n")
    ctx.emit(inv, head + table(inv["lines"], ["line_no", "description", "quantity", "amount", "ledger_lines"]))
    return 0
