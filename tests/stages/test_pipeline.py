from decimal import Decimal

from tollgate.rating.stages import pipeline
from tests.pricing.helpers import make_plan

PLAN = make_plan(
    [
        {"id": "in", "model": "per_unit", "metric": "input_tokens", "unit_price": "0.000003"},
        {"id": "req", "model": "included", "metric": "requests", "unit_price": "0.01", "included_units": 1},
        {"id": "base", "model": "flat", "amount": "10"},
    ],
    billing_mode="hybrid",
    minimum_commit="50",
    discounts=[{"type": "percent", "value": "10"}],
    tax={"percent": "20"},
    limits={"requests_per_minute": 1, "tokens_per_minute": 1, "monthly_spend_cap": "5"},
)


def test_stage_order():
    names = [s.__module__.rsplit(".", 1)[1] for s in pipeline.STAGES]
    assert names == ["quantities", "allowance", "rate", "commit", "discount", "tax", "route"]


def test_event_through_every_stage():
    m = {"input_tokens": 1_000_000, "requests": 2}
    ctx = pipeline.run_event(PLAN, {}, m, {}, wallet_available_micros=1_000_000)
    assert ctx.charges_micros == 3_000_000 + 10_000  # one request included
    assert [a.overage_units for a in ctx.allowances] == [1]
    assert ctx.cap_flags == ()  # 3.01 of a 5.00 cap: below 80%
    assert ctx.discount_micros == 301_000
    assert ctx.tax_micros == 541_800  # 20% of 2.709
    assert ctx.total_micros == 3_250_800
    assert (ctx.wallet_micros, ctx.invoice_micros) == (1_000_000, 2_250_800)
    ctx2 = pipeline.run_event(PLAN, {}, {"input_tokens": 400_000}, ctx.cumulative_after)
    assert ctx2.cap_flags == (80,)  # 4.21 >= 4.00


def test_close_and_batch_agree_with_events():
    e1 = pipeline.run_event(PLAN, {}, {"input_tokens": 1_000_000, "requests": 2}, {})
    close = pipeline.run_close(PLAN, e1.cumulative_after)
    batch = pipeline.run_batch(PLAN, e1.cumulative_after)
    assert [l.kind for l in close.lines] == ["flat"]
    assert close.commit_true_up_micros == 50_000_000 - 13_010_000
    assert e1.total_micros + close.total_micros == batch.total_micros == 54_000_000  # 50 - 10% + 20%


def test_inputs_are_not_changed():
    cum = {("in", "default"): 5}
    m = {"input_tokens": 1}
    pipeline.run_event(PLAN, {}, m, cum, tax_percent=Decimal(0))
    assert cum == {("in", "default"): 5} and m == {"input_tokens": 1}
