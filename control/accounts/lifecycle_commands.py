"""`tollgate customers ...` lifecycle commands over control.accounts.lifecycle (as the admin API):
plan, update, suspend, reactivate, archive, audit.

Every change names the version it was read at (`--version`, as `customers show` prints it): a
customer changed meanwhile is refused (exit 2, field `version`), never overwritten silently.
The audit records the operating-system user as `cli:<user>` (the CLI needs no token).
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from control.accounts import audit, lifecycle
from control.errors import InvalidInput
from tollgate.cli import Context, command, group, table


def register(sub) -> None:
    g = group(sub, "customers", "customers and their plans")
    p = command(g, "plan", customers_plan, "change a customer's plan, now or at the end of its period")
    p.add_argument("customer_id")
    p.add_argument("--plan", required=True, dest="plan_id", metavar="PLAN", help="the current plan cancels a pending change")
    p.add_argument("--effective", choices=lifecycle.EFFECTIVE,
                   help="default: period_end if the current or the new plan has a minimum commit, else now")
    _version(p)
    p = command(g, "update", customers_update, "change name, billing mode, spend cap or negotiated prices")
    p.add_argument("customer_id")
    p.add_argument("--name")
    p.add_argument("--billing-mode", metavar="MODE", help="prepaid | postpaid | hybrid")
    p.add_argument("--spend-cap", metavar="AMOUNT", help="monthly cap in currency units; 'plan' for the plan's again")
    p.add_argument("--prices", metavar="FILE", help="negotiated prices: a YAML/JSON list ('-' for stdin; [] for none)")
    _version(p)
    for action, text in (("suspend", "suspend: every check is DENY `suspended`, usage is still rated"),
                         ("reactivate", "make a suspended customer active again"),
                         ("archive", "archive (final): keys revoked, hidden from listings, no further change")):
        p = command(g, action, customers_status, text)
        p.add_argument("customer_id")
        p.set_defaults(action=action)
        _version(p)
    p = command(g, "audit", customers_audit, "every change of a customer, newest first: when, what, by whom")
    p.add_argument("customer_id")
    p.add_argument("--limit", type=int, default=100)


def _version(p) -> None:
    p.add_argument("--version", required=True, type=int, metavar="N",
                   help="the customer's version as read (customers show): refused if it changed since")



def _done(ctx: Context, c: dict, what: str) -> None:
    pending = c.get("pending_plan_change")
    then = f"; plan {pending['plan_id']} from period {pending['from_period']}" if pending else ""
    ctx.emit(c, f"customer {c['id']} {what}: plan {c['plan_id']}{then}, {c['billing_mode']}, {c['status']},"
                f" version {c['version']}")


async def customers_plan(ctx: Context) -> None:
    a = ctx.args
    async with ctx.backends() as (db, redis):
        c = await lifecycle.change_plan(db, redis, a.customer_id, a.plan_id, effective=a.effective,
                                        version=a.version, actor=audit.cli_actor())
    _done(ctx, c, "plan changed" if c["plan_id"] == a.plan_id else "plan change pending")


async def customers_update(ctx: Context) -> None:
    a = ctx.args
    changes: dict = {}
    if a.name is not None:
        changes["name"] = a.name
    if a.billing_mode is not None:
        changes["billing_mode"] = a.billing_mode
    if a.spend_cap is not None:
        changes["spend_cap"] = None if a.spend_cap == "plan" else a.spend_cap
    if a.prices is not None:
        try:
            changes["prices"] = yaml.safe_load(sys.stdin.read() if a.prices == "-" else Path(a.prices).read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise InvalidInput("prices", f"cannot read {a.prices}: {e}") from None
    async with ctx.backends() as (db, redis):
        c = await lifecycle.update_customer(db, redis, a.customer_id, changes, version=a.version,
                                            actor=audit.cli_actor())
    _done(ctx, c, "updated")


async def customers_status(ctx: Context) -> None:
    a = ctx.args
    async with ctx.backends() as (db, redis):
        c = await lifecycle.set_status(db, redis, a.customer_id, a.action, version=a.version, actor=audit.cli_actor())
    _done(ctx, c, {"suspend": "suspended", "reactivate": "reactivated", "archive": "archived"}[a.action])


async def customers_audit(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        rows = await audit.list_audit(db, ctx.args.customer_id, limit=ctx.args.limit)
    shown = [{**r, "change": ", ".join(f"{k} {r['before'].get(k)!r} -> {v!r}" for k, v in r["after"].items()
                                       if r["before"].get(k) != v and k != "version")} for r in rows]
    ctx.emit(rows, table(shown, ["id", "at", "actor", "action", "version", "change"]))
