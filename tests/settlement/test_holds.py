"""Hold lifecycle: placed by check.lua, released exactly once by settlement or by the sweeper,
and auditable in PostgreSQL (holds, hold_events)."""
from __future__ import annotations

import time

import lua
from rater import holds
from rater.holds import _sweep_call, mark_settled, record_placed_holds, settled_holds, sweep_expired
from rater.settlement import SettleItem, settle
from tollgate.redis_raw import eval_many
from tests.settlement.conftest import check, figures, make_customer, next_seq, uid
from tollgate.periods import period_of


def usage(c, hold_id, charge=0, event=None) -> SettleItem:
    return SettleItem(c.id, event or uid("evt"), period_of(time.time()), charge, charge, hold_id, 0, c.key_id,
                      next_seq(c.id))


async def place(redis, conn, c, cost: int, ttl_ms: int = 300_000) -> dict:
    """check.lua places the hold; the decision event records it (as the pipeline does)."""
    d = await check(redis, c, cost=cost, tokens=100, hold_ttl_ms=ttl_ms)
    assert d["allowed"] == 1
    exp = int(await redis.zscore(c.keys.hold_expiry, d["hold_id"]))
    await record_placed_holds(conn, [{
        "hold_id": d["hold_id"], "customer_id": c.id, "request_id": d["request_id"], "amount_micros": cost,
        "placed_at": exp - ttl_ms, "expires_at": exp, "key_id": c.key_id,
        "estimate": {"requests": 1, "input_tokens": 60, "output_tokens": 40},
    }])
    return d | {"expires_ms": exp}


async def audit(conn, hold_id) -> dict:
    return {r["kind"]: (r["amount_micros"], r["event_id"])
            for r in await conn.fetch("SELECT * FROM hold_events WHERE hold_id = $1", hold_id)}


async def test_settled_and_expired_holds_each_release_exactly_their_amount(redis, pg, customer):
    async with pg.acquire() as conn:
        h1 = await place(redis, conn, customer, 1_111)
        h2 = await place(redis, conn, customer, 22_222, ttl_ms=1)
        h3 = await place(redis, conn, customer, 333_333)
        assert (await figures(redis, customer))["held"] == 1_111 + 22_222 + 333_333

        it = usage(customer, h1["hold_id"], charge=900)
        results = await settle(redis, [it])
        await mark_settled(conn, settled_holds([it], results))
        assert results[0].hold_released_micros == 1_111
        assert (await figures(redis, customer))["held"] == 22_222 + 333_333

        expired = await sweep_expired(redis, pg, now_ms=h2["expires_ms"] + 1)
        mine = [e for e in expired if e.customer_id == customer.id]
        assert [(e.hold_id, e.amount_micros, e.key_id, e.estimated_tokens) for e in mine] == [
            (h2["hold_id"], 22_222, customer.key_id, 100)]

        f = await figures(redis, customer)
        assert f["held"] == 333_333 and list(f["holds"]) == [h3["hold_id"]] == list(f["hold_exp"])
        assert f["wallet"] == 100_000_000 - 900  # expiry gives back the hold, takes no money

        assert await audit(conn, h1["hold_id"]) == {"placed": (1_111, None), "settled": (1_111, it.event_id)}
        assert await audit(conn, h2["hold_id"]) == {"placed": (22_222, None), "expired": (22_222, None)}
        assert await audit(conn, h3["hold_id"]) == {"placed": (333_333, None)}
        rows = {r["hold_id"]: r for r in await conn.fetch("SELECT * FROM holds WHERE customer_id = $1", customer.id)}
        assert {h: (r["status"], r["released_micros"]) for h, r in rows.items()} == {
            h1["hold_id"]: ("settled", 1_111), h2["hold_id"]: ("expired", 22_222), h3["hold_id"]: ("open", None)}
        assert rows[h1["hold_id"]]["event_id"] == it.event_id
        assert rows[h3["hold_id"]]["key_id"] == customer.key_id and rows[h3["hold_id"]]["estimated_tokens"] == 100


