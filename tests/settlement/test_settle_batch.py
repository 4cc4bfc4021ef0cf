"""settle.lua settles all the events of one customer given in one settle() call in one run:
the same results as one call per event, in item order, each event idempotent on its own."""
from __future__ import annotations

import time

import pytest
from redis.exceptions import ResponseError

import lua
from rater import settlement
from rater.settlement import NotProjected, SettleGap, settle
from tollgate.keys import SPEND_TTL_MS
from tollgate.redis_raw import eval_many
from tests.settlement.conftest import BUILD_MICROS, SCALE_MICROS, check, figures, make_customer
from tests.settlement.test_settle import _tat, item
from tollgate.periods import period_of


def _previous_period() -> str:
    y, m = divmod(int(period_of(time.time())[4:]) - 2, 12)
    return f"{int(period_of(time.time())[:4]) + y}{m + 1:02d}"


def _figures_of(r) -> tuple:
    """A result without its event id."""
    return r[1:]


async def _items_for(redis, c) -> list:
    """The same mixed sequence for any customer: holds (over and under estimated), a fail-open
    event, a late event of the previous period, a promotion to build, a credit."""
    h1 = await check(redis, c, cost=2_000_000, tokens=5_000)
    h2 = await check(redis, c, cost=1_000_000, tokens=1_000)
    return [
        item(c, debit=1_500_000, spend=1_500_000, hold=h1["hold_id"], tokens=3_000),
        item(c, debit=500_000, spend=500_000, tokens=10),  # fail-open: no hold
        item(c, debit=0, spend=7_000_000, period=_previous_period()),  # late: never promotes
        item(c, debit=2_000_000, spend=3_500_000, hold=h2["hold_id"], tokens=4_000),  # 5.5 >= 5: build
        item(c, debit=-300_000, spend=-300_000),  # a volume-tier credit
        item(c, debit=1, spend=1, hold=h2["hold_id"]),  # names a hold already released: 0 released
    ]


async def test_one_call_matches_one_call_per_event(redis, pg):
    one_run = await make_customer(pg, redis, wallet_micros=100_000_000)
    per_event = await make_customer(pg, redis, wallet_micros=100_000_000)
    items_a, items_b = await _items_for(redis, one_run), await _items_for(redis, per_event)
    tat_a0, tat_b0 = await _tat(redis, one_run), await _tat(redis, per_event)

    batched = await settle(redis, items_a)
    single = [(await settle(redis, [it]))[0] for it in items_b]

    assert [r.event_id for r in batched] == [it.event_id for it in items_a]
    assert [_figures_of(r) for r in batched] == [_figures_of(r) for r in single]
    assert [(r.promoted_from, r.promoted_to) for r in batched] == [(None, None)] * 3 + [("free", "build")] + [
        (None, None)] * 2
    assert [r.hold_released_micros for r in batched] == [2_000_000, 0, 0, 1_000_000, 0, 0]
    assert batched[-1].wallet_after_micros == 100_000_000 - 1_500_000 - 500_000 - 2_000_000 + 300_000 - 1
    fa, fb = await figures(redis, one_run), await figures(redis, per_event)
    assert {k: fa[k] for k in ("wallet", "held", "spend", "holds", "hold_exp", "tier")} == {
        k: fb[k] for k in ("wallet", "held", "spend", "holds", "hold_exp", "tier")}
    assert fa["tier"] == "build" and fa["held"] == 0
    prev = _previous_period()
    assert int(await redis.get(one_run.keys.spend(prev))) == 7_000_000
    assert int(await redis.get(per_event.keys.spend(prev))) == 7_000_000
    # tokens/min: -2000 then +3000 tokens at the free rate (1 ms each), in both
    assert await _tat(redis, one_run) - tat_a0 == pytest.approx(await _tat(redis, per_event) - tat_b0, abs=0.2)
    assert await _tat(redis, one_run) - tat_a0 == pytest.approx(1_000, abs=0.2)
    for it in items_a:  # every spend key has its TTL
        assert SPEND_TTL_MS - 60_000 < await redis.pttl(one_run.keys.spend(it.period)) <= SPEND_TTL_MS
    # one mark per customer; the outbox holds the results PostgreSQL must record (holds, promotion)
    assert int(await redis.get(one_run.keys.settled)) == items_a[-1].seq
    assert sorted(int(f) for f in await redis.hkeys(one_run.keys.settle_outbox)) == [
        it.seq for it in items_a if it.hold_id or it is items_a[3]]


