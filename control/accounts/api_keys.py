"""API keys: create (the key is returned once; only its sha256 is stored), revoke, list."""
from __future__ import annotations

import secrets

import asyncpg
import orjson
from redis.asyncio import Redis

from control.accounts.hierarchy import require_app, valid_limits
from control.errors import Conflict, InvalidInput, NotFound
from control.fields import iso
from control.lookup import known_id, require_customer
from control.projection.writes import KeyPath, hold_off_rebuild, project_api_key, project_limits
from tollgate.keys import api_key_hash
from tollgate.limits import level_field, loads

KEY_PREFIX = "tg_live_"
SHOWN_PREFIX = len(KEY_PREFIX) + 4  # enough to recognise a key in listings, useless to guess it


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)  # 24 random bytes = 32 url-safe characters


async def create_api_key(db: asyncpg.Pool, redis: Redis, customer_id: str, *, app_id: object = None,
                         limits: object = None) -> dict:
    """Returns the record plus `api_key`, the only time the key itself is ever available.
    `app_id`: the customer's app or agent the key belongs to (its path, fixed for good); none: the
    key hangs straight under the customer. `limits`: the key's own (tollgate.limits)."""
    parsed = valid_limits(limits)
    key = new_api_key()
    key_hash = api_key_hash(key)
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)  # a rebuild must not overwrite this write
        customer = await require_customer(conn, customer_id)
        if customer["status"] == "archived":
            raise Conflict("customer_id", f"customer {customer_id!r} is archived: it gets no new API key")
        app = None if app_id is None else await require_app(conn, customer_id, app_id)
        row = await conn.fetchrow(
            "INSERT INTO api_keys (id, customer_id, key_hash, prefix, app_id, limits) VALUES ($1, $2, $3, $4, $5, $6::jsonb)"
            " RETURNING *",
            f"key_{secrets.token_hex(8)}", customer_id, key_hash, key[:SHOWN_PREFIX], app and app["id"],
            orjson.dumps(parsed).decode(),
        )
        # Projected before commit: a key PostgreSQL knows is always resolvable by the enforcer.
        await project_limits(redis, customer_id, level_field("key", row["id"]), parsed)
        await project_api_key(redis, key_hash, row["id"], customer_id, customer["plan_id"], "active",
                              KeyPath(app["id"], app["kind"], app["team_id"]) if app else None)
    return {**view(row), "api_key": key}


async def update_api_key(db: asyncpg.Pool, redis: Redis, key_id: str, changes: dict) -> dict:
    """A key's own limits (the whole object: {} removes them). Its app never changes."""
    for name in changes:
        if name not in ("limits",):
            raise InvalidInput(name, "unknown field; expected limits (a key's app is fixed when it is created)")
    if "limits" not in changes:
        raise InvalidInput("body", "nothing to change: give limits")
    parsed = valid_limits(changes["limits"])
    if not known_id(key_id):
        raise NotFound("key_id", f"no API key {key_id!r}")
    async with db.acquire() as conn, conn.transaction():
        await hold_off_rebuild(conn)
        row = await conn.fetchrow("UPDATE api_keys SET limits = $2::jsonb WHERE id = $1 RETURNING *", key_id,
                                  orjson.dumps(parsed).decode())
        if row is None:
            raise NotFound("key_id", f"no API key {key_id!r}")
        await project_limits(redis, row["customer_id"], level_field("key", key_id), parsed)
    return view(row)


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
        await project_api_key(redis, row["key_hash"], row["id"], row["customer_id"], row["plan_id"], "revoked",
                              await _path(conn, row["app_id"]))
    return view(row)


async def _path(conn, app_id: str | None) -> KeyPath | None:
    if app_id is None:
        return None
    app = await conn.fetchrow("SELECT kind, team_id FROM apps WHERE id = $1", app_id)
    return KeyPath(app_id, app["kind"], app["team_id"])


async def list_api_keys(db: asyncpg.Pool, customer_id: str) -> list[dict]:
    async with db.acquire() as conn:
        await require_customer(conn, customer_id)
        rows = await conn.fetch("SELECT * FROM api_keys WHERE customer_id = $1 ORDER BY created_at, id", customer_id)
    return [view(r) for r in rows]


def view(row: asyncpg.Record) -> dict:
    """Never the key, never its hash."""
    return {"id": row["id"], "customer_id": row["customer_id"], "prefix": row["prefix"],
            "status": row["status"], "created_at": iso(row["created_at"]), "revoked_at": iso(row["revoked_at"]),
            "app_id": row["app_id"], "limits": loads(row["limits"])}
