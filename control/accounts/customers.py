"""Customers: create (and project into Redis), get, list."""
from __future__ import annotations

import secrets

import asyncpg
import orjson
from redis.asyncio import Redis

from control.accounts import wallets
from control.errors import Conflict, InvalidInput
from control.fields import choice, ident, iso, money_micros, text
from control.lookup import require_customer, require_plan
from control.projection.writes import hold_off_rebuild, project_customer
from tollgate.customer_cfg import STATUSES
from tollgate.keys import CustomerKeys
from tollgate.money import format_micros
from tollgate.plans import BILLING_MODES, Plan

MAX_PAGE = 1000


def new_customer_id() -> str:
    return f"cus_{secrets.token_hex(8)}"


async def create_customer(
    db: asyncpg.Pool, redis: Redis, *, name: object, plan_id: object, customer_id: object = None,
    billing_mode: object = None, spend_cap: object = None,
) -> dict:
    """`spend_cap` overrides the plan's monthly cap (currency units, a decimal string)."""
    cid = new_customer_id() if customer_id is None else ident(customer_id, "id")
    name = text(name, "name")
    plan_id = ident(plan_id, "plan_id")
    cap = None if spend_cap is None else money_micros(spend_cap, "spend_cap", positive=False)
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)  # a rebuild must not overwrite this write
        # FOR SHARE: a concurrent `plans apply` waits until this customer is projected.
        plan = await require_plan(conn, plan_id, lock=True, missing=InvalidInput)
        mode = plan.billing_mode if billing_mode is None else choice(billing_mode, BILLING_MODES, "billing_mode")
        try:
            row = await conn.fetchrow(
                """INSERT INTO customers (id, name, plan_id, billing_mode, tier, spend_cap_micros)
                   VALUES ($1, $2, $3, $4, $5, $6) RETURNING *""",
                cid, name, plan.id, mode, plan.tiers[0].name, cap,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict("id", f"customer {cid!r} already exists") from None
        # Projected before commit: if Redis is unreachable the customer is not created at all.
        await project_row(redis, row, plan)
    return view(row, {"active": 0, "total": 0}, await wallets.balances(db, redis, cid, plan))


async def get_customer(db: asyncpg.Pool, redis: Redis, customer_id: str) -> dict:
    async with db.acquire() as conn:
        row = await require_customer(conn, customer_id)
        plan = await require_plan(conn, row["plan_id"])
        keys = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'active') AS active, count(*) AS total"
            " FROM api_keys WHERE customer_id = $1", customer_id,
        )
    return view(row, dict(keys), await wallets.balances(db, redis, customer_id, plan))


async def list_customers(db: asyncpg.Pool, *, plan_id: str | None = None, after: str | None = None,
                         limit: int = 100, status: str | None = None) -> list[dict]:
    """Ordered by id; page with `after` = the last id seen. Archived customers only when asked
    for (`status` = archived); otherwise every other one, or those of `status`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidInput("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    plan_id = None if plan_id is None else ident(plan_id, "plan_id")
    after = None if after is None else ident(after, "after")
    status = None if status is None else choice(status, STATUSES, "status")
    rows = await db.fetch(
        """SELECT * FROM customers WHERE ($1::text IS NULL OR plan_id = $1)
           AND ($2::text IS NULL OR id > $2)
           AND (CASE WHEN $4::text IS NULL THEN status <> 'archived' ELSE status = $4 END)
           ORDER BY id LIMIT $3""",
        plan_id, after, limit, status,
    )
    return [view(r) for r in rows]


def view(row: asyncpg.Record, keys: dict | None = None, wallet: dict | None = None) -> dict:
    cap = row["spend_cap_micros"]
    out = {"id": row["id"], "name": row["name"], "plan_id": row["plan_id"],
           "billing_mode": row["billing_mode"], "tier": row["tier"],
           "spend_cap": None if cap is None else format_micros(cap), "created_at": iso(row["created_at"]),
           # the lifecycle (control.accounts.lifecycle): version = the ETag every change must name
           "status": row["status"], "version": row["version"],
           "pending_plan_change": pending_change(row), "prices": prices_of(row), "updated_at": iso(row["updated_at"])}
    if keys is not None:
        out["api_keys"] = keys
    if wallet is not None:
        out["wallet"] = wallet
    return out


def pending_change(row: asyncpg.Record) -> dict | None:
    """A plan change waiting for the period boundary: the plan, and the first period it prices."""
    if row["pending_plan_id"] is None:
        return None
    return {"plan_id": row["pending_plan_id"], "from_period": row["pending_from_period"]}


def prices_of(row: asyncpg.Record) -> list:
    """The negotiated prices (tollgate.rating.negotiated) as stored."""
    p = row["prices"]
    return orjson.loads(p) if isinstance(p, (str, bytes)) else list(p or [])


async def project_row(redis: Redis, row: asyncpg.Record, plan: Plan) -> None:
    """Project one customer row (create, plan change, `redis rebuild`)."""
    live = await redis.hget(CustomerKeys(row["id"]).cfg, "tier")
    tier = effective_tier(plan, row["tier"], live.decode() if isinstance(live, bytes) else live)
    await project_customer(redis, row["id"], plan, row["billing_mode"], tier, row["spend_cap_micros"], row["status"])


def effective_tier(plan: Plan, *candidates: str | None) -> str:
    """The highest of the known tiers: settle.lua may have promoted in Redis before PostgreSQL
    heard of it, and there is no demotion within a period (a plan change must not undo one)."""
    names = [t.name for t in plan.tiers]
    known = [names.index(c) for c in candidates if c in names]
    return names[max(known, default=0)]
