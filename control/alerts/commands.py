"""`tollgate alerts ...` and `tollgate webhooks ...`: the same services as the admin API
(control.alerts.manage)."""
from __future__ import annotations

import argparse

import orjson

from control.alerts import manage as alerts
from control.errors import InvalidInput
from tollgate.alert_rules import KINDS
from tollgate.cli import Context, command, group, table


def register(sub: argparse._SubParsersAction) -> None:
    g = group(sub, "webhooks", "webhook endpoints that receive alerts")
    p = command(g, "create", webhooks_create, "register an endpoint (its signing secret is shown once)")
    p.add_argument("--url", required=True)
    p.add_argument("--customer", dest="customer_id", metavar="CUSTOMER", help="only this customer's alerts (default: all)")
    p.add_argument("--kind", dest="kinds", action="append", choices=KINDS, help="only these kinds (repeat; default: all)")
    p.add_argument("--description")
    p = command(g, "list", webhooks_list, "list endpoints (with --customer: its own and the global ones)")
    p.add_argument("--customer", dest="customer_id", metavar="CUSTOMER")
    p = command(g, "disable", webhooks_disable, "stop sending to an endpoint")
    p.add_argument("endpoint_id")
    p = command(g, "deliveries", deliveries_list, "the delivery log")
    for name in ("customer", "alert", "endpoint"):
        p.add_argument(f"--{name}", dest=f"{name}_id", metavar=name.upper())
    p.add_argument("--status", choices=alerts.STATUSES)
    p.add_argument("--limit", type=int, default=100)
    p = command(g, "show-delivery", delivery_show, "a delivery with every attempt")
    p.add_argument("delivery_id")
    p = command(g, "redeliver", delivery_redeliver, "send a delivery again now")
    p.add_argument("delivery_id")

    g = group(sub, "alerts", "alerts raised and per-customer alert settings")
    p = command(g, "list", alerts_list, "alerts raised, newest first")
    p.add_argument("--customer", dest="customer_id", metavar="CUSTOMER")
    p.add_argument("--kind", choices=KINDS)
    p.add_argument("--limit", type=int, default=100)
    p = command(g, "settings", settings_show, "a customer's alert settings (plan defaults, overrides, effective)")
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p = command(g, "set", settings_set, "replace a customer's overrides with a JSON object, e.g. "
                '\'{"balance_below": "5.00", "spend_cap_percents": [75, 100]}\'')
    p.add_argument("--customer", required=True, dest="customer_id", metavar="CUSTOMER")
    p.add_argument("settings", help="JSON object of the plan's `alerts:` keys; {} removes every override")



async def webhooks_create(ctx: Context) -> None:
    a = ctx.args
    async with ctx.backends() as (db, _):
        w = await alerts.create_endpoint(db, url=a.url, customer_id=a.customer_id, kinds=a.kinds, description=a.description)
    scope = f"customer {w['customer_id']}" if w["customer_id"] else "every customer"
    ctx.emit(w, f"webhook {w['id']} created for {scope}, kinds {', '.join(w['kinds']) or 'all'}:\n\n"
                f"    signing secret: {w['secret']}\n\n"
                "Copy it now: it is shown only this once. Verify each delivery's Tollgate-Signature with it.")


async def webhooks_list(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        rows = await alerts.list_endpoints(db, ctx.args.customer_id)
    ctx.emit(rows, table([{**r, "kinds": ",".join(r["kinds"]) or "all"} for r in rows],
                         ["id", "customer_id", "url", "kinds", "enabled"]))


async def webhooks_disable(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        w = await alerts.disable_endpoint(db, ctx.args.endpoint_id)
    ctx.emit(w, f"webhook {w['id']} disabled")


async def deliveries_list(ctx: Context) -> None:
    a = ctx.args
    async with ctx.backends() as (db, _):
        rows = await alerts.list_deliveries(db, customer_id=a.customer_id, alert_id=a.alert_id,
                                            endpoint_id=a.endpoint_id, status=a.status, limit=a.limit)
    ctx.emit(rows, table(rows, ["id", "alert_id", "endpoint_id", "status", "attempts", "last_status_code",
                                "last_error", "created_at"]))


async def delivery_show(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        ctx.emit(await alerts.get_delivery(db, ctx.args.delivery_id))


async def delivery_redeliver(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        d = await alerts.redeliver(db, ctx.args.delivery_id)
    ctx.emit(d, f"delivery {d['id']} queued again (attempts so far: {d['attempts']})")


async def alerts_list(ctx: Context) -> None:
    a = ctx.args
    async with ctx.backends() as (db, _):
        rows = await alerts.list_alerts(db, customer_id=a.customer_id, kind=a.kind, limit=a.limit)
    ctx.emit(rows, table(rows, ["id", "customer_id", "type", "threshold", "period", "raised_at"]))


async def settings_show(ctx: Context) -> None:
    async with ctx.backends() as (db, _):
        ctx.emit(await alerts.get_settings(db, ctx.args.customer_id))


async def settings_set(ctx: Context) -> None:
    try:
        doc = orjson.loads(ctx.args.settings)
    except orjson.JSONDecodeError as e:
        raise InvalidInput("settings", f"not JSON: {e}") from None
    async with ctx.backends() as (db, _):
        ctx.emit(await alerts.set_settings(db, ctx.args.customer_id, doc))
