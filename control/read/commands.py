"""The read API's `tollgate` commands: usage, preview, invoices (list, show, sources), trace.

Each calls the same service as the HTTP API (control.read.usage, control.read.preview, control.read.invoices,
control.read.trace); `--json` prints exactly what the API answers."""
from __future__ import annotations

import argparse

from control.read import invoices, preview, trace, usage
from tollgate.cli import Context, command, group, table


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "usage", usage_cmd, "usage of a customer (or one API key) by metric and dimension, per hour or day")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--customer", dest="customer_id", metavar="CUSTOMER")
    who.add_argument("--key", dest="key_id", metavar="KEY", help="one API key's usage")
    p.add_argument("--from", dest="start", metavar="WHEN", help="ISO date or date-time, UTC (default: 30 days ago)")
    p.add_argument("--to", dest="end", metavar="WHEN", help="exclusive (default: now)")
    p.add_argument("--bucket", default="day", choices=usage.BUCKETS)
    p.add_argument("--group-by", default="", metavar="NAMES", help="dimensions (model,tool,...) and/or key")
    p.add_argument("--metric")

    p = command(sub, "preview", preview_cmd, "the current period's invoice so far, tier and balance")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")

    g = group(sub, "invoices", "invoices written by the period close")
    p = command(g, "list", invoices_list, "a customer's invoices, newest first")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p.add_argument("--limit", type=int, default=100)
    p = command(g, "show", invoices_show, "an invoice and its lines")
    p.add_argument("invoice_id")
    p = command(g, "sources", invoices_sources, "the ledger lines (and correlation ids) an invoice line sums")
    p.add_argument("invoice_id")
    p.add_argument("line_no", type=int)
    p.add_argument("--limit", type=int, default=100)

    p = command(sub, "trace", trace_cmd, "a request by correlation id: hold, usage events, ledger, settlement")
    p.add_argument("correlation_id")



async def usage_cmd(ctx: Context) -> None:
    a = ctx.args
    options = {"start": usage.parse_time(a.start, "from"), "end": usage.parse_time(a.end, "to"), "bucket": a.bucket,
               "group_by": usage.parse_group_by(a.group_by), "metric": a.metric}
    async with ctx.backends() as (db, _):
        out = await (usage.key_usage(db, a.key_id, **options) if a.key_id else
                     usage.customer_usage(db, a.customer_id, **options))
    dims = [g for g in out["group_by"] if g != "key"]
    rows = [{"bucket": r["bucket"][:13 if a.bucket == "hour" else 10], "metric": r["metric"],
             **{d: (r.get("dimensions") or {}).get(d) for d in dims},
             **({"key": r.get("key_id")} if "key" in out["group_by"] else {}),
             "quantity": r["quantity"], "amount": r["amount"], "events": r["events"]} for r in out["rows"]]
    cols = ["bucket", "metric", *dims, *(["key"] if "key" in out["group_by"] else []), "quantity", "amount", "events"]
    totals = table(out["totals"], ["metric", "quantity", "amount", "events"])
    ctx.emit(out, f"{out['customer_id']}  {out['from']} .. {out['to']}  per {out['bucket']}\n"
                  f"{table(rows, cols)}\n\ntotals\n{totals}")


async def preview_cmd(ctx: Context) -> None:
    async with ctx.backends() as (db, redis):
        pv = await preview.preview(db, redis, ctx.args.customer_id)
    nxt = pv["next_tier"]
    head = (f"{pv['customer_id']}  period {pv['period']} ({pv['period_start'][:10]} .. {pv['period_end'][:10]})  "
            f"{pv['currency']} {pv['billing_mode']}\n"
            f"spend to date {pv['spend_to_date']}  total if closed now {pv['total']}  "
            f"(commit true-up {pv['projected_commit_true_up']}, discount {pv['discount']}, tax {pv['tax']})\n"
            f"balance {pv['balance']['balance']} (available {pv['balance']['available']})  tier {pv['tier']}"
            + (f", next {nxt['name']} at {nxt['threshold']} ({nxt['remaining']} to go)" if nxt else "") + "\n")
    quotas = ("\nincluded quotas (units)\n" + table(pv["allowances"], [
        "charge_id", "dimension_key", "included_units", "carried_in", "allowance", "used", "remaining", "carried_out"])
        if pv["allowances"] else "")
    ctx.emit(pv, head + table(pv["lines"], ["description", "quantity", "amount"]) + quotas)


async def invoices_list(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        found = await invoices.list_invoices(db, ctx.args.customer_id, limit=ctx.args.limit)
    ctx.emit(found, table(found, ["invoice_id", "period", "total", "prepaid", "amount_due", "currency", "status"]))


async def invoices_show(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        inv = await invoices.get_invoice(db, ctx.args.invoice_id)
    head = (f"{inv['invoice_id']}  {inv['customer_id']}  {inv['period']}  {inv['currency']}\n"
            f"total {inv['total']}  prepaid {inv['prepaid']}  amount due {inv['amount_due']}\n")
    ctx.emit(inv, head + table(inv["lines"], ["line_no", "description", "quantity", "amount", "ledger_lines"]))


async def invoices_sources(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        out = await invoices.line_sources(db, ctx.args.invoice_id, ctx.args.line_no, limit=ctx.args.limit)
    ctx.emit(out, table(out["sources"], ["event_id", "line_no", "correlation_id", "quantity", "amount"]))


async def trace_cmd(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        t = await trace.trace(db, ctx.args.correlation_id)
    parts = [f"trace {t['correlation_id']}"]
    for h in t["holds"]:
        parts.append(f"  hold {h['hold_id']}  {h['amount']}  {h['status']}"
                     + "".join(f"\n    {x['kind']} {x['amount']} {x['at']}" for x in h["lifecycle"]))
    for e in t["events"]:
        s = e["settlement"]
        parts.append(f"  event {e['event_id']}  period {e['period']}  spend {s['spend']} (wallet {s['wallet']},"
                     f" invoice {s['invoice']}, seq {s['settle_seq']})")
        parts += [f"    line {ln['line_no']} {ln['kind']} {ln['charge_id']} [{ln['dimension_key']}] x{ln['quantity']}"
                  f" = {ln['amount']}" for ln in e["ledger_lines"]]
    parts += [f"  tier {x['old_tier']} -> {x['new_tier']} at {x['at']}" for x in t["tier_transitions"]]
    ctx.emit(t, "\n".join(parts))
