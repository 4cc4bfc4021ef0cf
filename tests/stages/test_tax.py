from decimal import Decimal

from tollgate.rating.stages import tax
from tollgate.rating.stages.context import RatingContext
from tests.pricing.helpers import make_plan

D = Decimal
PLAN = make_plan([{"id": "t", "model": "per_unit", "metric": "t", "unit_price": "1"}])
TAXED = make_plan([{"id": "t", "model": "per_unit", "metric": "t", "unit_price": "1"}], tax={"percent": "19"})


def test_zero_by_default():
    assert PLAN.tax_percent == 0
    assert tax.run(RatingContext(PLAN, net_before_micros=0, net_after_micros=10**9)).tax_micros == 0


def test_tax_telescopes_on_the_cumulative_net():
    points = [0, 1, 2, 3, 4, 5, 6]  # 19% of 1 micro is 0.19: per-step rounding would give 0 every time
    steps = [tax.run(RatingContext(TAXED, net_before_micros=a, net_after_micros=b)).tax_micros
             for a, b in zip(points, points[1:])]
    assert sum(steps) == tax.tax_on(D(19), 6) == 1  # 1.14 -> 1
    assert tax.tax_on(D(19), 50) == 10  # 9.5 half-up


def test_rules_first_match_else_plan():
    rules = [tax.TaxRule({"country": "DE"}, D(19)), tax.TaxRule({"country": "FR"}, D(20))]
    assert tax.tax_percent_for(PLAN, {"country": "FR"}, rules) == 20
    assert tax.tax_percent_for(TAXED, {"country": "US"}, rules) == 19
    assert tax.tax_percent_for(PLAN, {}, rules) == 0
    ctx = tax.run(RatingContext(PLAN, tax_percent=D(20), net_before_micros=0, net_after_micros=100))
    assert ctx.tax_micros == 20
