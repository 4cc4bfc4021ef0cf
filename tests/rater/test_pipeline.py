"""The rating pipeline against real PostgreSQL and Redis: decomposition, the ledger, exactly-once
effect under duplicates, redelivery and a crash between the PostgreSQL commit and the Redis settle."""
from __future__ import annotations

import redis.asyncio as aioredis

from rater.pipeline import Pipeline
from tests.rater.conftest import PERIOD, expected, pg_totals, raw, redis_state, usage
from tollgate.local_services import free_port


async def test_compound_event_becomes_one_ledger_line_per_measurement(pg, redis, pipeline, plan_for, make_customer):
    text = plan_for("postpaid")
    c = await make_customer(text)
    ev = usage(c, 1500, 800, cache=500)
    res = await pipeline.process_raw(raw([ev]))
    assert (res.rated, res.dead) == (1, [])

    lines = await pg.fetch("SELECT * FROM ledger_lines WHERE event_id = $1 ORDER BY line_no", ev["id"])
    assert [(r["metric"], r["quantity"]) for r in lines] == [
        ("input_tokens", 1500), ("output_tokens", 800), ("cache_read_tokens", 500)]
    assert {r["correlation_id"] for r in lines} == {ev["correlation_id"]}
    assert {(r["customer_id"], r["period"], r["kind"]) for r in lines} == {(c, PERIOD, "usage")}
    assert lines[0]["plan_id"] and str(lines[0]["unit_price"]) == "0.0000031"
    # 1500 * 0.0000031 = 0.00465 -> 4650 micros; 800 * 0.0000151 -> 12080; 500 * 0.00000033 -> 165
    assert [r["amount_micros"] for r in lines] == [4650, 12080, 165]

    exp = expected(text, [ev])[c]
    assert exp["spend"] == 4650 + 12080 + 165
    assert await pg_totals(pg, c) == {"spend": exp["spend"], "wallet": 0, "invoice": exp["spend"],
                                      "events": 1, "ledger": exp["spend"]}
    assert (await redis_state(redis, c))["spend"] == exp["spend"]


async def test_same_event_twice_changes_nothing(pg, redis, pipeline, plan_for, make_customer):
    text = plan_for("prepaid")
    c = await make_customer(text, wallet_micros=10_000_000)
    evs = [usage(c, 1000 + i, 300 + i) for i in range(5)]
    # in one batch, then again as a separate delivery, then the whole batch redelivered
    first = await pipeline.process_raw(raw(evs + [evs[0]]))
    assert (first.rated, first.duplicates) == (5, 1)
    state = (await pg_totals(pg, c), await redis_state(redis, c))
    again = await pipeline.process_raw(raw([evs[2]]))
    redelivered = await pipeline.process_raw(raw(evs))
    assert (again.rated, again.replayed, redelivered.rated, redelivered.replayed) == (0, 1, 0, 5)
    assert (await pg_totals(pg, c), await redis_state(redis, c)) == state

    exp = expected(text, evs)[c]
    assert state[0]["ledger"] == state[0]["spend"] == exp["spend"] == exp["wallet"]
    assert state[1]["wallet"] == 10_000_000 - exp["spend"]
    assert state[1]["spend"] == exp["spend"]


async def test_crash_between_commit_and_settle_is_repaired_by_the_redelivery(pg, redis, plan_for, make_customer):
    """PostgreSQL commits, then Redis is unreachable (as if the rater died right there): the
    redelivered batch is not priced again, but its stored figures are settled on Redis."""
    text = plan_for("prepaid")
    c = await make_customer(text, wallet_micros=5_000_000)
    evs = [usage(c, 2000, 1000 + i) for i in range(10)]
    dead_redis = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        crashed = Pipeline(pg, dead_redis, cache_ttl_s=0)
        try:
            await crashed.process_raw(raw(evs))
            raise AssertionError("settling on an unreachable Redis must raise")
        except (ConnectionError, OSError, aioredis.ConnectionError):
            pass
    finally:
        await dead_redis.aclose()
    exp = expected(text, evs)[c]
    assert (await pg_totals(pg, c))["ledger"] == exp["spend"]  # committed
    assert (await redis_state(redis, c))["wallet"] == 5_000_000  # never settled

    res = await Pipeline(pg, redis, cache_ttl_s=0).process_raw(raw(evs))
    assert (res.rated, res.replayed) == (0, 10)
    assert await redis_state(redis, c) == {"wallet": 5_000_000 - exp["spend"], "spend": exp["spend"], "held": 0}
    assert (await pg_totals(pg, c))["ledger"] == exp["spend"]


