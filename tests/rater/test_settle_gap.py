"""Settlement by sequence number through the rating pipeline, real PostgreSQL and Redis: a rater
that dies between its commit and its settle leaves a gap that the next rater of the customer
settles first; what settlement decided reaches PostgreSQL whoever settles it; Redis keeps one mark
per customer and an outbox that empties, not a record per event."""
from __future__ import annotations

from types import SimpleNamespace

import redis.asyncio as aioredis

from rater.pipeline import Pipeline
from tests.rater.conftest import expected, pg_totals, raw, redis_state, usage
from tests.settlement.conftest import check
from tollgate.keys import CustomerKeys
from tollgate.local_services import free_port


async def _hold(redis, customer_id: str, cost: int) -> str:
    """A hold placed by check.lua for the events' API key (usage() says key_1)."""
    c = SimpleNamespace(id=customer_id, key_id="key_1", keys=CustomerKeys(customer_id))
    d = await check(redis, c, cost=cost, tokens=100)
    assert d["allowed"] == 1
    return d["hold_id"]


async def _dies_before_settling(pg, events) -> None:
    """A rater whose Redis is gone right after its PostgreSQL commit (as if it died there)."""
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        try:
            await Pipeline(pg, dead, cache_ttl_s=0).process_raw(raw(events))
            raise AssertionError("settling on an unreachable Redis must raise")
        except (ConnectionError, OSError, aioredis.ConnectionError):
            pass
    finally:
        await dead.aclose()


async def _holds(pg, hold_ids) -> dict[str, tuple]:
    rows = await pg.fetch("SELECT hold_id, status, released_micros FROM holds WHERE hold_id = ANY($1::text[])",
                          list(hold_ids))
    return {r["hold_id"]: (r["status"], r["released_micros"]) for r in rows}


async def test_the_next_rater_settles_a_dead_raters_events_first(pg, redis, plan_for, make_customer):
    text = plan_for("prepaid")
    c = await make_customer(text, wallet_micros=5_000_000)
    k = CustomerKeys(c)
    holds = [await _hold(redis, c, 100_000) for _ in range(4)]
    lost = [usage(c, 2000, 1000 + i, hold_id=holds[i]) for i in range(3)]
    later = [usage(c, 500, 400, hold_id=holds[3]), usage(c, 700, 300)]

    await _dies_before_settling(pg, lost)
    assert (await redis_state(redis, c))["wallet"] == 5_000_000  # committed, not settled
    assert await redis.get(k.settled) is None

    # Another rater rates the customer's next events before the dead one's batch comes back:
    # settle.lua replies a gap, and this rater settles numbers 1-3 from PostgreSQL first.
    res = await Pipeline(pg, redis, cache_ttl_s=0).process_raw(raw(later))
    assert (res.rated, res.replayed) == (2, 0)
    exp = expected(text, lost + later)[c]
    state = await redis_state(redis, c)
    assert state == {"wallet": 5_000_000 - exp["spend"], "spend": exp["spend"], "held": 0}
    assert int(await redis.get(k.settled)) == 5
    assert await redis.hlen(k.settle_outbox) == 0  # recorded, then taken out
    # the filled events' hold releases were recorded by the rater that settled them
    assert await _holds(pg, holds) == {h: ("settled", 100_000) for h in holds}

    # The dead rater's batch is redelivered: all replays, nothing moves anywhere.
    pg_before = await pg_totals(pg, c)
    res = await Pipeline(pg, redis, cache_ttl_s=0).process_raw(raw(lost))
    assert (res.rated, res.replayed) == (0, 3)
    assert await redis_state(redis, c) == state and await pg_totals(pg, c) == pg_before
    assert await _holds(pg, holds) == {h: ("settled", 100_000) for h in holds}
    seqs = await pg.fetch("SELECT event_id, settle_seq FROM processed_events WHERE customer_id = $1", c)
    assert {r["event_id"]: r["settle_seq"] for r in seqs} == {e["id"]: i + 1 for i, e in enumerate(lost + later)}


