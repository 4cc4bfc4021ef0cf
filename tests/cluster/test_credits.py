"""Credits on a real Redis Cluster: wallet_change.lua (grant, debit, expiry) runs in the customer's
slot, and the auto-recharge poll reads wallets spread over the masters."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from control.credits import adjustments, auto_recharge, grants as credit_grants

from control.accounts import customers, plans
from tests.control.conftest import plan_text
from tests.tenants import uid
from tollgate.keys import PROJECTION_MARKER, CustomerKeys


async def test_credits_on_a_cluster(cluster_redis, pg):
    redis = cluster_redis
    pid = uid("plan")
    await plans.apply_plan(pg, redis, plan_text(pid))
    ids = [(await customers.create_customer(pg, redis, name="C", plan_id=pid))["id"] for _ in range(6)]
    await redis.set(PROJECTION_MARKER, "cluster-test")
    soon = (datetime.now(timezone.utc) + timedelta(seconds=0.3)).isoformat()
    for c in ids:
        await credit_grants.create_grant(pg, redis, c, "5", expires_at=soon)
        await adjustments.adjust(pg, redis, c, "-1", "fee")
        await auto_recharge.put_settings(pg, c, "2", "10")
    await asyncio.sleep(0.4)
    assert len([g for g in await credit_grants.expire_due(pg, redis) if g["customer_id"] in ids]) == 6
    for c in ids:
        assert await redis.get(CustomerKeys(c).wallet) == b"0"
    await auto_recharge.check(pg, redis)
    n = await pg.fetchval("SELECT count(*) FROM alerts WHERE customer_id = ANY($1::text[])"
                          " AND kind = 'wallet.recharge_requested'", ids)
    assert n == 6