async def test_hybrid_wallet_covering_part_of_a_charge_is_emptied_and_the_rest_invoiced(
        pg, redis, pipeline, plan_for, make_customer):
    text = plan_for("hybrid")
    c = await make_customer(text, wallet_micros=20_000)  # 0.02: less than two events
    evs = [usage(c, 1500, 800) for _ in range(3)]  # 16730 micros each
    await pipeline.process_raw(raw(evs[:1]))
    assert (await redis_state(redis, c))["wallet"] == 20_000 - 16_730
    await pipeline.process_raw(raw(evs[1:]))  # the second event empties the wallet, the third is all invoice

    rows = await pg.fetch("SELECT event_id, spend_micros, wallet_micros, invoice_micros FROM processed_events"
                          " WHERE customer_id = $1", c)
    by_id = {r["event_id"]: r for r in rows}
    assert [(by_id[e["id"]]["wallet_micros"], by_id[e["id"]]["invoice_micros"]) for e in evs] == [
        (16_730, 0), (3_270, 13_460), (0, 16_730)]
    assert await redis_state(redis, c) == {"wallet": 0, "spend": 3 * 16_730, "held": 0}
    assert expected(text, evs, wallets_start={c: 20_000})[c] == {"spend": 50_190, "wallet": 20_000, "invoice": 30_190}


async def test_events_resolved_by_api_key_hash(pg, redis, pipeline, plan_for, make_customer):
    from control.accounts import api_keys  # noqa: PLC0415
    from tollgate.keys import api_key_hash  # noqa: PLC0415

    c = await make_customer(plan_for("postpaid"))
    key = await api_keys.create_api_key(pg, redis, c)
    ev = usage(None, 100, 100)
    del ev["customer_id"]
    ev["api_key_hash"] = api_key_hash(key["api_key"])
    res = await pipeline.process_raw(raw([ev]))
    assert (res.rated, res.dead) == (1, [])
    assert await pg.fetchval("SELECT customer_id FROM processed_events WHERE event_id = $1", ev["id"]) == c


async def test_fail_open_traffic_is_recorded_and_its_usage_rated_without_a_hold(pg, redis, pipeline, plan_for,
                                                                                 make_customer):
    from control.accounts import api_keys  # noqa: PLC0415
    from tollgate.keys import api_key_hash  # noqa: PLC0415

    text = plan_for("prepaid")
    c = await make_customer(text, wallet_micros=1_000_000)
    key = await api_keys.create_api_key(pg, redis, c)
    fo = {"kind": "fail_open", "id": "fo_req_1" + c, "api_key_hash": api_key_hash(key["api_key"]),
          "request_id": "req_1", "dimensions": {}, "estimate": {"requests": 1}, "cause": "deadline",
          "timestamp": "2026-01-01T00:00:00Z"}
    ev = usage(c, 700, 300)  # no hold: the check never reached Redis
    res = await pipeline.process_raw(raw([fo, ev]))
    assert (res.rated, res.fail_open, res.dead) == (1, 1, [])
    kinds = dict(await pg.fetch("SELECT event_id, kind FROM processed_events WHERE customer_id = $1", c))
    assert kinds == {fo["id"]: "fail_open", ev["id"]: "usage"}
    spend = expected(text, [ev])[c]["spend"]
    assert await redis_state(redis, c) == {"wallet": 1_000_000 - spend, "spend": spend, "held": 0}