async def test_a_crash_between_settle_and_record_is_recorded_by_the_redelivery(pg, redis, plan_for, make_customer,
                                                                               monkeypatch):
    """Redis settled (hold released, promoted) and the rater died before PostgreSQL recorded it:
    the outbox keeps the results, the redelivery replays them into holds and tier_transitions."""
    from rater import pipeline as pipeline_mod

    text = plan_for("prepaid")
    c = await make_customer(text, wallet_micros=50_000_000)
    k = CustomerKeys(c)
    hold = await _hold(redis, c, 7_000_000)
    ev = usage(c, 100_000, 500_000, hold_id=hold)  # 5.88 >= 5.00: promotes to build

    class Died(Exception):
        pass

    async def dies(self, conn, items, results):
        raise Died

    with monkeypatch.context() as m:
        m.setattr(pipeline_mod.Pipeline, "_record_settlement", dies)
        try:
            await Pipeline(pg, redis, cache_ttl_s=0).process_raw(raw([ev]))
            raise AssertionError("expected the simulated death")
        except Died:
            pass
    assert (await redis.hget(k.cfg, "tier")) == b"build"
    assert await redis.hlen(k.settle_outbox) == 1
    assert await _holds(pg, [hold]) == {}  # PostgreSQL knows nothing of it yet
    state = await redis_state(redis, c)

    res = await Pipeline(pg, redis, cache_ttl_s=0).process_raw(raw([ev]))
    assert (res.rated, res.replayed) == (0, 1)
    assert await redis_state(redis, c) == state
    assert await _holds(pg, [hold]) == {hold: ("settled", 7_000_000)}
    rows = await pg.fetch("SELECT old_tier, new_tier, event_id FROM tier_transitions WHERE customer_id = $1", c)
    assert [tuple(r) for r in rows] == [("free", "build", ev["id"])]
    assert await pg.fetchval("SELECT tier FROM customers WHERE id = $1", c) == "build"
    assert await redis.hlen(k.settle_outbox) == 0


async def test_redis_keeps_a_mark_per_customer_not_a_record_per_event(pg, redis, plan_for, make_customer):
    text = plan_for("postpaid")
    c = await make_customer(text)
    before = {key async for key in redis.scan_iter(match=f"tg:{{{c}}}:*")}
    for start in range(0, 200, 50):
        await Pipeline(pg, redis, cache_ttl_s=0).process_raw(raw([usage(c, 10 + i, 5) for i in range(start, start + 50)]))
    after = {key async for key in redis.scan_iter(match=f"tg:{{{c}}}:*")}
    k = CustomerKeys(c)
    assert after - before == {k.settled.encode(), k.spend(usage(c)["timestamp"][:7].replace("-", "")).encode()}
    assert int(await redis.get(k.settled)) == 200


async def test_hybrid_routing_counts_a_dead_raters_debits(pg, redis, plan_for, make_customer, monkeypatch):
    """A hybrid wallet covers part of the next charge only after the dead rater's debit: the next
    rater settles the gap before it routes, so the wallet ends at exactly 0, never below."""
    from rater import pipeline as pipeline_mod

    text = plan_for("hybrid")
    c = await make_customer(text, wallet_micros=20_000)  # 0.02: less than two events
    first, second = usage(c, 1500, 800), usage(c, 1500, 800)  # 16,730 micros each

    class Died(Exception):
        pass

    async def dies(*args, **kw):  # the rater dies right after its commit (hybrid: it read Redis before)
        raise Died

    with monkeypatch.context() as m:
        m.setattr(pipeline_mod, "settle_filling", dies)
        try:
            await Pipeline(pg, redis, cache_ttl_s=0).process_raw(raw([first]))
            raise AssertionError("expected the simulated death")
        except Died:
            pass
    assert (await redis_state(redis, c))["wallet"] == 20_000

    await Pipeline(pg, redis, cache_ttl_s=0).process_raw(raw([second]))
    rows = {r["event_id"]: (r["wallet_micros"], r["invoice_micros"]) for r in await pg.fetch(
        "SELECT event_id, wallet_micros, invoice_micros FROM processed_events WHERE customer_id = $1", c)}
    assert rows == {first["id"]: (16_730, 0), second["id"]: (3_270, 13_460)}
    assert await redis_state(redis, c) == {"wallet": 0, "spend": 2 * 16_730, "held": 0}
    assert int(await redis.get(CustomerKeys(c).settled)) == 2
