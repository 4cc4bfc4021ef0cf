"""Spend-tier promotion: the next check sees the new limits, PostgreSQL has the audit row."""
from __future__ import annotations

import time

from rater.settlement import SettleItem, settle
from rater.tiers import record_promotions
from tests.settlement.conftest import BUILD_MICROS, RPM, SCALE_MICROS, TPM, check, figures, next_seq, uid
from tollgate.periods import period_of


def spend_item(c, micros: int, period: str | None = None, event: str | None = None) -> SettleItem:
    return SettleItem(c.id, event or uid("evt"), period or period_of(time.time()), micros, micros, None, 0,
                      seq=next_seq(c.id))


async def test_crossing_a_threshold_mid_cycle_changes_the_next_check(redis, pg, customer):
    d = await check(redis, customer, cost=1, tokens=1)
    assert (d["tier"], d["limit_requests"], d["limit_tokens"]) == ("free", RPM, TPM)

    below = spend_item(customer, BUILD_MICROS - 1)
    crossing = spend_item(customer, 1)
    items = [below, crossing]
    results = await settle(redis, items)
    assert [(r.promoted_from, r.promoted_to) for r in results] == [(None, None), ("free", "build")]

    d = await check(redis, customer, cost=1, tokens=1)
    assert (d["tier"], d["limit_requests"], d["limit_tokens"]) == ("build", 2 * RPM, 2 * TPM)

    async with pg.acquire() as conn:
        await record_promotions(conn, items, results)
    rows = await pg.fetch("SELECT * FROM tier_transitions WHERE customer_id = $1", customer.id)
    assert [(r["old_tier"], r["new_tier"], r["event_id"], r["period"], r["spend_micros"]) for r in rows] == [
        ("free", "build", crossing.event_id, crossing.period, BUILD_MICROS)]
    assert rows[0]["at"] is not None
    assert await pg.fetchval("SELECT tier FROM customers WHERE id = $1", customer.id) == "build"


async def test_recording_a_promotion_twice_writes_one_row(redis, pg, customer):
    it = spend_item(customer, SCALE_MICROS)
    results = await settle(redis, [it])
    replay = await settle(redis, [it])  # redelivery after a crash before record_promotions
    assert replay[0].replayed and replay[0].promoted_to == "scale"
    async with pg.acquire() as conn:
        await record_promotions(conn, [it], results)
        await record_promotions(conn, [it], replay)
    assert await pg.fetchval("SELECT count(*) FROM tier_transitions WHERE event_id = $1", it.event_id) == 1
    assert await pg.fetchval("SELECT tier FROM customers WHERE id = $1", customer.id) == "scale"


async def test_one_event_can_skip_a_tier(redis, customer):
    (r,) = await settle(redis, [spend_item(customer, SCALE_MICROS + 7)])
    assert (r.promoted_from, r.promoted_to) == ("free", "scale")
    assert (await check(redis, customer, cost=1, tokens=1))["limit_requests"] == 10 * RPM


async def test_no_demotion_within_the_period(redis, pg, customer):
    await redis.hset(customer.keys.cfg, "tier", "scale")  # e.g. promoted earlier this period
    (r,) = await settle(redis, [spend_item(customer, BUILD_MICROS)])
    assert (r.promoted_from, r.promoted_to) == (None, None)
    assert (await figures(redis, customer))["tier"] == "scale"


async def test_promotions_recorded_out_of_order_never_lower_the_tier(redis, pg, customer):
    a, b = spend_item(customer, BUILD_MICROS), spend_item(customer, SCALE_MICROS)
    ra, rb = await settle(redis, [a, b])
    async with pg.acquire() as conn:
        await record_promotions(conn, [b], [rb])
        await record_promotions(conn, [a], [ra])
    assert await pg.fetchval("SELECT tier FROM customers WHERE id = $1", customer.id) == "scale"
    assert await pg.fetchval("SELECT count(*) FROM tier_transitions WHERE customer_id = $1", customer.id) == 2


async def test_a_late_event_of_a_closed_period_does_not_promote(redis, customer):
    (r,) = await settle(redis, [spend_item(customer, SCALE_MICROS, period="202001")])
    assert r.promoted_to is None and r.spend_after_micros == SCALE_MICROS
    assert (await figures(redis, customer))["tier"] == "free"
