import pytest

from tollgate.rating.pricing import StateError
from tollgate.rating.stages import allowance
from tollgate.rating.stages.pipeline import run_event
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


def test_units_carried_in_grow_the_quota_of_their_key_only():
    carried = {("req", "override0"): 5}
    ctx = allowance.run(RatingContext(PLAN, "event", {"model": "opus"}, {"requests": 12}, {}, carried_in=carried))
    assert ctx.allowances == (Allowance("req", "override0", "requests", 12, 0, 3),)
    ctx = allowance.run(RatingContext(PLAN, "event", {}, {"requests": 102}, {}, carried_in=carried))
    assert ctx.allowances == (Allowance("req", "default", "requests", 100, 2, 0),)


def test_carried_units_of_a_charge_that_is_not_included_are_refused():
    with pytest.raises(StateError):
        run_event(PLAN, {}, {"tokens": 5}, {}, carried_in={("tok", "default"): 5})
