"""Credit grants: credit given to a customer's prepaid wallet for a while, with a priority.

Giving one credits the wallet at once (a `grant` wallet transaction, lua/wallet_change.lua) and
records the grant (credit_grants). The wallet in Redis stays one number; the rater takes what the
wallet pays from the live grants in spending order (tollgate.credit_grants: lowest priority
number first, then the earliest expiry; promotional credit defaults to priority 10, purchased to
50; top-ups and credit adjustments are spent after every grant). A grant spent to nothing is
`used` (final). Idempotent by id: the same id with the same content is a retry (nothing credited
again), with other content 409.

Expiry (`expire_due`, run every second by the control process, control.service): what is left of
a grant at its expires_at leaves the balance through the ledger, as an `expiry` wallet transaction
naming the grant (id `expiry:<grant id>`), in one transaction with the grant marked expired and
the Redis debit (idempotent per grant by that id's marker). Under the customer's rating lock, so
no rating transaction spends the grant meanwhile; crash-safe as a top-up is: a crash before the
commit leaves the grant active and the next run expires it (the marker keeps the debit single).
Credit is usable strictly before expires_at: the rater spends only grants not yet past it, so
usage rated between expires_at and the expiry run (a second at most) is paid by other credit.
"""
from __future__ import annotations

import secrets
from datetime import datetime, timezone

import asyncpg
from redis.asyncio import Redis

from control.credits.wallet_change import record_change
from control.errors import Conflict, InvalidInput
from control.fields import choice, ident, iso, money_micros, text
from control.lookup import require_customer
from control.projection.writes import hold_off_rebuild
from tollgate.credit_grants import lock_customer
from tollgate.keys import CustomerKeys
from tollgate.money import format_micros

KINDS = ("promotional", "purchased")
DEFAULT_PRIORITY = {"promotional": 10, "purchased": 50}
MAX_PRIORITY = 100
EXPIRE_BATCH = 500  # grants expired per run at most (the next run, a second later, takes the rest)


def new_grant_id() -> str:
    return f"gr_{secrets.token_hex(12)}"


def expiry_tx_id(grant_id: str) -> str:
    """The expiry's wallet transaction: ':' is not allowed in ids given by callers, so no top-up or
    adjustment can take it."""
    return f"expiry:{grant_id}"


def _priority(value: object, kind: str) -> int:
    if value is None:
        return DEFAULT_PRIORITY[kind]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PRIORITY:
        raise InvalidInput("priority", f"must be a whole number from 0 (spent first) to {MAX_PRIORITY}")
    return value


def _expires_at(value: object) -> datetime | None:
    if value is None:
        return None
    bad = InvalidInput("expires_at", "must be an RFC 3339 date-time with a time zone, e.g. 2026-12-31T00:00:00Z")
    if not isinstance(value, str) or len(value) > 40:
        raise bad
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        if ts.tzinfo is None:
            raise bad
        return ts.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise bad from None


async def create_grant(db: asyncpg.Pool, redis: Redis, customer_id: str, amount: object, *,
                       kind: object = "promotional", priority: object = None, expires_at: object = None,
                       grant_id: object = None, note: object = None) -> dict:
    """Give `amount` of credit (currency units), credited to the wallet now."""
    micros = money_micros(amount, "amount", positive=True)
    kind = choice("promotional" if kind is None else kind, KINDS, "kind")
    prio = _priority(priority, kind)
    gid = new_grant_id() if grant_id is None else ident(grant_id, "id")
    note = text(note, "note", max_len=500, required=False)
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)  # a rebuild must not overwrite this write
        if (await require_customer(conn, customer_id))["status"] == "archived":
            raise Conflict("customer_id", f"customer {customer_id!r} is archived: it gets no new credit")
        expires = _expires_at(expires_at)
        row = None
        if await conn.fetchval("SELECT 1 FROM credit_grants WHERE id = $1", gid) is None:
            if expires is not None and expires <= await conn.fetchval("SELECT now()"):
                raise InvalidInput("expires_at", "must be in the future")
            row = await conn.fetchrow(
                """INSERT INTO credit_grants (id, customer_id, kind, priority, amount_micros, remaining_micros,
                       expires_at, note) VALUES ($1, $2, $3, $4, $5, $5, $6, $7) ON CONFLICT (id) DO NOTHING
                   RETURNING *""", gid, customer_id, kind, prio, micros, expires, note)
        if row is None:  # a retry: the first attempt committed, so it was credited
            prior = await conn.fetchrow("SELECT * FROM credit_grants WHERE id = $1", gid)
            if (prior["customer_id"], prior["kind"], prior["priority"], prior["amount_micros"], prior["expires_at"]) \
                    != (customer_id, kind, prio, micros, expires):
                raise Conflict("id", f"credit grant id {gid!r} was already used with other content")
            balance = int(await redis.get(CustomerKeys(customer_id).wallet) or 0)
            return {**grant_view(prior), "credited": False, "balance": format_micros(balance)}
        change = await record_change(conn, redis, customer_id, f"grant:{gid}", "grant", micros, note=note,
                                     grant_id=gid)
    return {**grant_view(row), "credited": change.changed, "balance": format_micros(change.balance)}


