from tollgate.rating.stages import allowance
from tollgate.rating.stages.context import Allowance, RatingContext
from tests.pricing.helpers import make_plan

PLAN = make_plan([
    {"id": "req", "model": "included", "metric": "requests", "unit_price": "0.01", "included_units": 100,
     "overrides": [{"match": {"model": "opus"}, "unit_price": "0.02", "included_units": 10}]},
    {"id": "tok", "model": "per_unit", "metric": "tokens", "unit_price": "0.001"},
])


def test_event_crossing_the_quota_is_split():
    ctx = allowance.run(RatingContext(PLAN, "event", {}, {"requests": 30, "tokens": 5}, {("req", "default"): 90}))
    assert ctx.allowances == (Allowance("req", "default", "requests", 10, 20, 0),)
    assert ctx.measurements == {"requests": 30, "tokens": 5}  # attribution only: nothing removed


def test_override_has_its_own_quota():
    ctx = allowance.run(RatingContext(PLAN, "event", {"model": "opus"}, {"requests": 4}, {("req", "default"): 500}))
    assert ctx.allowances == (Allowance("req", "override0", "requests", 4, 0, 6),)


def test_no_included_usage_no_attribution():
    assert allowance.run(RatingContext(PLAN, "event", {}, {"tokens": 5}, {})).allowances == ()
    assert allowance.run(RatingContext(PLAN, "close", {}, {}, {("req", "default"): 5})).allowances == ()


def test_batch_attributes_the_period():
    ctx = allowance.run(RatingContext(PLAN, "batch", {}, {}, {("req", "default"): 150, ("req", "override0"): 3}))
    assert ctx.allowances == (
        Allowance("req", "default", "requests", 100, 50, 0),
        Allowance("req", "override0", "requests", 3, 0, 7),
    )
