"""An anchored plan: the enforcer's spend key and the rater's ledger period agree, on either side
of the period boundary; events never land in a period later than the customer's current one;
fail-open records and late events of a closed period use the customer's current period."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from enforcer.checks import _Period
from rater import periods
from tests.periods.conftest import check, plan_text, usage, utc
from tollgate.keys import CustomerKeys
from tollgate.periods import period_of

MS = timedelta(milliseconds=1)


async def ledger_periods(pg, customer_id: str) -> dict[str, str]:
    rows = await pg.fetch("SELECT event_id, period FROM processed_events WHERE customer_id = $1", customer_id)
    lines = await pg.fetch("SELECT DISTINCT event_id, period FROM ledger_lines WHERE customer_id = $1", customer_id)
    assert {(r["event_id"], r["period"]) for r in lines} <= {(r["event_id"], r["period"]) for r in rows}
    return {r["event_id"]: r["period"] for r in rows}


async def spend(redis, customer_id: str, period: str) -> int:
    return int(await redis.get(CustomerKeys(customer_id).spend(period)) or 0)


async def test_the_14th_and_the_15th_on_anchor_day_15(pg, redis, pipeline, tenant):
    anchored, _ = await tenant(15)
    calendar, _ = await tenant(1)
    before, on = utc(2026, 3, 15) - MS, utc(2026, 3, 15)  # 23:59:59.999 on the 14th; 00:00 on the 15th
    evs = {("a14", anchored): before, ("a15", anchored): on, ("c14", calendar): before, ("c15", calendar): on}
    raws = [usage(c, 2 if name.endswith("14") else 3, at, event_id=f"{name}_{c}") for (name, c), at in evs.items()]
    res = await pipeline.process_raw(raws, now=utc(2026, 3, 20).timestamp())
    assert (res.rated, res.dead) == (4, [])

    # The enforcer at those instants: the spend key it reads for each customer's plan.
    enforcer_before, enforcer_on = _Period(lambda: before.timestamp()), _Period(lambda: on.timestamp())
    assert (enforcer_before.now(15), enforcer_on.now(15)) == ("202602", "202603")
    assert (enforcer_before.now(1), enforcer_on.now(1)) == ("202603", "202603")

    got = await ledger_periods(pg, anchored)
    assert got == {f"a14_{anchored}": enforcer_before.now(15), f"a15_{anchored}": enforcer_on.now(15)}
    assert await ledger_periods(pg, calendar) == {f"c14_{calendar}": "202603", f"c15_{calendar}": "202603"}
    # Settled into the spend key the enforcer reads at the event's time.
    assert (await spend(redis, anchored, "202602"), await spend(redis, anchored, "202603")) == (2_000_000, 3_000_000)
    assert await spend(redis, calendar, "202603") == 5_000_000


async def test_an_event_is_never_put_in_a_period_after_the_customers_current_one(pg, redis, pipeline, tenant):
    c, _ = await tenant(15)
    now = utc(2026, 3, 10)  # current period of anchor 15: 202602 (Feb 15 - Mar 15)
    ahead = usage(c, 1, utc(2026, 3, 16), event_id=f"ahead_{c}")  # a clock running 6 days fast
    fo = b'{"kind": "fail_open", "id": "fo_%s", "customer_id": "%s", "request_id": "r", "timestamp": "2026-03-10T00:00:00Z"}' % (
        c.encode(), c.encode())
    res = await pipeline.process_raw([ahead, fo], now=now.timestamp())
    assert (res.rated, res.fail_open, res.dead) == (1, 1, [])
    assert await ledger_periods(pg, c) == {f"ahead_{c}": "202602", f"fo_{c}": "202602"}


async def test_a_late_event_of_a_closed_anchored_period_goes_to_the_customers_current_one(pg, redis, pipeline, tenant):
    c, _ = await tenant(15)
    now = utc(2026, 3, 10).timestamp()  # anchor 15: 202601 (Jan 15 - Feb 15) is over, 202602 is current
    await pipeline.process_raw([usage(c, 1, utc(2026, 2, 1), event_id=f"jan_{c}")], now=now)
    out = await periods.close_period(pg, redis, "202601", customer_ids=[c], now=now)
    assert out[0]["period"] == "202601" and "error" not in out[0]
    await pipeline.process_raw([usage(c, 1, utc(2026, 2, 2), event_id=f"late_{c}")], now=now)
    got = await ledger_periods(pg, c)
    assert got[f"jan_{c}"] == "202601" and got[f"late_{c}"] == "202602"  # not the calendar month 202603


@pytest.mark.parametrize("anchor", [15, "tomorrow"])
async def test_the_real_enforcer_reads_the_spend_the_rater_settled(pg, redis, pipeline, tenant, enforcer, http, anchor):
    """End to end at the real time: an event rated now adds to the spend key the enforcer
    checks the cap against. (With anchor = tomorrow's day, the period is last month's id.)"""
    if anchor == "tomorrow":
        today = datetime.now(timezone.utc).day
        if today >= 28:  # anchors are 1-28: no period of any plan starts after today this month
            pytest.skip("on the 28th-31st no anchor day is after today")
        anchor = today + 1
    text = plan_text(anchor).replace("tokens_per_minute: 100000}", 'tokens_per_minute: 100000, monthly_spend_cap: "3.50"}')
    c, key = await tenant(text=text)
    now = datetime.now(timezone.utc)
    await pipeline.process_raw([usage(c, 3, now, event_id=f"now_{c}")])
    period = (await ledger_periods(pg, c))[f"now_{c}"]
    assert period == period_of(time.time(), anchor)
    assert await spend(redis, c, period) == 3_000_000

    r = await check(http, enforcer, key)  # $3 spent + a $1 estimate > the $3.50 cap
    assert (r.status_code, r.json()["reason"]) == (429, "spend_cap"), r.text
    assert r.json()["remaining"]["spend_cap"] == "0.50"
