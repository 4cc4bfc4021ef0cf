"""Period close: invoices with true-up, discounts and tax, equal to the batch rating of the period,
lines tracing to correlation_ids; idempotent; late events go to the open period."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from rater import periods
from rater.pipeline import decompose
from tollgate.rating.stages.pipeline import run_batch, run_close, run_event
from tests.rater.conftest import PERIOD, raw, redis_state, uid, usage
from tollgate import invoices
from tollgate.plans import load_plan_text

ROOT = Path(__file__).resolve().parents[2]
LAST = (datetime.now(timezone.utc).replace(day=1) - timedelta(days=1))
LAST_TS = LAST.strftime("%Y-%m-%dT12:00:00Z")
LAST_PERIOD = LAST.strftime("%Y%m")


def sample_plan(mode: str) -> str:
    text = (ROOT / "examples" / "plans" / "llm-standard.yaml").read_text()
    return (text.replace("id: llm-standard", f"id: {uid('plan')}", 1)
            .replace("billing_mode: prepaid", f"billing_mode: {mode}", 1)
            .replace('percent: "0"', 'percent: "8.25"'))


def events_for(c: str) -> list[dict]:
    evs = [usage(c, 20_000 + i, 5_000 + 7 * i, cache=3_000 * i, ts=LAST_TS,
                 model=["claude-sonnet-4-6", "claude-opus-4-1"][i % 2],
                 extra=[{"metric": "requests", "value": 1}]) for i in range(6)]
    evs.append(usage(c, 1000, 200, ts=LAST_TS, extra=[{"metric": "contract_reviewed", "value": 1}]))
    return evs


@pytest.mark.parametrize("mode", ["postpaid", "hybrid"])
async def test_close_produces_an_invoice_equal_to_the_batch_rating(pg, redis, pipeline, make_customer, mode):
    text = sample_plan(mode)
    c = await make_customer(text, wallet_micros=3_000_000)
    idle = await make_customer(text)  # no usage: still owes the recurring fee and the commit
    evs = events_for(c)
    res = await pipeline.process_raw(raw(evs))
    assert (res.rated, res.dead) == (len(evs), [])

    out = await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[c, idle])
    assert [o.get("error") for o in out] == [None, None]

    # Expected, from the pure stages alone: events one by one, then the close == the batch.
    plan = load_plan_text(text)
    cum, wallet, events_total, prepaid = {}, 3_000_000, 0, 0
    for e in evs:
        ctx = run_event(plan, e["properties"], decompose(e["measurements"]), cum, billing_mode=mode,
                        wallet_available_micros=wallet)
        cum, wallet = ctx.cumulative_after, wallet - ctx.wallet_micros
        events_total += ctx.total_micros
        prepaid += ctx.wallet_micros
    close = run_close(plan, cum, billing_mode=mode, wallet_available_micros=wallet)
    batch = run_batch(plan, cum, billing_mode=mode)
    assert events_total + close.total_micros == batch.total_micros
    assert close.commit_true_up_micros > 0 and close.tax_micros > 0 and batch.discount_micros > 0

    inv = await pg.fetchrow("SELECT * FROM invoices WHERE customer_id = $1 AND period = $2", c, LAST_PERIOD)
    assert inv["total_micros"] == batch.total_micros
    assert inv["discount_micros"] == batch.discount_micros and inv["tax_micros"] == batch.tax_micros
    assert inv["subtotal_micros"] == batch.charges_micros + batch.commit_true_up_micros
    expected_prepaid = prepaid + close.wallet_micros if mode == "hybrid" else 0
    assert inv["prepaid_micros"] == expected_prepaid
    assert inv["amount_due_micros"] == batch.total_micros - expected_prepaid
    lines = await pg.fetch("SELECT * FROM invoice_lines WHERE invoice_id = $1 ORDER BY line_no", inv["id"])
    assert sum(r["amount_micros"] for r in lines) == inv["amount_due_micros"]
    assert {r["kind"] for r in lines} >= {"usage", "metered", "flat", "true_up", "discount", "tax", "prepaid"}

    # Each usage line traces to the requests behind it.
    opus = next(r for r in lines if r["charge_id"] == "input_tokens" and r["dimension_key"] == "override0")
    src = await invoices.line_sources(pg, inv["id"], opus["line_no"])
    assert sorted(s["correlation_id"] for s in src) == sorted(e["correlation_id"] for e in evs[1:6:2])
    assert sum(s["amount_micros"] for s in src) == opus["amount_micros"]

    # Redis: the period's spend includes the close; the wallet paid what the invoice says.
    state = await redis_state(redis, c, LAST_PERIOD)
    assert state["spend"] == batch.total_micros
    assert state["wallet"] == 3_000_000 - expected_prepaid

    # The idle customer: recurring fee, commit true-up, discount, tax, nothing else.
    idle_inv = await pg.fetchrow("SELECT * FROM invoices WHERE customer_id = $1 AND period = $2", idle, LAST_PERIOD)
    assert idle_inv["total_micros"] == run_batch(plan, {}, billing_mode=mode).total_micros > 0


async def test_close_is_idempotent_and_late_events_go_to_the_open_period(pg, redis, pipeline, make_customer):
    text = sample_plan("postpaid")
    c = await make_customer(text)
    await pipeline.process_raw(raw(events_for(c)[:2]))
    first = await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[c])
    again = await periods.close_period(pg, redis, LAST_PERIOD, customer_ids=[c])
    assert first[0]["total"] == again[0]["total"] and again[0]["already_closed"]
    assert await pg.fetchval("SELECT count(*) FROM invoices WHERE customer_id = $1", c) == 1
    spend = (await redis_state(redis, c, LAST_PERIOD))["spend"]

    late = usage(c, 500, 500, ts=LAST_TS)
    await pipeline.process_raw(raw([late]))
    assert await pg.fetchval("SELECT period FROM processed_events WHERE event_id = $1", late["id"]) == PERIOD
    assert (await redis_state(redis, c, LAST_PERIOD))["spend"] == spend
    assert (await redis_state(redis, c, PERIOD))["spend"] > 0


async def test_the_open_period_cannot_be_closed(pg, redis):
    with pytest.raises(periods.PeriodCloseError):
        await periods.close_period(pg, redis, PERIOD)
