"""API keys: create (the key is returned once; only its sha256 is stored), revoke, list."""
from __future__ import annotations

import secrets

import asyncpg
from redis.asyncio import Redis

from control.errors import Conflict, NotFound
from control.fields import iso
from control.lookup import known_id, require_customer
from control.projection.writes import hold_off_rebuild, project_api_key
from tollgate.keys import api_key_hash

KEY_PREFIX = "tg_live_"
SHOWN_PREFIX = len(KEY_PREFIX) + 4  # enough to recognise a key in listings, useless to guess it


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)  # 24 random bytes = 32 url-safe characters


async def create_api_key(db: asyncpg.Pool, redis: Redis, customer_id: str) -> dict:
    """Returns the record plus `api_key`, the only time the key itself is ever available."""
    key = new_api_key()
    key_hash = api_key_hash(key)
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)  # a rebuild must not overwrite this write
        customer = await require_customer(conn, customer_id)
        if customer["status"] == "archived":
            raise Conflict("customer_id", f"customer {customer_id!r} is archived: it gets no new API key")
        row = await conn.fetchrow(
            "INSERT INTO api_keys (id, customer_id, key_hash, prefix) VALUES ($1, $2, $3, $4) RETURNING *",
            f"key_{secrets.token_hex(8)}", customer_id, key_hash, key[:SHOWN_PREFIX],
        )
        # Projected before commit: a key PostgreSQL knows is always resolvable by the enforcer.
        await project_api_key(redis, key_hash, row["id"], customer_id, customer["plan_id"], "active")
    return {**view(row), "api_key": key}


async def revoke_api_key(db: asyncpg.Pool, redis: Redis, key_id: str) -> dict:
    """Idempotent; the projection publishes the invalidation so enforcers drop cached copies."""
    if not known_id(key_id):
        raise NotFound("key_id", f"no API key {key_id!r}")
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)  # a rebuild must not overwrite this write
        row = await conn.fetchrow(
            """UPDATE api_keys k SET status = 'revoked', revoked_at = coalesce(k.revoked_at, now())
               FROM customers c WHERE k.id = $1 AND c.id = k.customer_id
               RETURNING k.*, c.plan_id""",
            key_id,
        )
        if row is None:
            raise NotFound("key_id", f"no API key {key_id!r}")
        await project_api_key(redis, row["key_hash"], row["id"], row["customer_id"], row["plan_id"], "revoked")
    return view(row)


async def list_api_keys(db: asyncpg.Pool, customer_id: str) -> list[dict]:
    async with db.acquire() as conn:
        await require_customer(conn, customer_id)
        rows = await conn.fetch("SELECT * FROM api_keys WHERE customer_id = $1 ORDER BY created_at, id", customer_id)
    return [view(r) for r in rows]


async def project_row(redis: Redis, row: asyncpg.Record, plan_id: str) -> None:
    """Re-project one stored key (for `redis rebuild`)."""
    await project_api_key(redis, row["key_hash"], row["id"], row["customer_id"], plan_id, row["status"])


def view(row: asyncpg.Record) -> dict:
    """Never the key, never its hash."""
    return {"id": row["id"], "customer_id": row["customer_id"], "prefix": row["prefix"],
            "status": row["status"], "created_at": iso(row["created_at"]), "revoked_at": iso(row["revoked_at"])}
