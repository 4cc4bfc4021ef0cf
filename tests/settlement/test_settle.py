"""settle.lua through rater.settlement.settle: debit, release, spend, idempotency, token budget."""
from __future__ import annotations

import time

import pytest

from rater.settlement import SettleItem, settle
from tests.settlement.conftest import check, figures, next_seq, uid
from tollgate.periods import period_of


def item(c, *, debit=0, spend=0, hold=None, tokens=0, event=None, period=None, key_id=None) -> SettleItem:
    """The customer's next event (its next settle sequence number), of its API key."""
    return SettleItem(customer_id=c.id, event_id=event or uid("evt"), period=period or period_of(time.time()),
                      wallet_debit_micros=debit, spend_micros=spend, hold_id=hold, actual_tokens=tokens,
                      key_id=key_id or c.key_id, seq=next_seq(c.id))


async def test_settle_debits_wallet_releases_hold_and_adds_spend(redis, customer):
    d = await check(redis, customer, cost=1_500_000, tokens=1000)
    assert d["allowed"] == 1
    before = await figures(redis, customer)
    assert before["held"] == 1_500_000 and d["hold_id"] in before["holds"]

    (r,) = await settle(redis, [item(customer, debit=1_200_000, spend=1_200_000, hold=d["hold_id"], tokens=1000)])

    after = await figures(redis, customer)
    assert after["wallet"] == before["wallet"] - 1_200_000
    assert after["held"] == 0 and after["holds"] == {} and after["hold_exp"] == {}
    assert after["spend"] == 1_200_000
    assert (r.replayed, r.hold_released_micros, r.wallet_after_micros, r.spend_after_micros) == (
        False, 1_500_000, after["wallet"], 1_200_000)
    assert (r.promoted_from, r.promoted_to) == (None, None)


async def test_same_settlement_twice_changes_nothing(redis, customer):
    d = await check(redis, customer, cost=900_000, tokens=500)
    it = item(customer, debit=800_000, spend=800_000, hold=d["hold_id"], tokens=700)
    (first,) = await settle(redis, [it])
    state = await figures(redis, customer)
    tat = await redis.get(customer.keys.rate_tokens(customer.key_id))

    # a redelivery alone, and twice more in one batch
    results = await settle(redis, [it]) + await settle(redis, [it, it])

    assert await figures(redis, customer) == state
    assert await redis.get(customer.keys.rate_tokens(customer.key_id)) == tat
    for r in results:  # from the outbox: what PostgreSQL must still record
        assert r.replayed and r.to_record
        assert (r.hold_released_micros, r.wallet_after_micros, r.spend_after_micros) == (
            first.hold_released_micros, first.wallet_after_micros, first.spend_after_micros)
    # one mark for the customer, no record per event
    assert int(await redis.get(customer.keys.settled)) == it.seq
    assert await redis.hkeys(customer.keys.settle_outbox) == [str(it.seq).encode()]


async def test_duplicates_inside_one_batch_settle_once(redis, customer):
    it = item(customer, debit=10, spend=10)
    r1, r2 = await settle(redis, [it, it])
    assert (r1.replayed, r2.replayed) == (False, True)
    assert (await figures(redis, customer))["wallet"] == 100_000_000 - 10


async def test_fail_open_event_without_hold_is_still_settled(redis, customer):
    d = await check(redis, customer, cost=1000, tokens=10)  # someone else's open hold stays
    (r,) = await settle(redis, [item(customer, debit=2500, spend=2500, tokens=10)])
    f = await figures(redis, customer)
    assert (f["wallet"], f["spend"], f["held"]) == (100_000_000 - 2500, 2500, 1000)
    assert d["hold_id"] in f["holds"] and r.hold_released_micros == 0


async def test_postpaid_adds_spend_without_a_wallet(redis, pg):
    from tests.settlement.conftest import make_customer
    c = await make_customer(pg, redis, mode="postpaid")
    (r,) = await settle(redis, [item(c, debit=0, spend=4_000)])
    assert await redis.exists(c.keys.wallet) == 0
    assert (r.wallet_after_micros, r.spend_after_micros) == (0, 4_000)


async def test_debit_may_take_the_wallet_below_zero(redis, pg):
    """Routing was decided by the rater; a race with another event must not lose a debit."""
    from tests.settlement.conftest import make_customer
    c = await make_customer(pg, redis, wallet_micros=1_000)
    (r,) = await settle(redis, [item(c, debit=1_500, spend=1_500)])
    assert r.wallet_after_micros == -500 == int(await redis.get(c.keys.wallet))


async def test_spend_key_lives_past_the_next_period(redis, customer):
    it = item(customer, spend=1)
    await settle(redis, [it])
    assert await redis.pttl(customer.keys.spend(it.period)) > 62 * 24 * 3600 * 1000


