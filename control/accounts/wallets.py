"""Prepaid wallets: top-ups (durable in PostgreSQL, live in Redis) and balances.

Redis holds the live balance (settle.lua debits it); PostgreSQL keeps every top-up. A top-up is
one PostgreSQL transaction around the Redis credit: a committed row means the credit happened,
and the marker checked by topup.lua stops a retry from crediting twice even when the commit
itself was lost after the credit.
"""
from __future__ import annotations

import secrets

import asyncpg
from redis.asyncio import Redis

import lua
from control.errors import Conflict
from control.fields import ident, iso, money_micros, text
from control.lookup import require_customer, require_plan
from control.projection.writes import hold_off_rebuild
from tollgate.keys import CustomerKeys
from tollgate.money import format_micros
from tollgate.plans import Plan

MARKER_TTL_S = 400 * 24 * 3600  # longer than any client would retry a top-up


def new_topup_id() -> str:
    return f"top_{secrets.token_hex(12)}"


async def topup(db: asyncpg.Pool, redis: Redis, customer_id: str, amount: object,
                topup_id: object = None, note: object = None) -> dict:
    """Credit `amount` (currency units, decimal string). The same `topup_id` twice credits once."""
    micros = money_micros(amount, "amount", positive=True)
    tid = new_topup_id() if topup_id is None else ident(topup_id, "id")
    note = text(note, "note", max_len=500, required=False)
    keys = CustomerKeys(customer_id)
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)  # a rebuild must not overwrite this write
        await require_customer(conn, customer_id)
        row = await conn.fetchrow(
            """INSERT INTO wallet_transactions (id, customer_id, kind, amount_micros, note)
               VALUES ($1, $2, 'topup', $3, $4) ON CONFLICT (id) DO NOTHING RETURNING created_at""",
            tid, customer_id, micros, note,
        )
        if row is None:  # a retry: the first attempt committed, so it was credited
            prior = await conn.fetchrow("SELECT * FROM wallet_transactions WHERE id = $1", tid)
            if (prior["customer_id"], prior["kind"], prior["amount_micros"]) != (customer_id, "topup", micros):
                raise Conflict("id", f"top-up id {tid!r} was already used with another customer or amount")
            balance = int(await redis.get(keys.wallet) or 0)
            return _topup_view(tid, customer_id, micros, balance, False, prior["created_at"])
        script = lua.load("topup")
        credited, balance = await redis.register_script(script.source)(
            keys=[keys.wallet, keys.topup(tid)], args=[micros, MARKER_TTL_S]
        )
    return _topup_view(tid, customer_id, micros, int(balance), bool(credited), row["created_at"])


def _topup_view(tid: str, customer_id: str, micros: int, balance: int, credited: bool, created_at) -> dict:
    return {"id": tid, "customer_id": customer_id, "amount": format_micros(micros),
            "credited": credited, "balance": format_micros(balance), "created_at": iso(created_at)}


async def show_wallet(db: asyncpg.Pool, redis: Redis, customer_id: str) -> dict:
    async with db.acquire() as conn:
        row = await require_customer(conn, customer_id)
        plan = await require_plan(conn, row["plan_id"])
    from control.credits.grants import list_grants  # noqa: PLC0415  (it imports this module)

    return {"customer_id": customer_id, **await balances(db, redis, customer_id, plan),
            "credit_grants": await list_grants(db, customer_id, live_only=True)}


async def balances(db: asyncpg.Pool, redis: Redis, customer_id: str, plan: Plan) -> dict:
    """Live figures from Redis beside the durable top-up total from PostgreSQL."""
    keys = CustomerKeys(customer_id)
    balance, held = (int(v or 0) for v in await redis.mget(keys.wallet, keys.held))
    row = await db.fetchrow(
        "SELECT coalesce(sum(amount_micros), 0)::bigint AS total, count(*) AS n"
        " FROM wallet_transactions WHERE customer_id = $1 AND kind = 'topup'", customer_id,
    )
    return {"currency": plan.currency, "balance": format_micros(balance), "held": format_micros(held),
            "available": format_micros(balance - held), "topups_total": format_micros(row["total"]),
            "topups": row["n"]}

