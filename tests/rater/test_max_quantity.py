"""The rater's defence against absurd quantities (an event the enforcer could not hold to its
plan's maximum, e.g. while Redis was down): dead-lettered `invalid_value`, never charged."""
from __future__ import annotations

from tests.rater.conftest import PLAN, expected, pg_totals, raw, redis_state, usage
from tollgate.plans import DEFAULT_MAX_QUANTITY_PER_EVENT


async def test_an_event_over_the_plans_maximum_is_dead_lettered_and_never_charged(pg, redis, pipeline, plan_for, make_customer):
    text = plan_for("prepaid")
    c = await make_customer(text, wallet_micros=50_000_000)
    good = usage(c, 1500, 800)
    huge = usage(c, 2**40, 800)  # the event: 2**40 input tokens
    just_over = usage(c, DEFAULT_MAX_QUANTITY_PER_EVENT + 1, 0)
    at_max = usage(c, 0, 0, cache=DEFAULT_MAX_QUANTITY_PER_EVENT)  # the maximum itself is fine
    res = await pipeline.process_raw(raw([good, huge, just_over, at_max]))
    assert [d.reason if d else None for d in res.dead_by_index] == [None, "invalid_value", "invalid_value", None]
    details = await pg.fetch("SELECT event_id, reason, detail FROM dead_letters WHERE event_id = ANY($1::text[]) ORDER BY id",
                             [huge["id"], just_over["id"]])
    assert [(r["event_id"], r["reason"]) for r in details] == [(huge["id"], "invalid_value"), (just_over["id"], "invalid_value")]
    assert "max_quantity_per_event" in details[0]["detail"] and str(2**40) in details[0]["detail"]
    # Charged: the good event and the one at the maximum, nothing of the others.
    exp = expected(text, [good, at_max])[c]
    assert (await pg_totals(pg, c))["ledger"] == exp["spend"] == (await redis_state(redis, c))["spend"]
    assert (await redis_state(redis, c))["wallet"] == 50_000_000 - exp["wallet"]
    assert await pg.fetchval("SELECT count(*) FROM ledger_lines WHERE event_id = ANY($1::text[])", [huge["id"], just_over["id"]]) == 0


async def test_a_plan_may_raise_or_lower_the_maximum_per_metric(pg, redis, pipeline, plan_for, make_customer):
    limits = ("limits: {{requests_per_minute: 100000, tokens_per_minute: 100000000, "
              "max_quantity_per_event: {{default: 1000, cache_read_tokens: 1000000000}}}}")
    text = plan_for("postpaid", PLAN.replace("limits: {{requests_per_minute: 100000, tokens_per_minute: 100000000}}", limits))
    assert "max_quantity_per_event" in text
    c = await make_customer(text)
    over_default = usage(c, 1001, 0)
    big_cache = usage(c, 10, 10, cache=10**9)
    res = await pipeline.process_raw(raw([over_default, big_cache]))
    assert [d.reason if d else None for d in res.dead_by_index] == ["invalid_value", None]
    assert (await pg_totals(pg, c))["ledger"] == expected(text, [big_cache])[c]["spend"] > 0
