"""What each console page shows, gathered from the control plane's own read functions (the same
ones the admin API answers with), so a number on a page is the API's number. JSON-ready dicts:
the pages render them, and the live endpoints send them to the page's script every second."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import asyncpg
from redis.asyncio import Redis

from control.accounts import customers, hierarchy, plans, wallets
from control.alerts import manage
from control.read import invoices, preview, trace, usage

MAX_CUSTOMERS = 200  # the overview ranks the first 200 customers by id (a console, not a report)


def _ratio(spend: str, cap: str | None) -> Decimal | None:
    if cap is None or Decimal(cap) <= 0:
        return None
    return (Decimal(spend) / Decimal(cap) * 100).quantize(Decimal("0.1"))


async def _ops(db: asyncpg.Pool, ids: list[str]) -> dict:
    """Fail-open rate and rater lag over the listed customers, read through the (customer_id,
    settle_seq) index: the newest settled event per customer, and today's events by kind."""
    if not ids:
        return {"newest_rated_at": None, "rater_lag_s": None, "fail_open_today": 0, "usage_today": 0,
                "fail_open_rate": None}
    row = await db.fetchrow(
        """SELECT (SELECT max(p.processed_at) FROM unnest($1::text[]) c(id) CROSS JOIN LATERAL
                   (SELECT processed_at FROM processed_events WHERE customer_id = c.id AND settle_seq IS NOT NULL
                    ORDER BY settle_seq DESC LIMIT 1) p) AS newest,
                  count(*) FILTER (WHERE kind = 'fail_open') AS fail_open,
                  count(*) FILTER (WHERE kind = 'usage') AS used
           FROM processed_events WHERE customer_id = ANY($1::text[])
             AND processed_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'""", ids)
    newest = row["newest"]
    lag = None if newest is None else max(0.0, (datetime.now(timezone.utc) - newest).total_seconds())
    total = row["fail_open"] + row["used"]
    rate = None if total == 0 else (Decimal(row["fail_open"]) / total * 100).quantize(Decimal("0.1"))
    return {"newest_rated_at": None if newest is None else newest.isoformat(),
            "rater_lag_s": None if lag is None else round(lag, 1),
            "fail_open_today": row["fail_open"], "usage_today": row["used"],
            "fail_open_rate": None if rate is None else str(rate)}


async def overview(db: asyncpg.Pool, redis: Redis) -> dict:
    found = await customers.list_customers(db, limit=MAX_CUSTOMERS)
    ranked = []
    for c in found:
        t = await hierarchy.tree(db, redis, c["id"])
        ratio = _ratio(t["spend"], t["spend_cap"])
        ranked.append({"id": c["id"], "name": c["name"], "plan_id": c["plan_id"], "status": c["status"],
                       "period": t["period"], "spend": t["spend"], "spend_cap": t["spend_cap"],
                       "of_cap_pct": None if ratio is None else str(ratio)})
    # capped customers first, nearest their cap first; then the others by spend
    ranked.sort(key=lambda r: (r["of_cap_pct"] is None,
                               -Decimal(r["of_cap_pct"] or 0), -Decimal(r["spend"]), r["id"]))
    today = datetime.now(timezone.utc).date().isoformat()
    alerts = [a for a in await manage.list_alerts(db, limit=100) if (a["raised_at"] or "")[:10] == today]
    return {"customers": ranked, "ops": await _ops(db, [c["id"] for c in found]), "alerts_today": alerts,
            "plans": await plans.list_plans(db)}


def _spend_series(hourly: dict, period_start: str) -> list[dict]:
    """Cumulative rated amount per hour of the period, summed over metrics (exact decimals), from
    0 at the period's start to now (so a cap and commit line have a width to draw on)."""
    per_hour: dict[str, Decimal] = {}
    for r in hourly["rows"]:
        per_hour[r["bucket"]] = per_hour.get(r["bucket"], Decimal(0)) + Decimal(r["amount"])
    out, run = [{"t": period_start, "spend": "0"}], Decimal(0)
    for hour in sorted(per_hour):
        run += per_hour[hour]
        out.append({"t": hour, "spend": str(run)})
    out.append({"t": datetime.now(timezone.utc).isoformat(timespec="seconds"), "spend": str(run)})
    return out


def _by_dimension(daily: dict, dim: str) -> list[dict]:
    return [{"day": r["bucket"][:10], dim: (r.get("dimensions") or {}).get(dim) or "(none)", "metric": r["metric"],
             "quantity": r["quantity"], "amount": r["amount"]} for r in daily["rows"]]


async def customer(db: asyncpg.Pool, redis: Redis, customer_id: str) -> dict:
    c = await customers.get_customer(db, redis, customer_id)  # NotFound for an unknown id
    pv = await preview.preview(db, redis, customer_id)
    start = datetime.fromisoformat(pv["period_start"])
    hourly = await usage.customer_usage(db, customer_id, start=start, bucket="hour")
    by_model = await usage.customer_usage(db, customer_id, start=start, bucket="day", group_by=["model"])
    by_tool = await usage.customer_usage(db, customer_id, start=start, bucket="day", group_by=["tool"])
    tree = await hierarchy.tree(db, redis, customer_id)
    return {
        "customer": c, "tree": tree, "preview": pv,
        "wallet": await wallets.show_wallet(db, redis, customer_id),
        "spend_series": _spend_series(hourly, pv["period_start"]),
        "usage_by_model": _by_dimension(by_model, "model"), "usage_by_tool": _by_dimension(by_tool, "tool"),
        "usage_totals": by_model["totals"],
        "tier_transitions": await trace.tier_transitions(db, customer_id, limit=20),
        "holds": await trace.open_holds(db, customer_id, limit=50),
        "decisions": await trace.decisions(db, customer_id, hours=24),
        "alerts": await manage.list_alerts(db, customer_id=customer_id, limit=20),
        "deliveries": await manage.list_deliveries(db, customer_id=customer_id, limit=20),
        "invoices": await invoices.list_invoices(db, customer_id, limit=12),
    }


async def plan(db: asyncpg.Pool, plan_id: str) -> dict:
    p = await plans.get_plan(db, plan_id)  # NotFound for an unknown id
    on_plan = await customers.list_customers(db, plan_id=plan_id, limit=MAX_CUSTOMERS)
    return {"plan": p, "customers": on_plan, "versions": await plans.plan_versions(db, plan_id)}
