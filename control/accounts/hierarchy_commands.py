"""`tollgate teams ...`, `tollgate apps ...`, `tollgate keys limits`, `tollgate customers limits|tree`:
the billing hierarchy over control.accounts.hierarchy (as the admin API). `keys create --app` is in
control.accounts.commands.

Limits are given as flags (--rpm, --tpm, --spend-cap, --max-in-flight); on an update they replace
the level's limits as a whole, and --no-limits removes them.
"""
from __future__ import annotations

import argparse

from control.accounts import api_keys, hierarchy
from tollgate.cli import Context, command, group, table


def limit_flags(p: argparse.ArgumentParser, *, spend_cap: bool = True, clear: bool = False) -> None:
    p.add_argument("--rpm", type=int, metavar="N", help="requests per minute")
    p.add_argument("--tpm", type=int, metavar="N", help="tokens per minute")
    if spend_cap:
        p.add_argument("--spend-cap", metavar="AMOUNT", help="spend cap per billing period, currency units")
    p.add_argument("--max-in-flight", type=int, metavar="N", help="most requests in flight (open holds)")
    if clear:
        p.add_argument("--no-limits", action="store_true", help="remove every limit of this level")


def limits_of(args: argparse.Namespace) -> dict | None:
    """The limits the flags give (validated by the service), None when no flag was given."""
    if getattr(args, "no_limits", False):
        return {}
    given = {"requests_per_minute": args.rpm, "tokens_per_minute": args.tpm,
             "spend_cap": getattr(args, "spend_cap", None), "max_in_flight": args.max_in_flight}
    given = {k: v for k, v in given.items() if v is not None}
    return given or None


def register(sub) -> None:
    g = group(sub, "teams", "teams of a customer (billing hierarchy)")
    p = command(g, "create", teams_create, "create a team under a customer")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p.add_argument("--name", required=True)
    p.add_argument("--id", dest="team_id", metavar="ID", help="default: a generated team_<hex>")
    limit_flags(p)
    p = command(g, "list", teams_list, "list a customer's teams")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p = command(g, "update", teams_update, "rename a team or replace its limits")
    p.add_argument("team_id")
    p.add_argument("--name")
    limit_flags(p, clear=True)

    g = group(sub, "apps", "apps and agents of a customer's teams (billing hierarchy)")
    p = command(g, "create", apps_create, "create an app or an agent under a team")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p.add_argument("--team", required=True, dest="team_id", metavar="TEAM")
    p.add_argument("--name", required=True)
    p.add_argument("--kind", choices=hierarchy.KINDS, default="app")
    p.add_argument("--id", dest="app_id", metavar="ID", help="default: a generated <kind>_<hex>")
    limit_flags(p)
    p = command(g, "list", apps_list, "list a customer's apps and agents")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p.add_argument("--team", dest="team_id", metavar="TEAM")
    p = command(g, "update", apps_update, "rename an app or agent or replace its limits")
    p.add_argument("app_id")
    p.add_argument("--name")
    limit_flags(p, clear=True)

    g = group(sub, "keys", "API keys")
    p = command(g, "limits", keys_limits, "replace an API key's own limits")
    p.add_argument("key_id")
    limit_flags(p, clear=True)

    g = group(sub, "customers", "customers and their plans")
    p = command(g, "limits", customers_limits, "replace a customer's rate and in-flight limits")
    p.add_argument("customer_id")
    limit_flags(p, spend_cap=False, clear=True)
    p = command(g, "tree", customers_tree, "teams > apps/agents > keys with limits and period-to-date spend")
    p.add_argument("customer_id")


def _limits_text(limits: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in limits.items()) or "no limits"


async def teams_create(ctx: Context) -> None:
    a = ctx.args
    async with ctx.backends() as (db, redis):
        t = await hierarchy.create_team(db, redis, a.customer_id, name=a.name, team_id=a.team_id, limits=limits_of(a))
    ctx.emit(t, f"team {t['id']} created for customer {t['customer_id']} ({_limits_text(t['limits'])})")


async def teams_list(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        rows = await hierarchy.list_teams(db, ctx.args.customer_id)
    ctx.emit(rows, table([{**r, "limits": _limits_text(r["limits"])} for r in rows], ["id", "name", "limits"]))


def _changes(a: argparse.Namespace) -> dict:
    changes: dict = {}
    if a.name is not None:
        changes["name"] = a.name
    limits = limits_of(a)
    if limits is not None:
        changes["limits"] = limits
    return changes


async def teams_update(ctx: Context) -> None:
    async with ctx.backends() as (db, redis):
        t = await hierarchy.update_team(db, redis, ctx.args.team_id, _changes(ctx.args))
    ctx.emit(t, f"team {t['id']} ({t['name']}): {_limits_text(t['limits'])}")


async def apps_create(ctx: Context) -> None:
    a = ctx.args
    async with ctx.backends() as (db, redis):
        r = await hierarchy.create_app(db, redis, a.customer_id, team_id=a.team_id, name=a.name, kind=a.kind,
                                       app_id=a.app_id, limits=limits_of(a))
    ctx.emit(r, f"{r['kind']} {r['id']} created in team {r['team_id']} ({_limits_text(r['limits'])})")


async def apps_list(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        rows = await hierarchy.list_apps(db, ctx.args.customer_id, ctx.args.team_id)
    ctx.emit(rows, table([{**r, "limits": _limits_text(r["limits"])} for r in rows],
                         ["id", "kind", "team_id", "name", "limits"]))


async def apps_update(ctx: Context) -> None:
    async with ctx.backends() as (db, redis):
        r = await hierarchy.update_app(db, redis, ctx.args.app_id, _changes(ctx.args))
    ctx.emit(r, f"{r['kind']} {r['id']} ({r['name']}): {_limits_text(r['limits'])}")


async def keys_limits(ctx: Context) -> None:
    async with ctx.backends() as (db, redis):
        k = await api_keys.update_api_key(db, redis, ctx.args.key_id, {"limits": limits_of(ctx.args) or {}})
    ctx.emit(k, f"API key {k['id']}: {_limits_text(k['limits'])}")


async def customers_limits(ctx: Context) -> None:
    async with ctx.backends() as (db, redis):
        r = await hierarchy.set_customer_limits(db, redis, ctx.args.customer_id, limits_of(ctx.args) or {})
    ctx.emit(r, f"customer {r['customer_id']}: {_limits_text(r['limits'])}")


async def customers_tree(ctx: Context) -> None:
    async with ctx.backends() as (db, redis):
        t = await hierarchy.tree(db, redis, ctx.args.customer_id)

    def line(indent: int, label: str, n: dict) -> str:
        flight = "" if n["in_flight"] is None else f", in flight {n['in_flight']}"
        return f"{'  ' * indent}{label}: spend {n['spend']}{flight}; {_limits_text(n['limits'])}"

    out = [line(0, f"customer {t['customer_id']} (period {t['period']}, cap {t['spend_cap'] or 'none'})", t)]
    for team in t["teams"]:
        out.append(line(1, f"team {team['id']} {team['name']}", team))
        for app in team["apps"]:
            out.append(line(2, f"{app['kind']} {app['id']} {app['name']}", app))
            out += [line(3, f"key {k['id']} ({k['status']})", k) for k in app["keys"]]
    out += [line(1, f"key {k['id']} ({k['status']})", k) for k in t["keys"]]
    ctx.emit(t, "\n".join(out))
