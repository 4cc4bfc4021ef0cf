"""Wallet adjustments: an operator's credit or debit of a prepaid wallet, with a reason,
idempotent by id (the same id with the same customer, amount and reason is a retry and changes
nothing; with anything else, 409).

- A credit adds to the rest of the wallet (like a top-up, spent after every credit grant).
- A debit is taken from the customer's credit grants in spending order first (promotional before
  purchased, tollgate.credit_grants), then from the rest, exactly as usage is: the grants never
  hold more than the wallet because of an adjustment.
- A debit may not take the balance below zero (409, field `amount`, nothing written) unless
  `allow_negative` is true: a negative balance makes check.lua refuse prepaid traffic until the
  next top-up, which is what an operator recovering money already spent may want, but never by
  accident. Holds are not counted: they are estimates, not money spent.
"""
from __future__ import annotations

import secrets

import asyncpg
from redis.asyncio import Redis

from control.credits.wallet_change import Refused, record_change
from control.errors import Conflict, InvalidInput
from control.fields import ident, iso, money_micros, text
from control.lookup import require_customer
from control.projection.writes import hold_off_rebuild
from tollgate.credit_grants import lock_customer, spend
from tollgate.money import format_micros


def new_adjustment_id() -> str:
    return f"adj_{secrets.token_hex(12)}"


def signed_micros(value: object, field: str) -> int:
    """A non-zero amount with an optional leading '-' (a debit): "-2.50", "5", -3."""
    if isinstance(value, str) and value.strip().startswith("-"):
        return -money_micros(value.strip()[1:], field, positive=True)
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return -money_micros(-value, field, positive=True)
    return money_micros(value, field, positive=True)


def flag(value: object, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(field, "must be true or false")
    return value


async def adjust(db: asyncpg.Pool, redis: Redis, customer_id: str, amount: object, reason: object,
                 adjustment_id: object = None, allow_negative: object = None) -> dict:
    micros = signed_micros(amount, "amount")
    why = text(reason, "reason", max_len=500)
    aid = new_adjustment_id() if adjustment_id is None else ident(adjustment_id, "id")
    negative_ok = flag(allow_negative, "allow_negative")
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)  # a rebuild must not overwrite this write
        await require_customer(conn, customer_id)
        if micros < 0:  # grants are written under the customer's rating lock, as the rater does
            await lock_customer(conn, customer_id)
        try:
            change = await record_change(conn, redis, customer_id, aid, "adjustment", micros, note=why,
                                         floor=None if negative_ok else 0)
        except Refused as r:
            raise Conflict("amount", f"the debit would take the balance {format_micros(r.balance)} below zero;"
                                     " send allow_negative: true to allow it") from None
        prior = change.row
        if not change.new:
            if (prior["customer_id"], prior["kind"], prior["amount_micros"], prior["note"]) != \
                    (customer_id, "adjustment", micros, why):
                raise Conflict("id", f"adjustment id {aid!r} was already used with another customer, amount"
                                     " or reason")
        elif micros < 0:  # new in PostgreSQL (even if a lost commit had changed Redis already)
            await spend(conn, {customer_id: -micros})
    return {"id": aid, "customer_id": customer_id, "amount": format_micros(micros), "reason": why,
            "applied": change.changed, "balance": format_micros(change.balance), "created_at": iso(prior["created_at"])}


async def list_adjustments(db: asyncpg.Pool, customer_id: str) -> list[dict]:
    async with db.acquire() as conn:
        await require_customer(conn, customer_id)
        rows = await conn.fetch("SELECT * FROM wallet_transactions WHERE customer_id = $1 AND kind = 'adjustment'"
                                " ORDER BY created_at, id", customer_id)
    return [{"id": r["id"], "customer_id": customer_id, "amount": format_micros(r["amount_micros"]),
             "reason": r["note"], "created_at": iso(r["created_at"])} for r in rows]
