"""Hybrid routing of a volume-tier credit: the credit undoes what the period's earlier charges
were routed to, the invoice first, then the wallet, so the wallet never pays more than the
period's charges and the invoice never shows a negative amount due for usage the wallet paid."""
from __future__ import annotations

from decimal import Decimal

from rater import periods
from tests.rater.conftest import PERIOD, PLAN, raw, redis_state, usage
from tollgate.periods import next_period, period_bounds
from tollgate.rating.stages import route

VOLUME = PLAN.replace('''  - {{id: input_tokens, model: per_unit, metric: input_tokens, unit_price: "0.0000031"}}''', '''  - id: input_tokens
    model: volume
    metric: input_tokens
    tiers:
      - {{up_to: 10, unit_price: "1"}}
      - {{up_to: null, unit_price: "0.5"}}''')


async def _routed(pg, cid: str) -> tuple[int, int]:
    row = await pg.fetchrow("SELECT coalesce(sum(wallet_micros), 0)::int8 AS w, coalesce(sum(invoice_micros), 0)::int8 AS i"
                            " FROM processed_events WHERE customer_id = $1", cid)
    return row["w"], row["i"]


async def test_the_issue_repro_the_credit_returns_to_the_wallet(pg, redis, pipeline, make_customer, plan_for):
    """Volume tiers 1.00 up to 10 units, 0.50 beyond; hybrid with 100.00: 10 units, then 1."""
    assert VOLUME != PLAN
    cid = await make_customer(plan_for("hybrid", VOLUME), wallet_micros=100_000_000)
    assert (await pipeline.process_raw(raw([usage(cid, 10, 0)]))).rated == 1
    assert await _routed(pg, cid) == (10_000_000, 0)
    assert (await pipeline.process_raw(raw([usage(cid, 1, 0)]))).rated == 1
    # 11 units at 0.50 = 5.50: the second event is a credit of 4.50, all back to the wallet
    assert await _routed(pg, cid) == (5_500_000, 0)
    assert (await redis_state(redis, cid))["wallet"] == 94_500_000
    # the invoice: 5.50 in all, paid by the wallet, nothing due (it showed -4.50 due)
    later = period_bounds(next_period(PERIOD))[0].timestamp() + 7200
    (out,) = await periods.close_period(pg, redis, PERIOD, customer_ids=[cid], now=later)
    assert out.get("error") is None, out
    assert (Decimal(out["total"]), Decimal(out["prepaid"]), Decimal(out["amount_due"])) == (
        Decimal("5.5"), Decimal("5.5"), Decimal("0")), out


async def test_the_credit_reduces_the_invoice_first_then_the_wallet(pg, redis, pipeline, make_customer, plan_for):
    """5.00 in the wallet: 10 units put 5.00 on the wallet and 5.00 on the invoice; the 11th unit's
    credit of 4.50 comes off the invoice (never turning invoiced usage into prepaid money)."""
    cid = await make_customer(plan_for("hybrid", VOLUME), wallet_micros=5_000_000)
    assert (await pipeline.process_raw(raw([usage(cid, 10, 0)]))).rated == 1
    assert await _routed(pg, cid) == (5_000_000, 5_000_000)
    assert (await pipeline.process_raw(raw([usage(cid, 1, 0)]))).rated == 1
    assert await _routed(pg, cid) == (5_000_000, 500_000)
    assert (await redis_state(redis, cid))["wallet"] == 0


async def test_in_one_batch(pg, redis, pipeline, make_customer, plan_for):
    """Three events in one batch: the credit's sums include this transaction's own earlier event."""
    cid = await make_customer(plan_for("hybrid", VOLUME), wallet_micros=100_000_000)
    res = await pipeline.process_raw(raw([usage(cid, 10, 0), usage(cid, 1, 0), usage(cid, 1, 0)]))
    assert res.rated == 3
    assert await _routed(pg, cid) == (6_000_000, 0)  # 12 units at 0.50
    assert (await redis_state(redis, cid))["wallet"] == 94_000_000


def test_split_of_a_hybrid_credit():
    # nothing due: back to the wallet, at most what it paid; the rest (none here) to the invoice
    assert route.split("hybrid", -4, 0, wallet_paid_micros=10, invoice_due_micros=0) == (-4, 0)
    assert route.split("hybrid", -4, 0, wallet_paid_micros=10, invoice_due_micros=3) == (-1, -3)
    assert route.split("hybrid", -4, 0, wallet_paid_micros=1, invoice_due_micros=0) == (-1, -3)
    assert route.split("hybrid", -4, 0) == (0, -4)  # sums unknown: the invoice, as before
    assert route.split("hybrid", 4, 10, wallet_paid_micros=0, invoice_due_micros=0) == (4, 0)
