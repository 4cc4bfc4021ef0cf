"""A customer's cfg hash in Redis (`tg:{c}:cfg`), what check.lua and settle.lua read of it.

Shared by the control plane (control.projection: every write, the rebuild) and the rater (the
period close makes a pending plan change the customer's plan, rater.plan_changes).
"""
from __future__ import annotations

import orjson
from redis.asyncio import Redis

from tollgate.keys import INVALIDATION_CHANNEL, CustomerKeys, api_key_record
from tollgate.plans import Plan

STATUSES = ("active", "suspended", "archived")


def customer_config(plan: Plan, billing_mode: str, tier: str, spend_cap_micros: int | None = None,
                    status: str = "active") -> dict[str, str | int]:
    """The cfg hash: limits of every tier precomputed, so a promotion is one HSET of `tier`.
    `spend_cap_micros` (the customer's own cap) replaces the plan's, scaled by each tier's
    multiplier like the plan's. `status`: check.lua DENYs `suspended` unless it is active."""
    cfg: dict[str, str | int] = {
        "plan": plan.id,
        "mode": billing_mode,
        "status": status,
        "tier": plan.tier(tier).name,
        # settle.lua promotes along this list: [[name, threshold micros], ...]
        "tiers": orjson.dumps([[t.name, t.threshold_micros] for t in plan.tiers]).decode(),
    }
    for t in plan.tiers:
        rpm, tpm, cap = plan.limits_for_tier(t)
        if spend_cap_micros is not None:
            cap = int(spend_cap_micros * t.multiplier)
        cfg[f"rpm.{t.name}"], cfg[f"tpm.{t.name}"], cfg[f"cap.{t.name}"] = rpm, tpm, cap
    return cfg


async def write_customer_config(redis: Redis, customer_id: str, cfg: dict[str, str | int]) -> None:
    keys = CustomerKeys(customer_id)
    async with redis.pipeline(transaction=True) as p:
        p.delete(keys.cfg)  # drop fields of tiers the new plan no longer has
        p.hset(keys.cfg, mapping=cfg)
        await p.execute()
    # after the write, not in its MULTI: a cluster runs a transaction on one slot's keys only
    await redis.publish(INVALIDATION_CHANNEL, f"customer:{customer_id}")


async def repoint_keys(redis: Redis, key_hashes: list[str], plan_id: str) -> None:
    """After a plan change: the customer's API key records name the new plan (the enforcer sizes
    holds with it). One field each, never a delete: a live lookup never finds a record missing."""
    if not key_hashes:
        return
    async with redis.pipeline(transaction=False) as p:
        for h in key_hashes:
            p.hset(api_key_record(h), "plan_id", plan_id)
        await p.execute()
    for h in key_hashes:
        await redis.publish(INVALIDATION_CHANNEL, f"key:{h}")