async def test_sweeping_again_releases_nothing_more(redis, pg, customer):
    async with pg.acquire() as conn:
        h = await place(redis, conn, customer, 5_000, ttl_ms=1)
    now = h["expires_ms"] + 1
    first = [e for e in await sweep_expired(redis, pg, now_ms=now) if e.customer_id == customer.id]
    again = [e for e in await sweep_expired(redis, pg, now_ms=now) if e.customer_id == customer.id]
    assert len(first) == 1 and again == []
    assert (await figures(redis, customer))["held"] == 0
    async with pg.acquire() as conn:
        assert await audit(conn, h["hold_id"]) == {"placed": (5_000, None), "expired": (5_000, None)}


async def test_a_sweeper_dying_after_the_release_leaves_the_record_to_the_next_sweep(redis, pg, customer):
    """Redis released the holds, then the sweeper died before PostgreSQL recorded them: the
    released holds wait in the customer's outbox, and the next sweep records each exactly once."""
    async with pg.acquire() as conn:
        h1 = await place(redis, conn, customer, 7_000, ttl_ms=1)
        h2 = await place(redis, conn, customer, 800, ttl_ms=1)
    now = max(h1["expires_ms"], h2["expires_ms"]) + 1
    # the sweep's Redis half, exactly as sweep_expired runs it, and nothing after it
    (reply,) = await eval_many(redis, lua.load("release_expired"), [_sweep_call(customer.id, now)])
    assert int(reply[0]) == 2 and (await figures(redis, customer))["held"] == 0
    assert set(await redis.hkeys(customer.keys.hold_released)) == {h1["hold_id"].encode(), h2["hold_id"].encode()}
    async with pg.acquire() as conn:
        assert await audit(conn, h1["hold_id"]) == {"placed": (7_000, None)}  # the record was lost

    recovered = [e for e in await sweep_expired(redis, pg, now_ms=now) if e.customer_id == customer.id]
    assert sorted((e.hold_id, e.amount_micros, e.expires_at_ms) for e in recovered) == sorted(
        [(h1["hold_id"], 7_000, h1["expires_ms"]), (h2["hold_id"], 800, h2["expires_ms"])])
    assert await redis.exists(customer.keys.hold_released) == 0
    assert [e for e in await sweep_expired(redis, pg, now_ms=now) if e.customer_id == customer.id] == []
    async with pg.acquire() as conn:
        assert await audit(conn, h1["hold_id"]) == {"placed": (7_000, None), "expired": (7_000, None)}
        assert await audit(conn, h2["hold_id"]) == {"placed": (800, None), "expired": (800, None)}
        status = await conn.fetch("SELECT status, released_micros FROM holds WHERE hold_id = ANY($1::text[])",
                                  [h1["hold_id"], h2["hold_id"]])
        assert sorted(tuple(r) for r in status) == [("expired", 800), ("expired", 7_000)]
    assert (await figures(redis, customer))["held"] == 0  # released once, not twice


async def test_a_backlog_over_the_per_run_limit_is_released_in_several_runs(redis, pg, customer, monkeypatch):
    async with pg.acquire() as conn:
        placed = [await place(redis, conn, customer, 10, ttl_ms=1) for _ in range(3)]
    now = max(h["expires_ms"] for h in placed) + 1
    monkeypatch.setattr(holds, "SWEEP_LIMIT", 2)  # 3 holds: a run of 2, then a run of 1
    swept = [e for e in await sweep_expired(redis, pg, now_ms=now) if e.customer_id == customer.id]
    assert sorted(e.hold_id for e in swept) == sorted(h["hold_id"] for h in placed)
    assert (await figures(redis, customer))["held"] == 0 and await redis.exists(customer.keys.hold_released) == 0


async def test_a_hold_not_yet_due_is_not_swept(redis, pg, customer):
    async with pg.acquire() as conn:
        h = await place(redis, conn, customer, 5_000)
    assert [e for e in await sweep_expired(redis, pg, now_ms=h["expires_ms"] - 1) if e.customer_id == customer.id] == []
    assert (await figures(redis, customer))["held"] == 5_000


async def test_the_sweeper_uses_redis_time_by_default(redis, pg, customer):
    async with pg.acquire() as conn:
        h = await place(redis, conn, customer, 7, ttl_ms=1)
        keep = await place(redis, conn, customer, 8)
    time.sleep(0.005)
    swept = [e.hold_id for e in await sweep_expired(redis, pg) if e.customer_id == customer.id]
    assert swept == [h["hold_id"]] and (await figures(redis, customer))["holds"] == {keep["hold_id"]: f"8:100:{customer.key_id}"}


