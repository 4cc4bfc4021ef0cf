"""The real rater process: SIGKILL in the middle of 5,000 events, restart, exact totals."""
from __future__ import annotations

import asyncio
import random
import time

import pytest

from rater import charges
from tests.rater.conftest import expected, pg_totals, redis_state, usage
from tests.rater.processes import RaterProcess
from tollgate.bus.redis_streams import RedisStreamsProducer
from tollgate.keys import EVENTS_STREAM

N_EVENTS = 5000


async def _count(pg, customers: list[str]) -> int:
    return await pg.fetchval("SELECT count(*) FROM processed_events WHERE customer_id = ANY($1::text[])", customers)


async def _wait(cond, timeout: float, what: str, rater: RaterProcess) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if not rater.alive():
            raise AssertionError(f"the rater exited while waiting for {what}:\n{rater.logs()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{rater.logs()[-3000:]}")
        await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_sigkill_mid_stream_and_restart_leaves_exact_totals(pg, pg_dsn, redis, redis_server, plan_for,
                                                                  make_customer):
    text = plan_for("postpaid")
    modes, start = {}, {}
    for mode, wallet in [("prepaid", 1_000_000_000)] * 3 + [("postpaid", 0)] * 3 + [("hybrid", 2_000_000)] * 3:
        c = await make_customer(text, wallet_micros=wallet, billing_mode=mode)
        modes[c], start[c] = mode, wallet
    customers = list(modes)
    rnd = random.Random(7)
    events = [usage(customers[i % len(customers)], rnd.randint(1, 4000), rnd.randint(1, 3000),
                    cache=rnd.choice([0, 0, rnd.randint(1, 9000)])) for i in range(N_EVENTS)]
    exp = expected(text, events, modes, start)
    assert all(0 < exp[c]["invoice"] for c in customers if modes[c] == "hybrid")  # wallets run out mid-way

    bus = RedisStreamsProducer(redis_server.url)
    try:
        for i in range(0, N_EVENTS, 1000):
            await bus.publish(events[i:i + 1000])
    finally:
        await bus.close()

    env = {"TOLLGATE_REDIS_URL": redis_server.url, "TOLLGATE_DATABASE_URL": pg_dsn, "TOLLGATE_BUS": "redis",
           "TOLLGATE_RATER_CONSUMER": "rater-1"}
    args = ["--batch", "250", "--sweep-interval", "0"]
    rater = RaterProcess(env, args).start()
    try:
        await _wait(lambda: _count_at_least(pg, customers, 1500), 60, "1,500 events rated", rater)
        rater.kill()
        at_kill = await _count(pg, customers)
        assert 1500 <= at_kill < N_EVENTS, at_kill

        rater = RaterProcess(env, args).start()

        async def finished() -> bool:
            return (await _count(pg, customers) == N_EVENTS
                    and (await redis.xpending(EVENTS_STREAM, "rater"))["pending"] == 0
                    and (await redis.xinfo_groups(EVENTS_STREAM))[0]["lag"] == 0)

        await _wait(finished, 120, "all events rated and acknowledged", rater)
    finally:
        code = rater.stop()
    assert code == 0, rater.logs()[-3000:]

    for c in customers:
        got = await pg_totals(pg, c)
        assert got == {"spend": exp[c]["spend"], "wallet": exp[c]["wallet"], "invoice": exp[c]["invoice"],
                       "events": N_EVENTS // len(customers) + (customers.index(c) < N_EVENTS % len(customers)),
                       "ledger": exp[c]["spend"]}, c
        assert await redis_state(redis, c) == {"wallet": start[c] - exp[c]["wallet"], "spend": exp[c]["spend"],
                                               "held": 0}, c
    assert await pg.fetchval("SELECT count(*) FROM ledger_lines WHERE customer_id = ANY($1::text[])", customers) == \
        sum(2 + (len(e["measurements"]) > 2) for e in events)

    # Through the kill, the usage rollups still add up to the ledger exactly (appended in the
    # rating transaction; the rater compacts them as it goes), and every ledger line was
    # published on billing.charges at least once.
    for c in customers:
        rolled = await pg.fetchval(
            "SELECT coalesce(sum(amount_micros), 0)::int8 FROM (SELECT amount_micros FROM usage_rollups"
            " WHERE customer_id = $1 UNION ALL SELECT amount_micros FROM usage_rollup_deltas WHERE customer_id = $1) r", c)
        assert rolled == exp[c]["spend"], c
    assert await pg.fetchval("SELECT count(*) FROM usage_rollups WHERE customer_id = ANY($1::text[])", customers) > 0
    published = {f"{x['event_id']}:{x['line_no']}" for _, f in await redis.xrange(charges.STREAM)
                 for x in charges.decode(f[b"rows"])}
    ledger_ids = {f"{e}:{n}" for e, n in await pg.fetch(
        "SELECT event_id, line_no FROM ledger_lines WHERE customer_id = ANY($1::text[])", customers)}
    assert ledger_ids <= published


async def _count_at_least(pg, customers, n) -> bool:
    return await _count(pg, customers) >= n

