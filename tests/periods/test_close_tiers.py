"""`tollgate periods close` sets the tier each customer enters the new period with: the tier the
closed period's spend reached, never lower than what the new period's own spend has reached.
Redis cfg, customers.tier and a 'period_reset' audit row; idempotent; the real enforcer's next
check has the new tier's limits; `redis rebuild` gives the same tiers."""
from __future__ import annotations

import pytest

from rater import periods
from control.projection.rebuild import rebuild
from rater.settlement import SettleItem, SettleResult
from rater.tiers import record_promotions
from tests.periods.conftest import RPM, check, uid, usage, utc
from tollgate.keys import CustomerKeys

NOW_DT = utc(2026, 3, 10, 12)  # calendar periods: 202602 is over, 202603 is current
NOW = NOW_DT.timestamp()
IN_LAST, IN_CURRENT = utc(2026, 2, 20), utc(2026, 3, 9)
MULTIPLIER = {"free": 1, "build": 2, "scale": 10}


async def set_tier(pg, redis, c: str, tier: str) -> None:
    """The tier a customer had during the period (e.g. carried from the one before)."""
    await pg.execute("UPDATE customers SET tier = $2 WHERE id = $1", c, tier)
    await redis.hset(CustomerKeys(c).cfg, "tier", tier)


async def tiers(pg, redis, c: str) -> tuple[str, str]:
    live = await redis.hget(CustomerKeys(c).cfg, "tier")
    return live.decode(), await pg.fetchval("SELECT tier FROM customers WHERE id = $1", c)


async def resets(pg, c: str) -> list[tuple]:
    rows = await pg.fetch("SELECT period, old_tier, new_tier, event_id, spend_micros FROM tier_transitions"
                          " WHERE customer_id = $1 AND reason = 'period_reset' ORDER BY id", c)
    return [tuple(r) for r in rows]


async def assert_enforcer_tier(http, enforcer, key: str, tier: str) -> None:
    r = await check(http, enforcer, key)
    assert r.status_code == 200, r.text
    assert (r.json()["tier"], r.headers["x-ratelimit-limit"]) == (tier, str(RPM * MULTIPLIER[tier]))


async def test_the_tier_entering_the_new_period_is_the_one_the_last_period_reached(
        pg, redis, pipeline, tenant, enforcer, http):
    earned, k_earned = await tenant()  # $60 last period (rated late, so never promoted live)
    kept, k_kept = await tenant()  # at scale all last period, and $55 spent: keeps it
    dropped, k_dropped = await tenant()  # scale carried into last period, $2 spent: drops back
    floor, k_floor = await tenant()  # the same, but $6 already spent this period: build
    idle, k_idle = await tenant()  # build, no events at all: the first tier
    for c in (kept, dropped, floor):
        await set_tier(pg, redis, c, "scale")
    await set_tier(pg, redis, idle, "build")
    res = await pipeline.process_raw([usage(earned, 60, IN_LAST), usage(kept, 55, IN_LAST), usage(dropped, 2, IN_LAST),
                                      usage(floor, 2, IN_LAST), usage(floor, 6, IN_CURRENT)], now=NOW)
    assert (res.rated, res.dead) == (5, [])
    await assert_enforcer_tier(http, enforcer, k_dropped, "scale")  # nothing changes before the close

    ids = [earned, kept, dropped, floor, idle]
    out = await periods.close_period(pg, redis, "202602", customer_ids=ids, now=NOW)
    assert [(o["customer_id"], o.get("error"), o["tier"]) for o in out] == [
        (earned, None, "scale"), (kept, None, "scale"), (dropped, None, "free"), (floor, None, "build"),
        (idle, None, "free")]
    expected = {earned: "scale", kept: "scale", dropped: "free", floor: "build", idle: "free"}
    for c, tier in expected.items():
        assert await tiers(pg, redis, c) == (tier, tier)
    assert await resets(pg, earned) == [("202603", "free", "scale", None, 60_000_000)]
    assert await resets(pg, kept) == [("202603", "scale", "scale", None, 55_000_000)]
    assert await resets(pg, dropped) == [("202603", "scale", "free", None, 2_000_000)]
    assert await resets(pg, floor) == [("202603", "scale", "build", None, 2_000_000)]
    assert await resets(pg, idle) == [("202603", "build", "free", None, 0)]

    # The very next check of each customer uses the new tier's limits.
    for c, key in ((earned, k_earned), (kept, k_kept), (dropped, k_dropped), (floor, k_floor), (idle, k_idle)):
        await assert_enforcer_tier(http, enforcer, key, expected[c])

    # A Redis loss: the rebuild brings back the new tiers, not the ones they replaced.
    await redis.flushall()
    async with pg.acquire() as conn:
        await rebuild(redis, conn, now=NOW_DT)
    for c, tier in expected.items():
        assert await tiers(pg, redis, c) == (tier, tier)
    await assert_enforcer_tier(http, enforcer, k_dropped, "free")


