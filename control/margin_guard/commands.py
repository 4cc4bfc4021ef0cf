"""`tollgate guard ...`: a customer's Margin Guard rules and trips, and resetting a trip; the same
services as the admin API (control.margin_guard.manage)."""
from __future__ import annotations

import argparse

import orjson

from control.accounts.audit import cli_actor
from control.errors import InvalidInput
from control.margin_guard import manage
from tollgate.cli import Context, command, group, table


def register(sub: argparse._SubParsersAction) -> None:
    g = group(sub, "guard", "Margin Guard: rules, trips, resets")
    p = command(g, "show", show, "a customer's rules (its own or its plan's) and trips, newest first")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p.add_argument("--active", action="store_true", help="only trips not reset")
    p = command(g, "set", set_rules, "replace a customer's rules with a JSON list (the plan's `margin_guard:` shape)")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p.add_argument("rules", help='e.g. \'[{"id": "runaway", "when": "session_cost", "max_cost": "2.00"}]\'')
    p = command(g, "clear", clear_rules, "drop a customer's own rules: its plan's apply again")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p = command(g, "reset", reset, "reset a customer's active trips (all, one, or one subject's)")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p.add_argument("--trip", dest="trip_id", metavar="TRIP_ID")
    p.add_argument("--subject", help="customer, team:<id>, app:<id>, key:<id> or session:<id>")


def _emit_view(ctx: Context, view: dict) -> None:
    rules = table(view["rules"], ["id", "when", "action", "stop"]) if view["rules"] else "(no rules)"
    trips = table(view["trips"], ["id", "rule_id", "subject", "action", "period", "tripped_at", "reset_by"]) \
        if view["trips"] else "(no trips)"
    ctx.emit(view, f"rules ({view['source']}):\n{rules}\n\ntrips:\n{trips}")


async def show(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        _emit_view(ctx, await manage.get(db, ctx.args.customer_id, active_only=ctx.args.active))


async def set_rules(ctx: Context) -> None:
    try:
        rules = orjson.loads(ctx.args.rules)
    except orjson.JSONDecodeError as e:
        raise InvalidInput("rules", f"not JSON: {e}") from None
    if not isinstance(rules, list):
        raise InvalidInput("rules", "must be a JSON list")
    async with ctx.backends() as (db, _):
        _emit_view(ctx, await manage.set_rules(db, ctx.args.customer_id, rules))


async def clear_rules(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        _emit_view(ctx, await manage.set_rules(db, ctx.args.customer_id, None))


async def reset(ctx: Context) -> None:
    a = ctx.args
    async with ctx.backends() as (db, redis):
        out = await manage.reset(db, redis, a.customer_id, trip_id=a.trip_id, subject=a.subject, by=cli_actor())
    ctx.emit(out, f"{len(out['reset'])} trip(s) reset" + "".join(f"\n  {t['id']} {t['rule_id']} {t['subject']}"
                                                              for t in out["reset"]))
