"""`tollgate credits ...` and `tollgate wallets adjust`: credit grants, wallet adjustments,
auto-recharge settings, over the same services as the admin API."""
from __future__ import annotations

import argparse

from control.credits import adjustments, auto_recharge, grants as credit_grants
from tollgate.cli import Context, command, group, table


def register(sub: argparse._SubParsersAction) -> None:
    w = group(sub, "wallets", "prepaid wallets")
    p = command(w, "adjust", wallets_adjust, "credit or debit a wallet with a reason; the same --id twice applies once")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p.add_argument("--amount", required=True, help="currency units; a leading '-' debits, e.g. -2.50")
    p.add_argument("--reason", required=True)
    p.add_argument("--id", dest="adjustment_id", metavar="ID", help="idempotency id (default: generated)")
    p.add_argument("--allow-negative", action="store_true", help="let a debit take the balance below zero")

    g = group(sub, "credits", "credit grants and auto-recharge")
    p = command(g, "grant", credits_grant, "give credit, spent before top-ups by priority; what is left at expiry is removed")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p.add_argument("--amount", required=True, help="currency units, e.g. 20.00")
    p.add_argument("--kind", default="promotional", help="promotional (default) | purchased")
    p.add_argument("--priority", type=int, help="0-100, lower is spent first (default: promotional 10, purchased 50)")
    p.add_argument("--expires-at", metavar="TIME", help="RFC 3339, e.g. 2026-12-31T00:00:00Z (default: never)")
    p.add_argument("--id", dest="grant_id", metavar="ID", help="idempotency id (default: generated)")
    p.add_argument("--note")
    p = command(g, "list", credits_list, "a customer's credit grants, in spending order")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    command(g, "expire", credits_expire, "expire the grants that are due now (the control process does it every second)")
    p = command(g, "auto-recharge", credits_auto_recharge,
                "show, or with --threshold and --amount set, low-balance auto-recharge")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p.add_argument("--threshold", help="request a recharge below this balance (currency units)")
    p.add_argument("--amount", help="the recharge the payment system should top up")
    p.add_argument("--disable", action="store_true", help="keep the settings, request nothing")



async def wallets_adjust(ctx: Context) -> None:
    a = ctx.args
    async with ctx.backends() as (db, redis):
        r = await adjustments.adjust(db, redis, a.customer_id, a.amount, a.reason, adjustment_id=a.adjustment_id,
                                     allow_negative=a.allow_negative)
    what = "applied" if r["applied"] else "already applied, not applied again"
    ctx.emit(r, f"adjustment {r['id']} of {r['amount']} ({r['reason']}) {what}; balance {r['balance']}")


async def credits_grant(ctx: Context) -> None:
    a = ctx.args
    async with ctx.backends() as (db, redis):
        g = await credit_grants.create_grant(db, redis, a.customer_id, a.amount, kind=a.kind, priority=a.priority,
                                             expires_at=a.expires_at, grant_id=a.grant_id, note=a.note)
    what = "credited" if g["credited"] else "already given, not credited again"
    ctx.emit(g, f"credit grant {g['id']} ({g['kind']}, priority {g['priority']}) of {g['amount']} {what}, "
                f"expires {g['expires_at'] or 'never'}; balance {g['balance']}")


async def credits_list(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        rows = await credit_grants.list_grants(db, ctx.args.customer_id)
    ctx.emit(rows, table(rows, ["id", "kind", "priority", "amount", "remaining", "expires_at", "status", "expired_amount"]))


async def credits_expire(ctx: Context) -> None:
    async with ctx.backends() as (db, redis):
        rows = await credit_grants.expire_due(db, redis)
    ctx.emit(rows, f"{len(rows)} grant(s) expired" + "".join(
        f"\n  {g['id']} ({g['customer_id']}): {g['expired_amount']} removed" for g in rows))


async def credits_auto_recharge(ctx: Context) -> None:
    a = ctx.args
    async with ctx.backends() as (db, _):
        if a.threshold is None and a.amount is None and not a.disable:
            s = await auto_recharge.get_settings(db, a.customer_id)
        else:
            current = await auto_recharge.get_settings(db, a.customer_id)
            s = await auto_recharge.put_settings(db, a.customer_id, a.threshold or current["threshold"],
                                                 a.amount or current["amount"], not a.disable)
    text = (f"auto-recharge of {s['customer_id']}: below {s['threshold']} request a top-up of {s['amount']}"
            f" ({'enabled' if s['enabled'] else 'disabled'}; {s['requests']} request(s) so far)"
            if s["threshold"] else f"auto-recharge of {s['customer_id']}: not set")
    ctx.emit(s, text)
