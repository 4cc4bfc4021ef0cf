from decimal import Decimal

from tollgate.rating.stages import discount
from tollgate.rating.stages.context import RatingContext
from tests.pricing.helpers import make_plan
from tollgate.plans import Discount

D = Decimal


def test_net_in_plan_order_never_below_zero():
    pct, amt = Discount("percent", D("10")), Discount("amount", D("5"))
    assert discount.net_after_discounts([pct, amt], 100_000_000) == 85_000_000
    assert discount.net_after_discounts([amt, pct], 100_000_000) == 85_500_000
    assert discount.net_after_discounts([amt], 3_000_000) == 0
    assert discount.net_after_discounts([Discount("percent", D(100))], 7) == 0
    assert discount.net_after_discounts([], 7) == 7
    assert discount.net_after_discounts([Discount("percent", D("12.5"))], 5) == 4  # 0.625 rounds to 1


def test_amount_discount_is_consumed_as_spend_accrues():
    plan = make_plan([{"id": "t", "model": "per_unit", "metric": "t", "unit_price": "1"}],
                     discounts=[{"type": "amount", "value": "5"}])
    steps = [(0, 3_000_000), (3_000_000, 6_000_000), (6_000_000, 9_000_000)]
    got = [discount.run(RatingContext(plan, subtotal_before_micros=a, subtotal_after_micros=b)).discount_micros
           for a, b in steps]
    assert got == [3_000_000, 2_000_000, 0]  # never more than the step's charges


def test_percent_discount_telescopes_on_cumulative_amounts():
    plan = make_plan([{"id": "t", "model": "per_unit", "metric": "t", "unit_price": "1"}],
                     discounts=[{"type": "percent", "value": "33.3333"}])
    points = [0, 1, 2, 3, 10, 11]
    steps = [discount.run(RatingContext(plan, subtotal_before_micros=a, subtotal_after_micros=b)).discount_micros
             for a, b in zip(points, points[1:])]
    whole = discount.run(RatingContext(plan, subtotal_before_micros=0, subtotal_after_micros=11)).discount_micros
    assert sum(steps) == whole == 4  # round(11 * 0.333333) = round(3.666663)


def test_discount_applies_to_the_commit_true_up():
    plan = make_plan([{"id": "t", "model": "per_unit", "metric": "t", "unit_price": "1"}],
                     discounts=[{"type": "percent", "value": "10"}])
    ctx = discount.run(RatingContext(plan, "close", subtotal_before_micros=40, subtotal_after_micros=40,
                                     commit_true_up_micros=60))
    assert ctx.discount_micros == 6 and (ctx.net_before_micros, ctx.net_after_micros) == (36, 90)
