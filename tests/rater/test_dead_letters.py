"""Events that cannot be rated go to dead_letters with the raw event and the reason; the rest of
the batch is rated; `replay` rates them once the cause is fixed."""
from __future__ import annotations

import orjson

from rater import dead_letters
from control.accounts import customers, plans
from tests.rater.conftest import expected, pg_totals, raw, redis_state, uid, usage


async def test_bad_events_are_dead_lettered_and_replayed_once_fixed(pg, redis, pipeline, plan_for, make_customer):
    text = plan_for("postpaid")
    c = await make_customer(text)
    plan_id = await pg.fetchval("SELECT plan_id FROM customers WHERE id = $1", c)
    ghost = uid("cus")
    good = usage(c, 10, 10)
    unknown_customer = usage(ghost, 20, 20)
    unknown_metric = usage(c, 30, 30, extra=[{"metric": "images", "value": 2}])
    negative = usage(c, 40, 40, extra=[{"metric": "cache_read_tokens", "value": -1}])
    fractional = usage(c, 50, 50.5)
    batch = raw([good, unknown_customer, unknown_metric, negative, fractional]) + [b"{not json"]

    res = await pipeline.process_raw(batch)
    assert res.rated == 1
    assert [d.reason if d else None for d in res.dead_by_index] == [
        None, "unknown_customer", "unknown_metric", "invalid_value", "invalid_value", "invalid_event"]
    rows = await pg.fetch("SELECT * FROM dead_letters WHERE raw = ANY($1::bytea[]) ORDER BY id", batch)
    assert [(r["event_id"], r["reason"], bytes(r["raw"])) for r in rows] == [
        (e["id"], reason, orjson.dumps(e)) for e, reason in
        [(unknown_customer, "unknown_customer"), (unknown_metric, "unknown_metric"),
         (negative, "invalid_value"), (fractional, "invalid_value")]
    ] + [(None, "invalid_event", b"{not json")]
    assert "images" in rows[1]["detail"]

    # A redelivery of the same bad events adds no second open letter.
    await pipeline.process_raw(batch[1:5])
    assert await pg.fetchval("SELECT count(*) FROM dead_letters WHERE event_id = ANY($1::text[])",
                             [unknown_customer["id"], unknown_metric["id"]]) == 2

    # Fix two causes: create the customer, bill the metric. Replay those two.
    await customers.create_customer(pg, redis, name="Ghost", plan_id=plan_id, customer_id=ghost)
    text2 = text.replace("charges:\n", 'charges:\n  - {id: images, model: per_unit, metric: images, unit_price: "0.04"}\n')
    await plans.apply_plan(pg, redis, text2)
    ids = [r["id"] for r in rows[:4]]
    out = await dead_letters.replay(pg, redis, ids=ids)
    assert out == {"replayed": 2, "still_failing": 2}
    status = {r["event_id"]: (r["status"], r["attempts"]) for r in
              await pg.fetch("SELECT event_id, status, attempts FROM dead_letters WHERE id = ANY($1::int8[])", ids)}
    assert status == {unknown_customer["id"]: ("replayed", 2), unknown_metric["id"]: ("replayed", 2),
                      negative["id"]: ("open", 3), fractional["id"]: ("open", 3)}

    # Rated as the fixed plan says, settled on Redis, and a second replay finds nothing to do.
    exp = expected(text2, [good, unknown_metric])[c]
    assert exp["spend"] == (await pg_totals(pg, c))["ledger"] == (await redis_state(redis, c))["spend"]
    assert await pg.fetchval("SELECT amount_micros FROM ledger_lines WHERE event_id = $1 AND metric = 'images'",
                             unknown_metric["id"]) == 80_000
    assert (await pg_totals(pg, ghost))["events"] == 1
    assert await dead_letters.replay(pg, redis, ids=ids) == {"replayed": 0, "still_failing": 2}


async def test_replaying_an_event_rated_meanwhile_charges_nothing_twice(pg, redis, pipeline, plan_for, make_customer):
    c = await make_customer(plan_for("postpaid"))
    ghost = uid("cus")
    ev = usage(ghost, 100, 100)
    await pipeline.process_raw(raw([ev]))
    plan_id = await pg.fetchval("SELECT plan_id FROM customers WHERE id = $1", c)
    await customers.create_customer(pg, redis, name="Late", plan_id=plan_id, customer_id=ghost)
    await pipeline.process_raw(raw([ev]))  # the bus delivered it again after the fix
    letter = await pg.fetchval("SELECT id FROM dead_letters WHERE event_id = $1", ev["id"])
    assert await dead_letters.replay(pg, redis, ids=[letter]) == {"replayed": 1, "still_failing": 0}
    assert (await pg_totals(pg, ghost))["events"] == 1
    assert await pg.fetchval("SELECT count(*) FROM ledger_lines WHERE event_id = $1", ev["id"]) == 2
