"""`tollgate redis rebuild`: reconstruct the Redis projection from PostgreSQL after a Redis loss.

Redis keeps nothing on disk; PostgreSQL has everything needed to put back what check.lua and
settle.lua read:
- plans, customers (cfg with every tier's limits; the tier is customers.tier, or the higher one
  the spend of the customer's current period (its plan's anchor day) has reached) and API keys,
  through rater.projection. customers.tier is what Redis had: promotions raise it as settle.lua
  raises cfg `tier`, and the period close sets both to the tier the new period starts with
  (rater.tiers), so a rebuild neither undoes a reset nor brings back a tier it replaced;
- wallet = sum(wallet_transactions) - sum(processed_events.wallet_micros);
- spend of every period a spend key would still live for (SPEND_TTL_MS back from now)
  = sum(processed_events.spend_micros);
- open holds (holds: status open, not yet expired) and `held`, their sum;
- each customer's settled mark (settle.lua's idempotency) = its highest processed_events
  settle_seq: every processed event's figures are in the sums above, so an event the bus
  redelivers after the rebuild is a replay, not settled a second time. A processed event whose
  hold PostgreSQL still shows open (a crash between settle and mark_settled) gets an outbox entry
  saying it released that hold, and the hold is not put back: exactly the state a completed
  settlement would have left, and the redelivery records the release.
Not rebuilt, on purpose: rate-limit buckets (every key starts with a full minute's budget) and
gateway-retry records (a retry after the loss is decided again).

Every value is written absolutely (DEL then SET), so running it twice gives the same Redis. Run it
with the rater stopped: events settled while it runs could be overwritten by older figures.
"""
from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import orjson

from rater.control.lookup import plan_from_row
from rater.projection import project_api_key, project_customer, project_plan
from rater.settlement import SPEND_TTL_MS
from rater.tiers import tier_index, tier_reached
from tollgate.keys import CustomerKeys
from tollgate.periods import next_period, period_of
from tollgate.plans import Plan

BATCH = 500  # customers per Redis pipeline


async def rebuild(redis, conn, *, now: datetime | None = None) -> dict[str, int]:
    """Rebuild everything; returns counts of what was written."""
    now = now or datetime.now(timezone.utc)
    has_events = await conn.fetchval("SELECT to_regclass('processed_events') IS NOT NULL")

    plans = {}
    for r in await conn.fetch("SELECT id, document FROM plans ORDER BY id"):
        plans[r["id"]] = plan_from_row(r)
        await project_plan(redis, plans[r["id"]])
    anchors = {p.billing_anchor_day for p in plans.values()} | {1}
    periods = sorted({p for a in anchors for p in _periods(now - timedelta(milliseconds=SPEND_TTL_MS), now, a)})

    wallets = await _wallets(conn, has_events)
    spend = await _spend(conn, has_events, periods)
    holds = await _open_holds(conn, has_events, now)
    markers = await _markers(conn, has_events, wallets, spend)

    customers = await conn.fetch("SELECT id, plan_id, billing_mode, tier, spend_cap_micros FROM customers ORDER BY id")
    for c in customers:
        plan = plans[c["plan_id"]]
        current = period_of(now, plan.billing_anchor_day)
        tier = _tier(plan, c["tier"], spend.get(c["id"], {}).get(current, 0))
        await project_customer(redis, c["id"], plan, c["billing_mode"], tier, c["spend_cap_micros"])

    keys = await conn.fetch(
        "SELECT k.id, k.key_hash, k.customer_id, c.plan_id, k.status FROM api_keys k"
        " JOIN customers c ON c.id = k.customer_id ORDER BY k.id"
    )
    for k in keys:
        await project_api_key(redis, k["key_hash"], k["id"], k["customer_id"], k["plan_id"], k["status"])

    counts = {"plans": len(plans), "customers": len(customers), "api_keys": len(keys), "wallets": 0,
              "spend_keys": 0, "holds": 0, "markers": 0}
    ids = [c["id"] for c in customers]
    for start in range(0, len(ids), BATCH):
        async with redis.pipeline(transaction=False) as p:
            for cid in ids[start:start + BATCH]:
                k = CustomerKeys(cid)
                p.delete(k.wallet, k.held, k.holds, k.hold_expiry, *(k.spend(x) for x in periods))
                if cid in wallets:
                    p.set(k.wallet, wallets[cid])
                    counts["wallets"] += 1
                for period, amount in spend.get(cid, {}).items():
                    p.set(k.spend(period), amount, px=SPEND_TTL_MS)
                    counts["spend_keys"] += 1
                if cid in holds:
                    p.hset(k.holds, mapping={h: v for h, v, _, _ in holds[cid]})
                    p.zadd(k.hold_expiry, {h: exp for h, _, exp, _ in holds[cid]})
                    p.set(k.held, sum(a for _, _, _, a in holds[cid]))
                    counts["holds"] += len(holds[cid])
            await p.execute()
    for start in range(0, len(markers), BATCH):
        async with redis.pipeline(transaction=False) as p:
            for cid, mark, outbox in markers[start:start + BATCH]:
                k = CustomerKeys(cid)
                p.delete(k.settle_outbox)
                p.set(k.settled, mark)
                if outbox:
                    p.hset(k.settle_outbox, mapping=outbox)
            await p.execute()
    counts["markers"] = len(markers)
    return counts


