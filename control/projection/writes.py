"""The projection of the control plane into Redis: what the hot path (check.lua) reads.

PostgreSQL is the source of truth; these writes are idempotent and `tollgate redis rebuild`
replays them for every customer after a Redis loss. Changes are announced on the invalidation
channel so every enforcer drops its cached copy within a second.
"""
from __future__ import annotations

import orjson
from redis.asyncio import Redis

from tollgate.customer_cfg import customer_config, write_customer_config
from tollgate.keys import INVALIDATION_CHANNEL, CustomerKeys, api_key_record, plan_record
from tollgate.locks import PROJECTION_LOCK_NAMESPACE, PROJECTION_WRITES
from tollgate.plans import Plan



async def hold_off_rebuild(conn) -> None:
    """First thing in a control-plane transaction that writes the projection: a rebuild waits for
    it to commit, and it waits for a rebuild under way (seconds at most)."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1, $2)", PROJECTION_LOCK_NAMESPACE, PROJECTION_WRITES)


async def project_plan(redis: Redis, plan: Plan) -> None:
    await redis.set(plan_record(plan.id), orjson.dumps(plan.document))
    await redis.publish(INVALIDATION_CHANNEL, f"plan:{plan.id}")


async def project_customer(
    redis: Redis, customer_id: str, plan: Plan, billing_mode: str, tier: str, spend_cap_micros: int | None = None,
    status: str = "active",
) -> None:
    await write_customer_config(redis, customer_id, customer_config(plan, billing_mode, tier, spend_cap_micros, status))


async def project_api_key(redis: Redis, key_hash: str, key_id: str, customer_id: str, plan_id: str, status: str) -> None:
    rec = api_key_record(key_hash)
    async with redis.pipeline(transaction=True) as p:
        p.delete(rec)
        p.hset(rec, mapping={"customer_id": customer_id, "key_id": key_id, "plan_id": plan_id, "status": status})
        await p.execute()
    await redis.publish(INVALIDATION_CHANNEL, f"key:{key_hash}")


async def set_wallet(redis: Redis, customer_id: str, balance_micros: int) -> None:
    """Rebuild only: live balances change through scripts (top-up, settle), never a blind SET."""
    await redis.set(CustomerKeys(customer_id).wallet, balance_micros)
