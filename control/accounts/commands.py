"""The control plane's `tollgate` commands: db, plans, costs, customers, keys, wallets, admin."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from control.accounts import api_keys, cost_catalogs, customers, plans, wallets
from control.accounts.hierarchy_commands import limit_flags, limits_of
from control.errors import InvalidInput
from tollgate.cli import Context, command, group, table


def register(sub: argparse._SubParsersAction) -> None:
    db = group(sub, "db", "the PostgreSQL schema")
    command(db, "migrate", db_migrate, "apply pending schema migrations")

    g = group(sub, "plans", "rate plans")
    p = command(g, "apply", plans_apply, "validate a plan (YAML or JSON file, '-' for stdin) and apply it")
    p.add_argument("file")
    command(g, "list", plans_list, "list plans")
    p = command(g, "show", plans_show, "show one plan")
    p.add_argument("plan_id")

    g = group(sub, "costs", "shared cost catalogs (what metrics cost the provider; plans name one with cost_catalog)")
    p = command(g, "apply", costs_apply, "validate a cost catalog (YAML or JSON file, '-' for stdin) and apply it")
    p.add_argument("file")
    command(g, "list", costs_list, "list cost catalogs")
    p = command(g, "show", costs_show, "show one cost catalog")
    p.add_argument("catalog_id")

    g = group(sub, "customers", "customers and their plans")
    p = command(g, "create", customers_create, "create a customer on a plan")
    p.add_argument("--name", required=True)
    p.add_argument("--plan", required=True, dest="plan_id", metavar="PLAN")
    p.add_argument("--id", dest="customer_id", metavar="ID", help="default: a generated cus_<hex>")
    p.add_argument("--billing-mode", metavar="MODE", help="prepaid | postpaid | hybrid (default: the plan's)")
    p.add_argument("--spend-cap", metavar="AMOUNT", help="monthly spend cap in currency units, overrides the plan's")
    p = command(g, "show", customers_show, "show a customer with its keys and wallet")
    p.add_argument("customer_id")
    p = command(g, "list", customers_list, "list customers")
    p.add_argument("--plan", dest="plan_id", metavar="PLAN")
    p.add_argument("--after", help="list ids after this one (paging)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--status", choices=("active", "suspended", "archived"), help="default: all but archived")

    g = group(sub, "keys", "API keys")
    p = command(g, "create", keys_create, "create an API key (shown once)")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p.add_argument("--app", dest="app_id", metavar="APP", help="the customer's app or agent the key belongs to (for good)")
    limit_flags(p)
    p = command(g, "revoke", keys_revoke, "revoke an API key")
    p.add_argument("key_id")
    p = command(g, "list", keys_list, "list a customer's API keys")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")

    g = group(sub, "wallets", "prepaid wallets")
    p = command(g, "topup", wallets_topup, "credit a wallet; the same --id twice credits once")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p.add_argument("--amount", required=True, help="currency units, e.g. 10.00")
    p.add_argument("--id", dest="topup_id", metavar="ID", help="idempotency id (default: generated)")
    p.add_argument("--note")
    p = command(g, "show", wallets_show, "show a wallet's balance")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")

    g = group(sub, "admin", "the admin HTTP API")
    p = command(g, "serve", admin_serve, "run the admin API (needs TOLLGATE_ADMIN_TOKEN)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)



async def db_migrate(ctx: Context) -> None:
    from rater.schema import migrate  # noqa: PLC0415

    applied = await migrate(ctx.settings.database_url)
    ctx.emit({"applied": applied}, "\n".join(f"applied {n}" for n in applied) or "schema up to date")


async def plans_apply(ctx: Context) -> None:
    text = _read_file(ctx.args.file)
    async with ctx.backends() as (db, redis):
        r = await plans.apply_plan(db, redis, text)
    state = _applied(r)
    ctx.emit(r, f"plan {r['id']} {state} (version {r['version']}); "
                f"{r['customers_reprojected']} customer(s) re-projected")


async def plans_list(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        rows = await plans.list_plans(db)
    ctx.emit(rows, table(rows, ["id", "name", "version", "customers", "updated_at"]))


async def plans_show(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        ctx.emit(await plans.get_plan(db, ctx.args.plan_id))


def _applied(r: dict) -> str:
    """What applying a versioned document (a plan, a cost catalog) did."""
    return "unchanged" if not r["changed"] else ("created" if r["version"] == 1 else "updated")


def _read_file(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput("file", f"cannot read {path}: {e}") from None


async def costs_apply(ctx: Context) -> None:
    text = _read_file(ctx.args.file)
    async with ctx.backends() as (db, _):
        r = await cost_catalogs.apply_catalog(db, text)
    state = _applied(r)
    ctx.emit(r, f"cost catalog {r['id']} {state} (version {r['version']}); {r['metrics']} metric(s), "
                f"named by {r['plans']} plan(s)")


async def costs_list(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        rows = await cost_catalogs.list_catalogs(db)
    ctx.emit(rows, table(rows, ["id", "name", "version", "plans", "updated_at"]))


async def costs_show(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        ctx.emit(await cost_catalogs.get_catalog(db, ctx.args.catalog_id))


async def customers_create(ctx: Context) -> None:
    a = ctx.args
    async with ctx.backends() as (db, redis):
        c = await customers.create_customer(db, redis, name=a.name, plan_id=a.plan_id, customer_id=a.customer_id,
                                            billing_mode=a.billing_mode, spend_cap=a.spend_cap)
    ctx.emit(c, f"customer {c['id']} created on plan {c['plan_id']} ({c['billing_mode']}, tier {c['tier']})")


async def customers_show(ctx: Context) -> None:
    async with ctx.backends() as (db, redis):
        c = await customers.get_customer(db, redis, ctx.args.customer_id)
    w, k = c["wallet"], c["api_keys"]
    ctx.emit(c, "\n".join([
        f"customer {c['id']}  {c['name']}",
        f"  plan {c['plan_id']}, {c['billing_mode']}, tier {c['tier']}, spend cap {c['spend_cap'] or 'plan default'}",
        f"  status {c['status']}, version {c['version']}" + (f"; plan {p['plan_id']} from period {p['from_period']}"
                                                            if (p := c["pending_plan_change"]) else ""),
        f"  api keys: {k['active']} active of {k['total']}",
        f"  wallet: balance {w['balance']} {w['currency']} (held {w['held']}, available {w['available']}); "
        f"top-ups {w['topups_total']} in {w['topups']}",
    ]))


async def customers_list(ctx: Context) -> None:
    a = ctx.args
    async with ctx.backends() as (db, _):
        rows = await customers.list_customers(db, plan_id=a.plan_id, after=a.after, limit=a.limit, status=a.status)
    ctx.emit(rows, table(rows, ["id", "name", "plan_id", "billing_mode", "tier", "spend_cap", "status"]))


async def keys_create(ctx: Context) -> None:
    async with ctx.backends() as (db, redis):
        k = await api_keys.create_api_key(db, redis, ctx.args.customer_id, app_id=ctx.args.app_id,
                                          limits=limits_of(ctx.args))
    under = f" (app {k['app_id']})" if k["app_id"] else ""
    ctx.emit(k, f"API key {k['id']} created for customer {k['customer_id']}{under}:\n\n"
                f"    {k['api_key']}\n\n"
                "Copy it now: it is shown only this once and cannot be recovered (only its hash is stored).")


async def keys_revoke(ctx: Context) -> None:
    async with ctx.backends() as (db, redis):
        k = await api_keys.revoke_api_key(db, redis, ctx.args.key_id)
    ctx.emit(k, f"API key {k['id']} ({k['prefix']}...) revoked at {k['revoked_at']}")


async def keys_list(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        rows = await api_keys.list_api_keys(db, ctx.args.customer_id)
    ctx.emit(rows, table(rows, ["id", "prefix", "status", "created_at", "revoked_at"]))


async def wallets_topup(ctx: Context) -> None:
    a = ctx.args
    async with ctx.backends() as (db, redis):
        t = await wallets.topup(db, redis, a.customer_id, a.amount, topup_id=a.topup_id, note=a.note)
    what = "credited" if t["credited"] else "already applied, not credited again"
    ctx.emit(t, f"top-up {t['id']} of {t['amount']} {what}; balance {t['balance']}")


async def wallets_show(ctx: Context) -> None:
    async with ctx.backends() as (db, redis):
        w = await wallets.show_wallet(db, redis, ctx.args.customer_id)
    ctx.emit(w, f"customer {w['customer_id']}: balance {w['balance']} {w['currency']} "
                f"(held {w['held']}, available {w['available']}); top-ups {w['topups_total']} in {w['topups']}")


def admin_serve(ctx: Context) -> None:
    from control.service import serve  # noqa: PLC0415

    serve(ctx.settings, ctx.args.host, ctx.args.port)
