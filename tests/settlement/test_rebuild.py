"""`tollgate redis rebuild`: FLUSHALL, rebuild from PostgreSQL, the figures are back exactly."""
from __future__ import annotations

import time

import orjson

from rater.holds import mark_settled, settled_holds
import lua
from control.projection.rebuild import projected, rebuild
from rater.settlement import SettleItem, clear_outbox, settle
from rater.tiers import record_promotions
from tollgate.redis_raw import eval_many
from tests.settlement.conftest import BUILD_MICROS, check, figures, make_customer, next_seq, uid
from tests.settlement.test_holds import place
from tollgate.keys import PROJECTION_BUILDING, PROJECTION_MARKER, api_key_hash, api_key_record, plan_record
from tollgate.periods import period_of


async def rate(conn, redis, c, charge: int, hold_id=None, wallet=True) -> tuple[SettleItem, object]:
    """What the pipeline does per event: processed_events row, then settle, then record."""
    it = SettleItem(c.id, uid("evt"), period_of(time.time()), charge if wallet else 0, charge, hold_id, 0, c.key_id,
                    next_seq(c.id))
    await insert_processed(conn, it)
    results = await settle(redis, [it])
    await record_promotions(conn, [it], results)
    await mark_settled(conn, settled_holds([it], results))
    await clear_outbox(redis, [it], results)
    return it, results[0]


async def insert_processed(conn, it: SettleItem) -> None:
    """The event's processed_events row, as the rating transaction writes it."""
    await conn.execute(
        "INSERT INTO processed_events (event_id, kind, customer_id, period, spend_micros, wallet_micros, hold_id,"
        " key_id, settle_seq) VALUES ($1, 'usage', $2, $3, $4, $5, $6, $7, $8)",
        it.event_id, it.customer_id, it.period, it.spend_micros, it.wallet_debit_micros, it.hold_id, it.key_id, it.seq)


async def snapshot(redis, c) -> dict:
    k = c.keys
    return {
        **await figures(redis, c),
        "cfg": await redis.hgetall(k.cfg),
        "key": await redis.hgetall(api_key_record(api_key_hash(c.key_id))),
        "plan": orjson.loads(await redis.get(plan_record(c.plan_id))),  # jsonb reorders keys
        "settled": await redis.get(k.settled),
    }


async def test_flushall_then_rebuild_restores_the_figures_exactly(redis, pg):
    a = await make_customer(pg, redis, wallet_micros=20_000_000)
    b = await make_customer(pg, redis, mode="postpaid")
    async with pg.acquire() as conn:
        h_settled = await place(redis, conn, a, 700_000)
        await rate(conn, redis, a, 650_000, hold_id=h_settled["hold_id"])
        await rate(conn, redis, a, BUILD_MICROS)  # promotes a to build
        h_open = await place(redis, conn, a, 123_456)
        await place(redis, conn, a, 999, ttl_ms=1)  # expired: not put back
        await rate(conn, redis, b, 3_000_000, wallet=False)
        await place(redis, conn, b, 42)
    expected = {c.id: await snapshot(redis, c) for c in (a, b)}
    # the expired hold is still in Redis until the sweeper runs; rebuild does not put it back
    exp_a = expected[a.id]
    stale = [h for h in exp_a["holds"] if h != h_open["hold_id"]]
    for h in stale:
        exp_a["held"] -= int(exp_a["holds"].pop(h).split(":")[0])
        exp_a["hold_exp"].pop(h)
    assert exp_a["tier"] == "build" and exp_a["wallet"] == 20_000_000 - 650_000 - BUILD_MICROS
    assert exp_a["held"] == 123_456 and expected[b.id]["spend"] == 3_000_000

    await redis.flushall()
    async with pg.acquire() as conn:
        counts = await rebuild(redis, conn)
    assert counts["customers"] >= 2 and counts["holds"] >= 2
    for c in (a, b):
        assert await snapshot(redis, c) == expected[c.id]
    assert await redis.exists(b.keys.wallet) == 0  # postpaid: no wallet key, as before

    # idempotent: a second run gives the same Redis
    async with pg.acquire() as conn:
        await rebuild(redis, conn)
    for c in (a, b):
        assert await snapshot(redis, c) == expected[c.id]

    # the hot path works on the rebuilt data: the open hold and the build tier's limits
    d = await check(redis, a, cost=1, tokens=1)
    assert d["allowed"] == 1 and d["tier"] == "build"
    assert d["available"] == expected[a.id]["wallet"] - 123_456 - 1


