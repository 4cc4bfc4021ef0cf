"""The projection of the control plane into Redis: what the hot path (check.lua) reads.

PostgreSQL is the source of truth; these writes are idempotent and `tollgate redis rebuild`
replays them for every customer after a Redis loss. Changes are announced on the invalidation
channel so every enforcer drops its cached copy within a second.
"""
from __future__ import annotations

from typing import NamedTuple

import orjson
from redis.asyncio import Redis

from control.projection.gateway_estimate import project_estimate
from tollgate import limits
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
    await project_estimate(redis, plan)
    await redis.publish(INVALIDATION_CHANNEL, f"plan:{plan.id}")


async def project_customer(
    redis: Redis, customer_id: str, plan: Plan, billing_mode: str, tier: str, spend_cap_micros: int | None = None,
    status: str = "active",
) -> None:
    await write_customer_config(redis, customer_id, customer_config(plan, billing_mode, tier, spend_cap_micros, status))


async def project_api_key(redis: Redis, key_hash: str, key_id: str, customer_id: str, plan_id: str, status: str,
                          path: KeyPath | None = None) -> None:
    """`path`: the key's app, its kind and team, when it has an app (fixed at creation)."""
    rec = api_key_record(key_hash)
    fields = {"customer_id": customer_id, "key_id": key_id, "plan_id": plan_id, "status": status}
    if path is not None and path.app_id:
        fields.update(app_id=path.app_id, app_kind=path.app_kind, team_id=path.team_id)
    async with redis.pipeline(transaction=True) as p:
        p.delete(rec)
        p.hset(rec, mapping=fields)
        await p.execute()
    await redis.publish(INVALIDATION_CHANNEL, f"key:{key_hash}")


class KeyPath(NamedTuple):
    app_id: str | None
    app_kind: str | None
    team_id: str | None


async def project_limits(redis: Redis, customer_id: str, level: str, level_limits: dict) -> None:
    """One level's limits (tollgate.limits), read by check.lua on every check of the customer: no
    cache to invalidate. No limits: the field goes (a customer without any has no hash at all)."""
    key = CustomerKeys(customer_id).limits
    encoded = limits.encode(level_limits)
    if encoded is None:
        await redis.hdel(key, level)
    else:
        await redis.hset(key, level, encoded)


async def set_wallet(redis: Redis, customer_id: str, balance_micros: int) -> None:
    """Rebuild only: live balances change through scripts (top-up, settle), never a blind SET."""
    await redis.set(CustomerKeys(customer_id).wallet, balance_micros)
