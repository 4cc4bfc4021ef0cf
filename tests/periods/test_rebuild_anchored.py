"""`redis rebuild` and live promotion for an anchored plan: the customer's current period is its
plan's, not the calendar month."""
from __future__ import annotations

from control.projection.rebuild import rebuild
from tests.periods.conftest import usage, utc
from tollgate.keys import CustomerKeys

NOW_DT = utc(2026, 3, 10, 12)  # anchor 15: 202602 (Feb 15 - Mar 15) is current; calendar: 202603
NOW = NOW_DT.timestamp()


async def test_rebuild_takes_the_tier_from_the_spend_of_the_anchored_current_period(pg, redis, pipeline, tenant):
    c, _ = await tenant(15)
    res = await pipeline.process_raw([usage(c, 6, utc(2026, 3, 9))], now=NOW)
    assert (res.rated, res.dead) == (1, [])
    k = CustomerKeys(c)
    assert int(await redis.get(k.spend("202602"))) == 6_000_000

    await redis.flushall()
    async with pg.acquire() as conn:
        await rebuild(redis, conn, now=NOW_DT)
    assert int(await redis.get(k.spend("202602"))) == 6_000_000
    assert (await redis.hget(k.cfg, "tier")).decode() == "build"  # $6 this period reached build


async def test_a_promotion_before_the_anchor_day_is_live(pg, redis, pipeline, tenant):
    c, _ = await tenant(15)
    await pipeline.process_raw([usage(c, 6, utc(2026, 3, 9))], now=NOW)
    assert (await redis.hget(CustomerKeys(c).cfg, "tier")).decode() == "build"