async def test_a_redelivered_event_is_not_settled_again_after_a_rebuild(redis, pg):
    c = await make_customer(pg, redis, wallet_micros=10_000_000)
    async with pg.acquire() as conn:
        it, first = await rate(conn, redis, c, 1_000)
        await redis.flushall()
        await rebuild(redis, conn)
    before = await figures(redis, c)
    (again,) = await settle(redis, [it])
    assert again.replayed and await figures(redis, c) == before
    assert before["wallet"] == 10_000_000 - 1_000 == first.wallet_after_micros


async def test_crash_between_settle_and_mark_settled_then_rebuild(redis, pg):
    """The event is in PostgreSQL, its hold still 'open' there: rebuild leaves the hold released
    and the replay reports the release, so mark_settled closes it with the right amount."""
    c = await make_customer(pg, redis, wallet_micros=10_000_000)
    async with pg.acquire() as conn:
        h = await place(redis, conn, c, 5_000)
        it = SettleItem(c.id, uid("evt"), period_of(time.time()), 4_000, 4_000, h["hold_id"], 0, c.key_id, next_seq(c.id))
        await insert_processed(conn, it)
        await settle(redis, [it])  # ... and the rater dies here
        await redis.flushall()
        await rebuild(redis, conn)
        f = await figures(redis, c)
        assert (f["wallet"], f["held"], f["holds"], f["spend"]) == (10_000_000 - 4_000, 0, {}, 4_000)
        (r,) = await settle(redis, [it])  # redelivered
        assert r.replayed and r.hold_released_micros == 5_000
        await mark_settled(conn, settled_holds([it], [r]))
        assert await conn.fetchval("SELECT released_micros FROM holds WHERE hold_id = $1", h["hold_id"]) == 5_000
    assert await figures(redis, c) == f


async def test_cli_registers_redis_rebuild(redis, pg, pg_dsn, redis_server):
    from tollgate.cli import COMMAND_MODULES, Context, build_parser
    from tollgate.config import Settings

    assert "control.projection.rebuild" in COMMAND_MODULES
    c = await make_customer(pg, redis, wallet_micros=3_000)
    await redis.flushall()
    args = build_parser(["control.projection.rebuild"]).parse_args(["redis", "rebuild", "--json"])
    await args.handler(Context(args, Settings(database_url=pg_dsn, redis_url=redis_server.url)))
    assert int(await redis.get(c.keys.wallet)) == 3_000
    assert await projected(redis)  # the marker, written last


async def test_a_promotion_not_yet_recorded_survives_a_rebuild(redis, pg):
    c = await make_customer(pg, redis)
    it = SettleItem(c.id, uid("evt"), period_of(time.time()), 0, BUILD_MICROS, None, 0, None, next_seq(c.id))
    async with pg.acquire() as conn:
        await insert_processed(conn, it)
        (r,) = await settle(redis, [it])  # promoted in Redis; the rater dies before recording it
        assert r.promoted_to == "build"
        await redis.flushall()
        await rebuild(redis, conn)
    assert (await figures(redis, c))["tier"] == "build"  # no demotion by a Redis loss


async def test_the_marker_is_written_only_if_redis_kept_the_whole_rebuild(redis, pg):
    await redis.flushall()
    async with pg.acquire() as conn:
        counts = await rebuild(redis, conn)
    assert await redis.get(PROJECTION_MARKER) == counts["generation"].encode()
    assert not await redis.exists(PROJECTION_BUILDING)

    # The end of a rebuild whose first writes Redis lost (restarted empty meanwhile): no marker.
    await redis.flushall()
    done = lua.load("projection_done")
    assert await eval_many(redis, done, [([PROJECTION_BUILDING, PROJECTION_MARKER], ["gen-1"])]) == [0]
    assert not await projected(redis)
    # ... and one whose building record is another rebuild's: no marker either.
    await redis.set(PROJECTION_BUILDING, "gen-2")
    assert await eval_many(redis, done, [([PROJECTION_BUILDING, PROJECTION_MARKER], ["gen-1"])]) == [0]
    assert await eval_many(redis, done, [([PROJECTION_BUILDING, PROJECTION_MARKER], ["gen-2"])]) == [1]
    assert await redis.get(PROJECTION_MARKER) == b"gen-2"