async def test_promotion_crossed_by_the_second_of_three(redis, customer):
    h1 = await check(redis, customer, cost=3_000_000, tokens=1_000)
    h3 = await check(redis, customer, cost=3_000_000, tokens=1_000)
    tat0 = await _tat(redis, customer)
    r1, r2, r3 = await settle(redis, [
        item(customer, debit=3_000_000, spend=3_000_000, hold=h1["hold_id"], tokens=1_000),  # free's tpm read
        item(customer, debit=3_000_000, spend=3_000_000),  # 6.00 >= 5.00: build
        item(customer, debit=3_000_000, spend=3_000_000, hold=h3["hold_id"], tokens=21_000),
    ])
    assert (r1.promoted_from, r1.promoted_to) == (None, None)
    assert (r2.promoted_from, r2.promoted_to) == ("free", "build")
    assert (r3.promoted_from, r3.promoted_to) == (None, None)  # already build, 9.00 < 50.00
    assert [r.spend_after_micros for r in (r1, r2, r3)] == [3_000_000, 6_000_000, 9_000_000]
    assert (await figures(redis, customer))["tier"] == "build"
    # the 3rd corrects at build's tokens/min (x2: 0.5 ms a token), not free's: +20000 tokens
    assert await _tat(redis, customer) - tat0 == pytest.approx(10_000, abs=0.2)


async def test_next_threshold_crossed_later_in_the_same_call(redis, customer):
    r1, r2, r3 = await settle(redis, [item(customer, spend=3_000_000), item(customer, spend=3_000_000),
                                      item(customer, spend=SCALE_MICROS - 6_000_000)])
    assert [(r.promoted_from, r.promoted_to) for r in (r1, r2, r3)] == [
        (None, None), ("free", "build"), ("build", "scale")]
    assert (await figures(redis, customer))["tier"] == "scale"


async def test_one_event_may_jump_two_tiers(redis, customer):
    r1, r2 = await settle(redis, [item(customer, spend=SCALE_MICROS), item(customer, spend=BUILD_MICROS)])
    assert [(r.promoted_from, r.promoted_to) for r in (r1, r2)] == [("free", "scale"), (None, None)]


async def test_interleaved_customers_come_back_in_item_order(redis, pg):
    a = await make_customer(pg, redis, wallet_micros=1_000_000)
    b = await make_customer(pg, redis, wallet_micros=2_000_000)
    items = [item(a, debit=1, spend=1), item(b, debit=10, spend=10), item(a, debit=2, spend=2),
             item(b, debit=20, spend=20), item(a, debit=3, spend=3)]
    results = await settle(redis, items)
    assert [r.event_id for r in results] == [it.event_id for it in items]
    assert [(r.wallet_after_micros, r.spend_after_micros) for r in results] == [
        (999_999, 1), (1_999_990, 10), (999_997, 3), (1_999_970, 30), (999_994, 6)]


async def test_same_event_twice_in_one_call_is_counted_once(redis, customer):
    e1, e2, e3 = (item(customer, debit=d, spend=d) for d in (10, 20, 40))
    r = await settle(redis, [e1, e2, e1, e3])
    assert [x.replayed for x in r] == [False, False, True, False]
    # settled in sequence order, so the repeat comes right after e1: its figures, nothing to record
    assert r[2] == r[0]._replace(replayed=True, to_record=False)
    assert [x.spend_after_micros for x in r] == [10, 30, 10, 70]
    f = await figures(redis, customer)
    assert (f["wallet"], f["spend"]) == (100_000_000 - 70, 70)


async def test_partially_replayed_call(redis, customer):
    d = await check(redis, customer, cost=500, tokens=10)
    e1, e2 = item(customer, debit=100, spend=100), item(customer, debit=200, spend=200, hold=d["hold_id"], tokens=10)
    e3, e4 = item(customer, debit=400, spend=400), item(customer, debit=800, spend=800)
    first = await settle(redis, [e1, e2])

    r1, r2, r3, r4 = await settle(redis, [e1, e2, e3, e4])

    assert r1 == first[0]._replace(replayed=True, to_record=False, wallet_after_micros=100_000_000 - 300,
                                   spend_after_micros=300)  # nothing to record: today's figures
    assert r2 == first[1]._replace(replayed=True)  # its hold release is in the outbox until recorded
    assert (r2.hold_released_micros, r2.spend_after_micros) == (500, 300)
    assert (r3.replayed, r3.spend_after_micros) == (False, 700)
    assert (r4.replayed, r4.spend_after_micros) == (False, 1_500)
    assert r4.wallet_after_micros == 100_000_000 - 1_500
    f = await figures(redis, customer)
    assert (f["wallet"], f["spend"], f["held"], f["holds"]) == (100_000_000 - 1_500, 1_500, 0, {})
    # and the whole call again: all four replayed, nothing changes
    again = await settle(redis, [e1, e2, e3, e4])
    assert [x.replayed for x in again] == [True] * 4 and again[1] == r2
    assert [x.to_record for x in again] == [False, True, False, False]
    assert await figures(redis, customer) == f