async def test_usage_after_expiry_releases_nothing_and_keeps_the_audit_exact(redis, pg, customer):
    async with pg.acquire() as conn:
        h = await place(redis, conn, customer, 40_000, ttl_ms=1)
        await sweep_expired(redis, pg, now_ms=h["expires_ms"] + 1)
        it = usage(customer, h["hold_id"], charge=30_000)
        results = await settle(redis, [it])
        await mark_settled(conn, settled_holds([it], results))
        assert results[0].hold_released_micros == 0
        f = await figures(redis, customer)
        assert (f["held"], f["wallet"], f["spend"]) == (0, 100_000_000 - 30_000, 30_000)  # still charged
        assert await audit(conn, h["hold_id"]) == {"placed": (40_000, None), "expired": (40_000, None),
                                                   "settled": (0, it.event_id)}
        assert await conn.fetchval("SELECT status FROM holds WHERE hold_id = $1", h["hold_id"]) == "expired"


async def test_settle_first_then_sweep_releases_once(redis, pg, customer):
    """The sweeper and a late usage event race for an expired hold: Redis lets one win."""
    async with pg.acquire() as conn:
        h = await place(redis, conn, customer, 6_000, ttl_ms=1)
        it = usage(customer, h["hold_id"], charge=1)
        results = await settle(redis, [it])
        swept = [e for e in await sweep_expired(redis, pg, now_ms=h["expires_ms"] + 1) if e.customer_id == customer.id]
        await mark_settled(conn, settled_holds([it], results))
        assert results[0].hold_released_micros == 6_000 and swept == []
        assert (await figures(redis, customer))["held"] == 0
        assert await audit(conn, h["hold_id"]) == {"placed": (6_000, None), "settled": (6_000, it.event_id)}


async def test_close_recorded_before_the_placed_event_is_not_reopened(redis, pg, customer):
    d = await check(redis, customer, cost=12_345, tokens=10)
    it = usage(customer, d["hold_id"], charge=10_000)
    results = await settle(redis, [it])
    async with pg.acquire() as conn:
        await mark_settled(conn, settled_holds([it], results))
        placed = {"hold_id": d["hold_id"], "customer_id": customer.id, "request_id": d["request_id"],
                  "amount_micros": 12_345, "placed_at": "2026-11-21T10:00:00Z", "key_id": customer.key_id}
        await record_placed_holds(conn, [placed, placed])  # decision event late, and redelivered
        await mark_settled(conn, settled_holds([it], results))  # usage event redelivered
        await record_placed_holds(conn, [placed | {"amount_micros": 1}])  # the first record stands
        row = await conn.fetchrow("SELECT * FROM holds WHERE hold_id = $1", d["hold_id"])
        assert (row["status"], row["released_micros"], row["amount_micros"], row["request_id"]) == (
            "settled", 12_345, 12_345, d["request_id"])
        # expires_at from the plan's hold_ttl_seconds when the event does not say
        assert (row["expires_at"] - row["placed_at"]).total_seconds() == 300
        assert await audit(conn, d["hold_id"]) == {"placed": (12_345, None), "settled": (12_345, it.event_id)}


async def test_an_unknown_hold_id_creates_no_rows(redis, pg, customer):
    it = usage(customer, "hold_nobody_placed", charge=5)
    results = await settle(redis, [it])
    async with pg.acquire() as conn:
        await mark_settled(conn, settled_holds([it], results))
        assert await conn.fetchval("SELECT count(*) FROM holds WHERE hold_id = 'hold_nobody_placed'") == 0
        assert await conn.fetchval("SELECT count(*) FROM hold_events WHERE hold_id = 'hold_nobody_placed'") == 0


async def test_a_backlog_larger_than_one_script_run_is_swept_completely(redis, pg, monkeypatch):
    import rater.holds as holds
    monkeypatch.setattr(holds, "SWEEP_LIMIT", 3)
    c = await make_customer(pg, redis, wallet_micros=1_000_000)
    for _ in range(7):
        await check(redis, c, cost=10, tokens=1, hold_ttl_ms=1)
    now = int(time.time() * 1000) + 10
    swept = [e for e in await sweep_expired(redis, pg, now_ms=now) if e.customer_id == c.id]
    assert len(swept) == 7 and sum(e.amount_micros for e in swept) == 70
    assert (await figures(redis, c))["held"] == 0
