"""Rollover through the real rater and period close (PostgreSQL, Redis): the close of P carries
unused included units into P+1, credits P+1's events rated before it, and later events are rated
with the larger quota; P+1 adds up to the batch rating with its final allowance."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from control.read.preview import preview
from rater import periods
from rater.rollovers import credit_id
from tests.rater.conftest import PERIOD, TS, raw, redis_state, uid
from tollgate.invoices import invoice, line_sources
from tollgate.money import format_micros
from tollgate.plans import load_plan_text
from tollgate.rating.stages.pipeline import run_batch

ROOT = Path(__file__).resolve().parents[2]
LAST = datetime.now(timezone.utc).replace(day=1) - timedelta(days=1)
LAST_TS = LAST.strftime("%Y-%m-%dT12:00:00Z")
LAST_PERIOD = LAST.strftime("%Y%m")
PRICE = 2_000  # micros per request beyond the quota (0.002)


def plan_text(mode: str) -> str:
    text = (ROOT / "examples" / "plans" / "api-included-rollover.yaml").read_text()
    return (text.replace("id: api-included-rollover", f"id: {uid('plan')}", 1)
            .replace("billing_mode: postpaid", f"billing_mode: {mode}", 1))


def requests(c: str, n: int, ts: str, model: str = "small") -> dict:
    eid = uid("evt")
    return {"kind": "usage", "id": eid, "customer_id": c, "key_id": "key_1", "correlation_id": f"req_{eid}",
            "event_type": "api.call", "timestamp": ts, "received_at": ts, "properties": {"model": model},
            "measurements": [{"metric": "requests", "value": n}]}


async def spend_of(pg, c: str, period: str) -> int:
    return await pg.fetchval("SELECT coalesce(sum(spend_micros), 0)::int8 FROM processed_events"
                             " WHERE customer_id = $1 AND period = $2", c, period)


@pytest.mark.parametrize("mode", ["postpaid", "hybrid"])
async def test_late_close_credits_the_next_period_and_later_events_use_the_carried_units(
        pg, redis, pipeline, make_customer, mode):
    text = plan_text(mode)
    plan = load_plan_text(text)
    c = await make_customer(text, wallet_micros=100_000_000)
    # P: 7,000 of 10,000 included requests used (3,000 unused); the large model: none of its 1,000.
    await pipeline.process_raw(raw([requests(c, 4_000, LAST_TS), requests(c, 3_000, LAST_TS)]))
    # P+1, before P is closed: 11,000 requests, 1,000 beyond the plain quota, charged with 10 % fee.
    res = await pipeline.process_raw(raw([requests(c, 6_000, TS), requests(c, 5_000, TS)]))
    assert res.rated == 2 and not res.dead
    assert await spend_of(pg, c, PERIOD) == 1_000 * PRICE * 110 // 100
    before = await redis_state(redis, c)

    [out] = await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[c])
    assert out.get("error") is None
    rows = await pg.fetch("SELECT charge_id, dimension_key, units, from_period, credit_event_id FROM rating_rollovers"
                          " WHERE customer_id = $1 AND period = $2 ORDER BY dimension_key", c, PERIOD)
    # min(5000, 10000 - 7000) and min(5000, 1000 - 0): each key its own carry
    assert [tuple(r) for r in rows] == [("requests", "default", 3_000, LAST_PERIOD, credit_id(c, PERIOD)),
                                        ("requests", "override0", 1_000, LAST_PERIOD, credit_id(c, PERIOD))]
    # The credit: the 1,000 requests now inside the 13,000 quota, and their fee.
    credit = await pg.fetchrow("SELECT * FROM processed_events WHERE event_id = $1", credit_id(c, PERIOD))
    assert (credit["kind"], credit["period"], credit["spend_micros"]) == ("rollover", PERIOD, -1_000 * PRICE * 110 // 100)
    lines = await pg.fetch("SELECT kind, charge_id, dimension_key, quantity, amount_micros FROM ledger_lines"
                           " WHERE event_id = $1 ORDER BY line_no", credit_id(c, PERIOD))
    assert [tuple(r) for r in lines] == [("rollover", "requests", "default", 1_000, -1_000 * PRICE),
                                         ("percentage", "platform_fee", "default", -1_000 * PRICE, -1_000 * PRICE // 10)]
    assert await spend_of(pg, c, PERIOD) == 0
    after = await redis_state(redis, c)
    assert after["spend"] == before["spend"] + credit["spend_micros"] == 0
    if mode == "hybrid":  # the wallet paid the overage: it gets it back
        assert credit["wallet_micros"] == credit["spend_micros"]
        assert after["wallet"] == before["wallet"] - credit["wallet_micros"] == 100_000_000

    # P's invoice shows what it carried out.
    inv = await invoice(pg, out["invoice_id"])
    carried = [(ln["kind"], ln["dimension_key"], ln["quantity"], ln["amount"]) for ln in inv["lines"]
               if ln["kind"].startswith("carried")]
    assert carried == [("carried_out", "default", "3000", "0.00"), ("carried_out", "override0", "1000", "0.00")]

    # After the close: rated with 13,000 (and 2,000 for the large model). 11,000 + 2,500 = 500 over.
    res = await pipeline.process_raw(raw([requests(c, 2_500, TS), requests(c, 1_500, TS, model="large")]))
    assert res.rated == 2 and not res.dead
    assert await spend_of(pg, c, PERIOD) == 500 * PRICE * 110 // 100  # the large model: inside its 2,000

    # The preview shows the allowance with the carried units, and equals the ledger.
    pv = await preview(pg, redis, c)
    allow = {a["dimension_key"]: a for a in pv["allowances"]}
    assert (allow["default"]["included_units"], allow["default"]["carried_in"], allow["default"]["allowance"],
            allow["default"]["used"], allow["default"]["remaining"]) == ("10000", "3000", "13000", "13500", "0")
    assert (allow["override0"]["allowance"], allow["override0"]["remaining"], allow["override0"]["carried_out"]) == (
        "2000", "500", "500")
    assert allow["default"]["carried_out"] == "0"
    assert pv["spend_to_date"] == format_micros(500 * PRICE * 110 // 100)

    # Closing P+1: its invoice equals the batch rating with the final allowance, and shows both.
    [out2] = await periods.close_period(pg, redis, PERIOD, customer_ids=[c], allow_open=True)
    assert out2.get("error") is None
    cum = {("requests", "default"): 13_500, ("requests", "override0"): 1_500}
    batch = run_batch(plan, cum, billing_mode=mode, carried_in={("requests", "default"): 3_000,
                                                                ("requests", "override0"): 1_000})
    inv2 = await invoice(pg, out2["invoice_id"])
    assert inv2["total"] == format_micros(batch.total_micros) == format_micros(500 * PRICE * 110 // 100)
    kinds = [(ln["kind"], ln["dimension_key"], ln["quantity"]) for ln in inv2["lines"] if ln["kind"].startswith("carried")]
    assert kinds == [("carried_in", "default", "3000"), ("carried_in", "override0", "1000"),
                     ("carried_out", "override0", "500")]
    credit_line = next(ln for ln in inv2["lines"] if ln["kind"] == "rollover")
    assert credit_line["amount"] == format_micros(-1_000 * PRICE)
    [src] = await line_sources(pg, out2["invoice_id"], credit_line["line_no"])
    assert src["event_id"] == credit_id(c, PERIOD) and src["correlation_id"] is None


async def test_a_customer_without_usage_carries_at_most_the_cap_and_nothing_rolls_for_a_plan_without_it(
        pg, redis, pipeline, make_customer):
    idle = await make_customer(plan_text("postpaid"))
    plain = await make_customer((ROOT / "examples" / "plans" / "llm-standard.yaml").read_text()
                                .replace("id: llm-standard", f"id: {uid('plan')}", 1))
    out = await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[idle, plain])
    assert [o.get("error") for o in out] == [None, None]
    rows = await pg.fetch("SELECT customer_id, dimension_key, units, credit_event_id FROM rating_rollovers"
                          " WHERE customer_id = ANY($1::text[]) ORDER BY dimension_key", [idle, plain])
    assert [tuple(r) for r in rows] == [(idle, "default", 5_000, None), (idle, "override0", 1_000, None)]

    # Re-running the close changes nothing (the invoice is final; its carry was written with it).
    again = await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[idle])
    assert again[0]["already_closed"] is True
    assert await pg.fetchval("SELECT count(*) FROM rating_rollovers WHERE customer_id = $1", idle) == 2

    # The first events of P+1 are rated with 15,000 included requests.
    res = await pipeline.process_raw(raw([requests(idle, 15_000, TS), requests(idle, 10, TS)]))
    assert res.rated == 2
    assert await spend_of(pg, idle, PERIOD) == 10 * PRICE * 110 // 100


async def test_rerun_close_settles_the_credit_it_left_unsettled(pg, redis, pipeline, make_customer):
    """A close that died after its commit and before its Redis settle: the re-run settles the
    close and the rollover credit, in sequence, once."""
    c = await make_customer(plan_text("postpaid"))
    await pipeline.process_raw(raw([requests(c, 12_000, TS)]))
    [out] = await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[c])
    state = await redis_state(redis, c)
    assert state["spend"] == 0  # 12,000 inside 10,000 + 5,000 carried
    # Simulate the lost settle: roll Redis back to before the close and the credit.
    from tollgate.keys import CustomerKeys  # noqa: PLC0415

    k = CustomerKeys(c)
    settled = int(await redis.get(k.settled))
    await redis.set(k.settled, settled - 2)
    await redis.set(k.spend(PERIOD), 2_000 * PRICE * 110 // 100)
    await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[c])
    assert int(await redis.get(k.settled)) == settled
    assert (await redis_state(redis, c))["spend"] == 0
    await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[c])  # and again: a replay
    assert (await redis_state(redis, c))["spend"] == 0
    assert out["invoice_id"]