async def test_a_gap_is_never_skipped(redis, customer):
    """A number above mark + 1 stops the run there: nothing of it or after it is settled."""
    e1, e2, e3 = (item(customer, debit=d, spend=d) for d in (1, 2, 4))
    with pytest.raises(SettleGap):
        await settle(redis, [e2, e3])
    f = await figures(redis, customer)
    assert (f["wallet"], f["spend"]) == (100_000_000, 0) and await redis.get(customer.keys.settled) is None
    (r1,) = await settle(redis, [e1])
    with pytest.raises(SettleGap):  # e1 went through; e3 still waits for e2
        await settle(redis, [e3])
    r2, r3 = await settle(redis, [e2, e3])
    assert [r.spend_after_micros for r in (r1, r2, r3)] == [1, 3, 7]
    assert int(await redis.get(customer.keys.settled)) == e3.seq


async def test_settle_filling_settles_the_missing_numbers_first(redis, customer):
    """The caller's fill gives the stored figures of the missing numbers (as PostgreSQL would)."""
    d = await check(redis, customer, cost=9_000, tokens=10)
    lost = [item(customer, debit=10, spend=10, hold=d["hold_id"]), item(customer, debit=20, spend=20)]
    mine = [item(customer, debit=40, spend=40)]
    asked = []

    async def fill(customer_id, first, last):
        asked.append((customer_id, first, last))
        return [it for it in lost if first <= it.seq <= last]

    items, results = await settlement.settle_filling(redis, mine, fill)
    assert asked == [(customer.id, lost[0].seq, lost[1].seq)]
    assert items == lost + mine
    assert [(r.replayed, r.hold_released_micros, r.spend_after_micros) for r in results] == [
        (False, 9_000, 10), (False, 0, 30), (False, 0, 70)]
    f = await figures(redis, customer)
    assert (f["wallet"], f["spend"], f["held"]) == (100_000_000 - 70, 70, 0)
    # a fill that cannot give every missing number: nothing is skipped
    gap = [item(customer, spend=1) for _ in range(3)][2]
    with pytest.raises(SettleGap):
        await settlement.settle_filling(redis, [gap], fill)
    assert (await figures(redis, customer))["spend"] == 70


async def test_a_customer_without_cfg_is_not_settled(redis, customer):
    """Redis lost the projection: nothing is written until the rebuild (which writes the mark)."""
    await redis.delete(customer.keys.cfg)
    with pytest.raises(NotProjected):
        await settle(redis, [item(customer, debit=5, spend=5)])
    assert int(await redis.get(customer.keys.wallet)) == 100_000_000
    assert await redis.get(customer.keys.settled) is None


async def test_only_the_declared_tokens_bucket_is_touched(redis, customer):
    """Redis Cluster: settle.lua touches only keys in KEYS. A hold placed by another API key than
    the event names is released, but that key's bucket (undeclared) is not corrected."""
    d = await check(redis, customer, cost=1_000, tokens=30_000)  # placed by customer.key_id
    other = customer.keys.rate_tokens("key_other")
    await redis.set(other, 12345, px=60_000)
    tat = await _tat(redis, customer)
    (r,) = await settle(redis, [item(customer, debit=1, spend=1, hold=d["hold_id"], tokens=0, key_id="key_other")])
    assert r.hold_released_micros == 1_000
    assert await _tat(redis, customer) == tat and await redis.get(other) == b"12345"


async def test_more_events_than_one_run_takes(redis, customer, monkeypatch):
    monkeypatch.setattr(settlement, "CHUNK", 3)
    sent = []
    real = settlement.eval_many

    async def spy(redis_, script, calls):
        sent.append([(len(k) - 7) // 2 for k, _ in calls])
        return await real(redis_, script, calls)

    monkeypatch.setattr(settlement, "eval_many", spy)
    items = [item(customer, debit=1, spend=1) for _ in range(8)]
    results = await settle(redis, items)
    assert sent == [[3, 3, 2]]  # one pipeline, three runs
    assert [r.spend_after_micros for r in results] == list(range(1, 9))
    assert [r.event_id for r in results] == [it.event_id for it in items]


async def test_script_refuses_a_malformed_call(redis, customer):
    k = customer.keys
    keys = [k.cfg, k.wallet, k.held, k.holds, k.hold_expiry, k.settled, k.settle_outbox, k.inflight,
            k.spend(period_of(time.time())), k.cfg]
    with pytest.raises(ResponseError):  # the event's count of level spend keys is missing
        await eval_many(redis, lua.load("settle"), [(keys, [SPEND_TTL_MS, 1, "", 1, 1, 0])])
    with pytest.raises(ResponseError):  # it says one level spend key follows, and none does
        await eval_many(redis, lua.load("settle"), [(keys, [SPEND_TTL_MS, 1, "", 1, 1, 0, 1])])
    with pytest.raises(ResponseError):
        await eval_many(redis, lua.load("settle"), [(keys[:8], [SPEND_TTL_MS])])
    assert (await figures(redis, customer))["wallet"] == 100_000_000