def grant_view(r: asyncpg.Record) -> dict:
    return {"id": r["id"], "customer_id": r["customer_id"], "kind": r["kind"], "priority": r["priority"],
            "amount": format_micros(r["amount_micros"]), "remaining": format_micros(r["remaining_micros"]),
            "expires_at": iso(r["expires_at"]), "status": r["status"],
            "expired_amount": None if r["expired_micros"] is None else format_micros(r["expired_micros"]),
            "expired_at": iso(r["expired_at"]), "note": r["note"], "created_at": iso(r["created_at"])}


_ORDER = " ORDER BY priority, expires_at NULLS LAST, created_at, id"


async def list_grants(db: asyncpg.Pool, customer_id: str, *, live_only: bool = False) -> list[dict]:
    """In spending order. live_only: those with credit left (active, something remaining)."""
    async with db.acquire() as conn:
        await require_customer(conn, customer_id)
        rows = await conn.fetch(
            "SELECT * FROM credit_grants WHERE customer_id = $1"
            + (" AND status = 'active'" if live_only else "") + _ORDER, customer_id)
    return [grant_view(r) for r in rows]


# --------------------------------------------------------------------------- expiry


async def expire_due(db: asyncpg.Pool, redis: Redis, limit: int = EXPIRE_BATCH) -> list[dict]:
    """Expire every grant past its expires_at (up to `limit`): what each had left."""
    due = await db.fetch("SELECT id FROM credit_grants WHERE status = 'active' AND expires_at <= now()"
                         " ORDER BY expires_at LIMIT $1", limit)
    out = []
    for r in due:
        done = await expire_grant(db, redis, r["id"])
        if done is not None:
            out.append(done)
    return out


async def expire_grant(db: asyncpg.Pool, redis: Redis, grant_id: str) -> dict | None:
    """Expire one grant if it is due and still active (None otherwise: another run did it)."""
    customer_id = await db.fetchval("SELECT customer_id FROM credit_grants WHERE id = $1", grant_id)
    if customer_id is None:
        return None
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)
        await lock_customer(conn, customer_id)  # no rating spends the grant meanwhile
        g = await conn.fetchrow("SELECT * FROM credit_grants WHERE id = $1 FOR UPDATE", grant_id)
        if g["status"] != "active" or g["expires_at"] is None or g["expires_at"] > await conn.fetchval("SELECT now()"):
            return None
        left = g["remaining_micros"]
        g = await conn.fetchrow(
            """UPDATE credit_grants SET status = 'expired', expired_micros = remaining_micros, remaining_micros = 0,
                   expired_at = now() WHERE id = $1 RETURNING *""", grant_id)
        balance = None
        if left:
            change = await record_change(conn, redis, customer_id, expiry_tx_id(grant_id), "expiry", -left,
                                         note=f"credit grant {grant_id} expired", grant_id=grant_id)
            balance = format_micros(change.balance)
    return {**grant_view(g), "balance": balance}