def _tier(plan: Plan, recorded: str, period_spend: int) -> str:
    """customers.tier, or higher if this period's spend already reached a higher threshold (a
    promotion settle.lua made whose record was lost with a crash): never lower, as in settle.lua."""
    return plan.tiers[max(tier_reached(plan, period_spend), tier_index(plan, recorded))].name


def _periods(start: datetime, end: datetime, anchor_day: int = 1) -> list[str]:
    """Every period id from start's to end's, inclusive."""
    out, p, last = [], period_of(start, anchor_day), period_of(end, anchor_day)
    while p <= last:
        out.append(p)
        p = next_period(p)
    return out


async def _wallets(conn, has_events: bool) -> dict[str, int]:
    """Only customers with wallet activity get a wallet key (postpaid ones keep none)."""
    out: dict[str, int] = defaultdict(int)
    for r in await conn.fetch("SELECT customer_id, sum(amount_micros)::bigint AS s FROM wallet_transactions GROUP BY 1"):
        out[r["customer_id"]] += r["s"]
    if has_events:
        for r in await conn.fetch(
            "SELECT customer_id, sum(wallet_micros)::bigint AS s FROM processed_events"
            " GROUP BY 1 HAVING sum(wallet_micros) <> 0"
        ):
            out[r["customer_id"]] -= r["s"]
    return dict(out)


async def _spend(conn, has_events: bool, periods: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    if has_events:
        for r in await conn.fetch(
            "SELECT customer_id, period, sum(spend_micros)::bigint AS s FROM processed_events"
            " WHERE period = ANY($1::text[]) GROUP BY 1, 2", periods,
        ):
            out[r["customer_id"]][r["period"]] = r["s"]
    return out


async def _open_holds(conn, has_events: bool, now: datetime) -> dict[str, list[tuple[str, str, int, int]]]:
    """customer -> [(hold id, "amount:tokens:key id", expiry ms, amount)] of still-open holds."""
    settled_by_event = (
        " AND NOT EXISTS (SELECT 1 FROM processed_events pe"
        " WHERE pe.hold_id = h.hold_id AND pe.customer_id = h.customer_id)" if has_events else ""
    )
    rows = await conn.fetch(
        "SELECT h.hold_id, h.customer_id, h.key_id, h.amount_micros, h.estimated_tokens, h.expires_at"
        " FROM holds h WHERE h.status = 'open' AND h.expires_at > $1 AND h.customer_id IS NOT NULL"
        " AND h.amount_micros IS NOT NULL" + settled_by_event, now,
    )
    out: dict[str, list] = defaultdict(list)
    for r in rows:
        value = f"{r['amount_micros']}:{r['estimated_tokens']}:{r['key_id'] or ''}"
        out[r["customer_id"]].append((r["hold_id"], value, int(r["expires_at"].timestamp() * 1000), r["amount_micros"]))
    return out


async def _markers(conn, has_events: bool, wallets: dict[str, int],
                   spend: dict[str, dict[str, int]]) -> list[tuple[str, int, dict[int, bytes]]]:
    """(customer, settled mark, outbox) for settle.lua's idempotency: the mark is the customer's
    highest settle sequence number; the outbox has, per event whose hold PostgreSQL still shows
    open, what a replay returns: that hold released, and as wallet/spend "after" the figures as
    rebuilt (the historical ones are not kept anywhere). A promotion not recorded before the loss
    is not known here; the tier itself is rebuilt from the period's spend (_tier)."""
    if not has_events:
        return []
    marks = await conn.fetch(
        "SELECT c.id, (SELECT p.settle_seq FROM processed_events p WHERE p.customer_id = c.id"
        " AND p.settle_seq IS NOT NULL ORDER BY p.settle_seq DESC LIMIT 1) AS mark FROM customers c"
    )
    open_released = await conn.fetch(
        """SELECT pe.customer_id, pe.settle_seq, pe.period, h.amount_micros
             FROM holds h JOIN processed_events pe ON pe.hold_id = h.hold_id AND pe.customer_id = h.customer_id
            WHERE h.status = 'open' AND h.amount_micros IS NOT NULL AND pe.settle_seq IS NOT NULL"""
    )
    outboxes: dict[str, dict[int, bytes]] = defaultdict(dict)
    for r in open_released:
        cid = r["customer_id"]
        outboxes[cid][r["settle_seq"]] = orjson.dumps(
            [0, str(r["amount_micros"]), str(wallets.get(cid, 0)), str(spend.get(cid, {}).get(r["period"], 0)), "", ""])
    return [(r["id"], r["mark"], outboxes.get(r["id"], {})) for r in marks if r["mark"]]


# --------------------------------------------------------------------------------------- CLI


def register(sub) -> None:
    from tollgate.cli import command, group  # noqa: PLC0415  (the CLI imports this module)

    redis_cmds = group(sub, "redis", "the Redis projection")
    command(redis_cmds, "rebuild", _cli_rebuild,
            "reconstruct balances, spend, tiers, holds and keys in Redis from PostgreSQL (run with the rater stopped)")


async def _cli_rebuild(ctx) -> int:
    from rater.control.backends import Backends  # noqa: PLC0415

    started = time.monotonic()
    async with Backends(ctx.settings, max_pool=2) as (pool, redis), pool.acquire() as conn:
        counts = await rebuild(redis, conn)
    counts["seconds"] = round(time.monotonic() - started, 3)
    ctx.emit(counts, "rebuilt: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