async def test_decisions_record_holds(pg, redis, pipeline, plan_for, make_customer):
    c = await make_customer(plan_for("prepaid"), wallet_micros=1_000_000)
    allow = {"kind": "decision", "id": "dec_a" + c, "customer_id": c, "key_id": "key_1", "request_id": "a",
             "hold_id": "hold_a" + c, "decision": "ALLOW", "reason": "ok", "estimate_micros": 4242,
             "dimensions": {}, "estimate": {"requests": 1, "input_tokens": 10, "output_tokens": 5},
             "timestamp": "2026-01-01T00:00:00Z"}
    deny = {**allow, "id": "dec_b" + c, "request_id": "b", "hold_id": None, "decision": "DENY",
            "reason": "insufficient_balance"}
    res = await pipeline.process_raw(raw([allow, deny, allow]))
    assert (res.decisions, res.duplicates, res.rated) == (2, 1, 0)
    rows = await pg.fetch("SELECT hold_id, status, amount_micros, estimated_tokens FROM holds WHERE customer_id = $1", c)
    assert [tuple(r) for r in rows] == [(allow["hold_id"], "open", 4242, 15)]


async def test_two_consumers_on_the_same_hybrid_customers_never_overdraw(pg, redis, plan_for, make_customer):
    """Interleaved batches of the same customers rated at once by two pipelines (as two Redis
    Streams consumers would): the customer lock makes each see the other's wallet debits."""
    import asyncio  # noqa: PLC0415

    text = plan_for("hybrid")
    cs = [await make_customer(text, wallet_micros=100_000) for _ in range(3)]
    evs = [usage(cs[i % 3], 1000 + i, 500) for i in range(120)]
    a, b = Pipeline(pg, redis, cache_ttl_s=0), Pipeline(pg, redis, cache_ttl_s=0)
    batches = [evs[i:i + 10] for i in range(0, 120, 10)]
    await asyncio.gather(*[(a if i % 2 else b).process_raw(raw(bt)) for i, bt in enumerate(batches)])
    for c in cs:
        got = await pg_totals(pg, c)
        mine = [e for e in evs if e["customer_id"] == c]
        assert got["spend"] == got["ledger"] == expected(text, mine)[c]["spend"]
        assert got["wallet"] == 100_000 and got["invoice"] == got["spend"] - 100_000
        assert await redis_state(redis, c) == {"wallet": 0, "spend": got["spend"], "held": 0}


VOLUME_PLAN = """
id: {pid}
billing_mode: {mode}
limits: {{requests_per_minute: 100000, tokens_per_minute: 100000000}}
charges:
  - {{id: input_tokens, model: per_unit, metric: input_tokens, unit_price: "0.000003"}}
  - {{id: output_tokens, model: per_unit, metric: output_tokens, unit_price: "0.000015"}}
  - id: cache_read_tokens
    model: volume
    metric: cache_read_tokens
    tiers:
      - {{up_to: 10000, unit_price: "0.00001"}}
      - {{up_to: null, unit_price: "0.000001"}}
"""


async def test_a_volume_tier_credit_is_settled_not_stuck(pg, redis, pipeline, plan_for, make_customer):
    """Crossing into a cheaper volume tier reprices earlier units: the event's total is negative
    (a credit back to the wallet and spend), and the batch must still go through."""
    text = plan_for("prepaid", VOLUME_PLAN)
    c = await make_customer(text, wallet_micros=1_000_000)
    a, b = usage(c, 1, 0, cache=9000), usage(c, 1, 0, cache=2000)
    await pipeline.process_raw(raw([a]))
    await pipeline.process_raw(raw([b]))
    credit = await pg.fetchval("SELECT spend_micros FROM processed_events WHERE event_id = $1", b["id"])
    assert credit < 0
    exp = expected(text, [a, b])[c]
    assert exp["spend"] == 11_000 * 1 + 6 == (await pg_totals(pg, c))["ledger"]
    assert await redis_state(redis, c) == {"wallet": 1_000_000 - exp["spend"], "spend": exp["spend"], "held": 0}