async def test_bad_items_are_refused_before_anything_is_written(redis, customer):
    good = item(customer, debit=5, spend=5)
    for bad in (item(customer, debit=1.5, spend=5), item(customer, tokens=-1), item(customer, debit=True),
                item(customer, period="2026-11")):
        with pytest.raises(ValueError):
            await settle(redis, [good, bad])
    assert (await figures(redis, customer))["wallet"] == 100_000_000
    assert await redis.exists(customer.keys.settled) == 0


async def test_works_after_redis_forgot_the_script(redis, customer):
    await settle(redis, [item(customer, spend=1)])
    await redis.script_flush()
    (r,) = await settle(redis, [item(customer, spend=2)])
    assert r.spend_after_micros == 3


async def test_money_beyond_double_precision_stays_exact(redis, pg):
    from tests.settlement.conftest import make_customer
    c = await make_customer(pg, redis, mode="postpaid")
    big = 2**53 + 1  # a Lua number would round this
    (r,) = await settle(redis, [item(c, spend=big)])
    assert r.spend_after_micros == big == int(await redis.get(c.keys.spend(period_of(time.time()))))


# ------------------------------------------------------------------ tokens/min correction
# free tier: 60000 tokens/min, so one token is 1 ms of the GCRA TAT.

async def _tat(redis, c) -> float | None:
    v = await redis.get(c.keys.rate_tokens(c.key_id))
    return None if v is None else float(v)


async def test_overestimate_gives_budget_back(redis, customer):
    d = await check(redis, customer, cost=1000, tokens=30_000)
    before = await _tat(redis, customer)
    await settle(redis, [item(customer, debit=1, spend=1, hold=d["hold_id"], tokens=10_000)])
    after = await _tat(redis, customer)
    assert after == pytest.approx(before - 20_000, abs=0.2)
    # the next check sees the 20000 tokens given back
    nxt = await check(redis, customer, cost=1, tokens=1)
    assert nxt["remaining_tokens"] >= 60_000 - 10_000 - 1 - 100  # minus drift while the test runs


async def test_underestimate_takes_more_budget(redis, customer):
    d = await check(redis, customer, cost=1000, tokens=1_000)
    before = await _tat(redis, customer)
    await settle(redis, [item(customer, debit=1, spend=1, hold=d["hold_id"], tokens=45_000)])
    assert await _tat(redis, customer) == pytest.approx(before + 44_000, abs=0.2)
    nxt = await check(redis, customer, cost=1, tokens=20_000)  # only ~15000 left
    assert nxt["reason"] == "rate_limited_tokens"


async def test_giving_back_never_fills_beyond_a_full_bucket(redis, customer):
    d = await check(redis, customer, cost=1000, tokens=30_000)
    # time passes: the bucket has refilled but for 100 tokens (100 ms of TAT left)
    now_ms = int(time.time() * 1000)
    # (the key's own TTL is long: if it expired by itself the asserts below would prove nothing)
    await redis.set(customer.keys.rate_tokens(customer.key_id), now_ms + 100, px=60_000)
    await settle(redis, [item(customer, debit=1, spend=1, hold=d["hold_id"], tokens=0)])
    assert await _tat(redis, customer) is None  # a full bucket, never "more than full"
    nxt = await check(redis, customer, cost=1, tokens=60_000)
    assert nxt["allowed"] == 1 and nxt["remaining_tokens"] == 0


class _NoPool:
    """A client without a connection pool (as RedisCluster): settle uses redis-py's pipeline."""

    def __init__(self, redis):
        self._redis = redis

    def pipeline(self, **kw):
        return self._redis.pipeline(**kw)

    async def script_load(self, source):
        return await self._redis.script_load(source)


@pytest.mark.parametrize("client", ["resp2", "resp3", "decoded", "no_pool"])
async def test_same_results_whatever_the_client(redis, redis_server, customer, client):
    """Replies are read unparsed (tollgate.redis_raw): RESP2 and RESP3, bytes or decoded, give the
    same results, and so does the redis-py pipeline of a client without a pool."""
    import redis.asyncio as aioredis

    kw = {"resp2": {"protocol": 2}, "resp3": {"protocol": 3}, "decoded": {"decode_responses": True}}.get(client, {})
    other = aioredis.Redis.from_url(redis_server.url, **kw)
    try:
        via = _NoPool(other) if client == "no_pool" else other
        await other.script_flush()  # the NOSCRIPT path too
        d = await check(redis, customer, cost=7_000_000, tokens=100)
        it = item(customer, debit=6_000_000, spend=6_000_000, hold=d["hold_id"], tokens=100)
        (r,) = await settle(via, [it])
        (again,) = await settle(via, [it])
    finally:
        await other.aclose()
    assert (r.replayed, r.hold_released_micros, r.wallet_after_micros, r.spend_after_micros) == (
        False, 7_000_000, 94_000_000, 6_000_000)
    assert (r.promoted_from, r.promoted_to) == ("free", "build")  # 6.00 >= the 5.00 threshold
    assert again == r._replace(replayed=True)
