"""The rater and the customer lifecycle: a plan change now prices the next events with the new
plan; one at the period boundary prices by the event's period, exactly, and the close applies it;
negotiated prices are charged; a suspended customer's usage is still rated."""
from __future__ import annotations

from decimal import Decimal

from control.accounts import lifecycle, plans
from rater import periods
from tests.rater.conftest import PERIOD, PLAN, raw, usage
from tollgate.keys import CustomerKeys
from tollgate.periods import next_period, period_bounds

ACTOR = "admin:test"
NEXT = next_period(PERIOD)
NEXT_START = period_bounds(NEXT)[0]
NEXT_TS = NEXT_START.strftime("%Y-%m-%dT01:00:00Z")
LATER = NEXT_START.timestamp() + 7200  # "now" for the rater and the close: early in the next period
PLAN_B = PLAN.replace('unit_price: "0.0000031"', 'unit_price: "0.000005"')


async def input_prices(pg, cid: str) -> list[tuple]:
    """(period, plan, unit price, dimension key) of each event's input-token line, in event order."""
    rows = await pg.fetch("SELECT period, plan_id, unit_price, dimension_key FROM ledger_lines WHERE customer_id = $1"
                          " AND charge_id = 'input_tokens' ORDER BY created_at, event_id", cid)
    return [tuple(r) for r in rows]


async def two_plans(make_customer, pg, redis, plan_for):
    a = plan_for("postpaid")
    cid = await make_customer(a)
    b = plan_for("postpaid", PLAN_B)
    b_id = (await plans.apply_plan(pg, redis, b))["id"]
    a_id = await pg.fetchval("SELECT plan_id FROM customers WHERE id = $1", cid)
    return cid, a_id, b_id


async def test_plan_change_at_the_boundary_is_exact_by_event_period(pg, redis, pipeline, make_customer, plan_for):
    cid, a, b = await two_plans(make_customer, pg, redis, plan_for)
    c = await lifecycle.change_plan(pg, redis, cid, b, effective="period_end", version=1, actor=ACTOR)
    assert c["pending_plan_change"] == {"plan_id": b, "from_period": NEXT}

    # rated early in the next period, before anyone closed the last one: each by its own period
    evs = [usage(cid, 1000, 0), usage(cid, 1000, 0, ts=NEXT_TS), usage(cid, 1000, 0)]
    res = await pipeline.process_raw(raw(evs), now=LATER)
    assert (res.rated, res.dead) == (3, [])
    assert sorted(await input_prices(pg, cid)) == sorted([
        (PERIOD, a, Decimal("0.0000031"), "default"), (PERIOD, a, Decimal("0.0000031"), "default"),
        (NEXT, b, Decimal("0.000005"), "default")])

    out = await periods.close_period(pg, redis, PERIOD, customer_ids=[cid], now=LATER)
    assert out[0].get("error") is None and out[0]["plan_changed_to"] == b
    assert Decimal(out[0]["total"]) == Decimal("0.0062")  # 2 x 1000 tokens at plan A's price, nothing of B's
    row = await pg.fetchrow("SELECT plan_id, pending_plan_id, version FROM customers WHERE id = $1", cid)
    assert tuple(row) == (b, None, 3)
    assert await redis.hget(CustomerKeys(cid).cfg, "plan") == b.encode()
    assert await pg.fetchval("SELECT actor FROM customer_audit WHERE customer_id = $1 AND action = 'plan_change_applied'",
                             cid) == "rater:period_close"
    again = await periods.close_period(pg, redis, PERIOD, customer_ids=[cid], now=LATER)  # idempotent
    assert again[0]["already_closed"] and "plan_changed_to" not in again[0]


async def test_plan_change_now_prices_the_next_events_and_the_period_still_closes(pg, redis, pipeline, make_customer,
                                                                                  plan_for):
    cid, a, b = await two_plans(make_customer, pg, redis, plan_for)
    assert (await pipeline.process_raw(raw([usage(cid, 1000, 0)]))).rated == 1
    c = await lifecycle.change_plan(pg, redis, cid, b, version=1, actor=ACTOR)  # no commit: now by default
    assert c["plan_id"] == b
    # suspended: its checks are refused, but what it used is still rated
    await lifecycle.set_status(pg, redis, cid, "suspend", version=2, actor=ACTOR)
    assert (await pipeline.process_raw(raw([usage(cid, 1000, 0)]))).rated == 1
    assert await input_prices(pg, cid) == [(PERIOD, a, Decimal("0.0000031"), "default"),
                                           (PERIOD, b, Decimal("0.000005"), "default")]
    # two price lists in one period: the invoice is the ledger's (no single-plan batch can match it)
    out = await periods.close_period(pg, redis, PERIOD, customer_ids=[cid], now=LATER)
    assert out[0].get("error") is None and Decimal(out[0]["total"]) == Decimal("0.0081")


async def test_negotiated_prices_are_charged(pg, redis, pipeline, make_customer, plan_for):
    cid = await make_customer(plan_for("postpaid"))
    prices = [{"charge_id": "input_tokens", "match": {"model": "m1"}, "unit_price": "0.000001"}]
    await lifecycle.update_customer(pg, redis, cid, {"prices": prices}, version=1, actor=ACTOR)
    res = await pipeline.process_raw(raw([usage(cid, 1000, 0, model="m1"), usage(cid, 1000, 0, model="m2")]))
    assert (res.rated, res.spend_micros) == (2, 1000 + 3100)
    keys = {r[2]: r[3] for r in await input_prices(pg, cid)}
    assert keys[Decimal("0.0000031")] == "default" and keys[Decimal("0.000001")].startswith("n.")
    out = await periods.close_period(pg, redis, PERIOD, customer_ids=[cid], now=LATER)
    assert out[0].get("error") is None and Decimal(out[0]["total"]) == Decimal("0.0041")


async def test_a_rater_with_a_warm_cache_prices_the_next_batch_with_the_changed_plan(pg, redis, make_customer,
                                                                                     plan_for):
    """A customer cached for 5 s is checked by its version stamp on every batch: a plan change
    now, then negotiated prices, each apply from the very next batch."""
    from rater.pipeline import Pipeline  # noqa: PLC0415

    warm = Pipeline(pg, redis, cache_ttl_s=300)  # the cache alone would keep the old plan for 5 minutes
    cid, a, b = await two_plans(make_customer, pg, redis, plan_for)
    assert (await warm.process_raw(raw([usage(cid, 1000, 0)]))).rated == 1
    await lifecycle.change_plan(pg, redis, cid, b, version=1, actor=ACTOR)
    assert (await warm.process_raw(raw([usage(cid, 1000, 0)]))).rated == 1
    prices = [{"charge_id": "input_tokens", "unit_price": "0.000001"}]
    await lifecycle.update_customer(pg, redis, cid, {"prices": prices}, version=2, actor=ACTOR)
    assert (await warm.process_raw(raw([usage(cid, 1000, 0)]))).rated == 1
    assert [r[2] for r in await input_prices(pg, cid)] == [Decimal("0.0000031"), Decimal("0.000005"),
                                                           Decimal("0.000001")]