async def test_the_close_is_idempotent_and_never_lowers_a_tier_reached_since(pg, redis, pipeline, tenant):
    c, _ = await tenant()
    await set_tier(pg, redis, c, "scale")
    await pipeline.process_raw([usage(c, 2, IN_LAST)], now=NOW)
    first = await periods.close_period(pg, redis, "202602", customer_ids=[c], now=NOW)
    again = await periods.close_period(pg, redis, "202602", customer_ids=[c], now=NOW)
    assert [(o["tier"], o["already_closed"]) for o in first + again] == [("free", False), ("free", True)]
    assert await tiers(pg, redis, c) == ("free", "free")
    assert len(await resets(pg, c)) == 1

    # $6 this period promotes to build (live, by settle.lua); closing again does not undo it.
    await pipeline.process_raw([usage(c, 6, IN_CURRENT)], now=NOW)
    assert await tiers(pg, redis, c) == ("build", "build")
    third = await periods.close_period(pg, redis, "202602", customer_ids=[c], now=NOW)
    assert (third[0]["tier"], third[0]["already_closed"]) == ("build", True)
    assert await tiers(pg, redis, c) == ("build", "build")
    assert await resets(pg, c) == [("202603", "scale", "free", None, 2_000_000)]


async def test_a_rerun_completes_a_reset_whose_redis_write_was_lost(pg, redis, pipeline, tenant):
    c, _ = await tenant()
    await set_tier(pg, redis, c, "scale")
    await periods.close_period(pg, redis, "202602", customer_ids=[c], now=NOW)
    await redis.hset(CustomerKeys(c).cfg, "tier", "scale")  # as if the close died before writing Redis
    out = await periods.close_period(pg, redis, "202602", customer_ids=[c], now=NOW)
    assert out[0]["tier"] == "free" and await tiers(pg, redis, c) == ("free", "free")


async def test_a_promotion_of_the_closed_period_recorded_late_does_not_undo_the_reset(pg, redis, pipeline, tenant):
    c, _ = await tenant()
    await set_tier(pg, redis, c, "build")
    await periods.close_period(pg, redis, "202602", customer_ids=[c], now=NOW)
    assert await tiers(pg, redis, c) == ("free", "free")
    # A redelivered event of 202602 whose promotion is only recorded now (crash before recording).
    stale = SettleItem(c, uid("evt"), "202602", 0, 1, None, 0)
    async with pg.acquire() as conn:
        await record_promotions(conn, [stale], [SettleResult(stale.event_id, True, 0, 0, 1, "build", "scale")])
    assert await tiers(pg, redis, c) == ("free", "free")  # audited, not applied
    assert await pg.fetchval("SELECT count(*) FROM tier_transitions WHERE event_id = $1", stale.event_id) == 1
    # A promotion of the current period still raises it.
    fresh = SettleItem(c, uid("evt"), "202603", 0, 1, None, 0)
    async with pg.acquire() as conn:
        await record_promotions(conn, [fresh], [SettleResult(fresh.event_id, False, 0, 0, 1, "free", "build")])
    assert await pg.fetchval("SELECT tier FROM customers WHERE id = $1", c) == "build"


async def test_a_close_a_period_late_leaves_the_tier_alone(pg, redis, pipeline, tenant):
    """Closing 202601 in March: 202602 is over too, and its own close sets the tier."""
    c, _ = await tenant()
    await set_tier(pg, redis, c, "scale")
    out = await periods.close_period(pg, redis, "202601", customer_ids=[c], now=NOW)
    assert out[0]["invoice_id"] and out[0]["tier"] is None
    assert await tiers(pg, redis, c) == ("scale", "scale") and await resets(pg, c) == []


async def test_the_default_closes_every_customer_of_its_own_last_period(pg, redis, pipeline, tenant):
    monthly, _ = await tenant(1)
    anchored, _ = await tenant(15)  # on Mar 10 its last finished period is 202601 (Jan 15 - Feb 15)
    newcomer, _ = await tenant(1)  # created after 202602: nothing to close
    await pg.execute("UPDATE customers SET created_at = '2026-01-01' WHERE id = ANY($1::text[])", [monthly, anchored])
    await pg.execute("UPDATE customers SET created_at = '2026-03-02' WHERE id = $1", newcomer)
    for c in (monthly, anchored):
        await set_tier(pg, redis, c, "scale")

    out = {o["customer_id"]: o for o in await periods.close_period(pg, redis, None, now=NOW)}
    assert newcomer not in out
    assert (out[monthly]["period"], out[monthly]["tier"]) == ("202602", "free")
    assert (out[anchored]["period"], out[anchored]["tier"]) == ("202601", "free")
    assert await resets(pg, anchored) == [("202602", "scale", "free", None, 0)]  # its current period
    assert await tiers(pg, redis, anchored) == ("free", "free")

    # Calendar 202602 is over, but the anchored customer's 202602 runs until Mar 15: not closed.
    out = await periods.close_period(pg, redis, "202602", customer_ids=[anchored], now=NOW)
    assert out == [{"customer_id": anchored, "period": "202602", "open_until": "2026-03-15T00:00:00+00:00"}]
    assert await pg.fetchval("SELECT count(*) FROM invoices WHERE customer_id = $1", anchored) == 1
    with pytest.raises(periods.PeriodCloseError):
        await periods.close_period(pg, redis, "202603", customer_ids=[monthly], now=NOW)


@pytest.mark.parametrize("bad", ["2026-02", "202613", "2026"])
async def test_a_malformed_period_is_refused(pg, redis, bad):
    with pytest.raises(periods.PeriodCloseError, match="YYYYMM"):
        await periods.close_period(pg, redis, bad, customer_ids=[], now=NOW)
