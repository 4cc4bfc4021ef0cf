"""`billing.charges` on the Redis Streams bus: every rated ledger line, once per rating, again on a
redelivery (at least once, with a stable id per line); published before the batch is acknowledged."""
from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from rater import charges
from rater.pipeline import Pipeline
from tests.rater.conftest import raw, usage
from tollgate.local_services import free_port


async def _published(redis, customer_id: str) -> list[dict]:
    out = []
    for _, fields in await redis.xrange(charges.STREAM):
        assert fields[b"schema"].decode() == charges.SCHEMA and fields[b"format"] == b"TabSeparated"
        for line in charges.decode(fields[b"rows"]):  # the ledger's COPY text rows, COLUMNS order
            if line["customer_id"] == customer_id:
                out.append({**line, "id": f"{line['event_id']}:{line['line_no']}"})
    return out


async def test_rated_lines_are_published_with_stable_ids(pg, redis, plan_for, make_customer):
    c = await make_customer(plan_for())
    pipeline = Pipeline(pg, redis, cache_ttl_s=0, charges=charges.RedisCharges(redis))
    evs = [usage(c, 1000 + i, 100 + i, cache=10) for i in range(3)]
    assert (await pipeline.process_raw(raw(evs))).rated == 3
    lines = await _published(redis, c)
    ledger = await pg.fetch("SELECT event_id, line_no, amount_micros, correlation_id FROM ledger_lines"
                            " WHERE customer_id = $1", c)
    assert sorted(x["id"] for x in lines) == sorted(f"{r['event_id']}:{r['line_no']}" for r in ledger)
    assert sum(int(x["amount_micros"]) for x in lines) == sum(r["amount_micros"] for r in ledger)
    assert {x["correlation_id"] for x in lines} == {e["correlation_id"] for e in evs}

    # A redelivery (the rater died after the commit, before the ack): the same lines again.
    again = await pipeline.process_raw(raw(evs))
    assert again.replayed == 3
    assert sorted(x["id"] for x in await _published(redis, c)) == sorted(2 * [x["id"] for x in lines])


async def test_a_bus_that_cannot_take_the_charges_fails_the_batch(pg, redis, plan_for, make_customer):
    c = await make_customer(plan_for())
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    pipeline = Pipeline(pg, redis, cache_ttl_s=0, charges=charges.RedisCharges(dead))
    with pytest.raises(charges.ChargesUnavailable):
        await pipeline.process_raw(raw([usage(c)]))  # not acknowledged: redelivered, then published
    await dead.aclose()
