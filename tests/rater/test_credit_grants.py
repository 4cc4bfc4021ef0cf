"""Credit grants spent by the real rating pipeline (real PostgreSQL and Redis): what the wallet
paid is taken from promotional credit before purchased credit, then top-ups; exactly once under
redelivery; and the period close's wallet part too."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from control.credits import adjustments, grants as credit_grants
from tests.rater.conftest import expected, pg_totals, raw, redis_state, usage


def _in(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


async def _remaining(pg, *grant_ids: str) -> list[int]:
    rows = {r["id"]: r["remaining_micros"] for r in await pg.fetch(
        "SELECT id, remaining_micros FROM credit_grants WHERE id = ANY($1::text[])", list(grant_ids))}
    return [rows[g] for g in grant_ids]


async def test_rating_spends_promotional_credit_before_purchased_then_top_ups(pg, redis, pipeline, plan_for,
                                                                              make_customer):
    text = plan_for("prepaid")
    c = await make_customer(text, wallet_micros=1_000_000)  # a top-up: spent last
    bought = await credit_grants.create_grant(pg, redis, c, "0.2", kind="purchased")
    promo = await credit_grants.create_grant(pg, redis, c, "0.05", expires_at=_in(3600))
    evs = [usage(c, 1000 + i, 300 + i) for i in range(12)]  # ~7,700 micros each
    first, rest = evs[:4], evs[4:]

    await pipeline.process_raw(raw(first))
    paid = expected(text, first)[c]["wallet"]
    assert 0 < paid < 50_000
    assert await _remaining(pg, promo["id"], bought["id"]) == [50_000 - paid, 200_000]

    await pipeline.process_raw(raw(rest + first))  # the first ones again: replays spend nothing
    paid = expected(text, evs)[c]["wallet"]
    assert 50_000 < paid < 250_000
    assert await _remaining(pg, promo["id"], bought["id"]) == [0, 250_000 - paid]
    assert (await pipeline.process_raw(raw(evs))).replayed == 12
    assert await _remaining(pg, promo["id"], bought["id"]) == [0, 250_000 - paid]
    assert (await pg_totals(pg, c))["wallet"] == paid
    assert (await redis_state(redis, c))["wallet"] == 1_250_000 - paid


async def test_usage_past_a_grants_expiry_is_paid_by_the_rest(pg, redis, pipeline, plan_for, make_customer):
    text = plan_for("prepaid")
    c = await make_customer(text, wallet_micros=1_000_000)
    g = await credit_grants.create_grant(pg, redis, c, "1", expires_at=_in(0.3))
    await asyncio.sleep(0.4)
    evs = [usage(c, 2000, 500)]
    await pipeline.process_raw(raw(evs))  # rated before the expiry ran: the grant is not live
    assert await _remaining(pg, g["id"]) == [1_000_000]
    [done] = await credit_grants.expire_due(pg, redis)
    assert done["expired_amount"] == "1.00"
    paid = expected(text, evs)[c]["wallet"]
    assert (await redis_state(redis, c))["wallet"] == 1_000_000 - paid


async def test_debit_adjustment_and_rating_share_the_order(pg, redis, pipeline, plan_for, make_customer):
    text = plan_for("hybrid")
    c = await make_customer(text)
    a = await credit_grants.create_grant(pg, redis, c, "0.01", priority=5, expires_at=_in(3600))
    b = await credit_grants.create_grant(pg, redis, c, "0.01", priority=5, expires_at=_in(60))  # expires first
    await adjustments.adjust(pg, redis, c, "-0.004", "fee")
    assert await _remaining(pg, a["id"], b["id"]) == [10_000, 6_000]
    evs = [usage(c, 3000, 1000)]  # 24,400 micros: more than the 16,000 left
    await pipeline.process_raw(raw(evs))
    paid = (await pg_totals(pg, c))["wallet"]  # hybrid: the wallet pays what it has, the invoice the rest
    assert paid == 16_000
    assert await _remaining(pg, a["id"], b["id"]) == [0, 0]


async def test_the_period_close_spends_grants_too(pg, redis, make_customer):
    from rater import periods
    from tests.rater.test_periods import LAST_PERIOD, sample_plan

    c = await make_customer(sample_plan("hybrid"))
    g = await credit_grants.create_grant(pg, redis, c, "1000", kind="purchased")
    [out] = await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[c])
    assert out.get("error") is None
    prepaid = await pg.fetchval("SELECT prepaid_micros FROM invoices WHERE customer_id = $1", c)
    assert prepaid > 0  # the recurring fee and the commit, paid from the wallet
    assert await _remaining(pg, g["id"]) == [1_000_000_000 - prepaid]
