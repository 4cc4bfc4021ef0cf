"""Stage quantities: an event over its plan's maximum per event raises (the rater dead-letters
it); the period close and batch rating, whose totals are sums of events, are not bounded."""
import pytest

from tollgate.rating.pricing import InvalidMeasurementError, RatingError
from tollgate.rating.stages import pipeline
from tests.pricing.helpers import make_plan
from tollgate.plans import DEFAULT_MAX_QUANTITY_PER_EVENT

CHARGES = [{"id": "in", "model": "per_unit", "metric": "input_tokens", "unit_price": "0.000003"},
           {"id": "sec", "model": "per_unit", "metric": "seconds", "unit_price": "0.0001"}]


def test_the_default_maximum_holds_per_metric_and_per_event():
    plan = make_plan(CHARGES)
    pipeline.run_event(plan, {}, {"input_tokens": DEFAULT_MAX_QUANTITY_PER_EVENT}, {})
    with pytest.raises(InvalidMeasurementError, match="max_quantity_per_event") as err:
        pipeline.run_event(plan, {}, {"input_tokens": 1, "seconds": DEFAULT_MAX_QUANTITY_PER_EVENT + 1}, {})
    assert isinstance(err.value, RatingError) and "seconds" in str(err.value)


def test_a_plans_own_maximum_and_default():
    plan = make_plan(CHARGES, limits={"requests_per_minute": 1, "tokens_per_minute": 1,
                                      "max_quantity_per_event": {"default": 10, "seconds": 10**11}})
    pipeline.run_event(plan, {}, {"seconds": 10**11, "input_tokens": 10}, {})
    with pytest.raises(InvalidMeasurementError):
        pipeline.run_event(plan, {}, {"input_tokens": 11}, {})


def test_close_and_batch_totals_are_not_bounded():
    plan = make_plan(CHARGES, limits={"requests_per_minute": 1, "tokens_per_minute": 1,
                                      "max_quantity_per_event": {"default": 10}})
    totals = {("in", "default"): 10**6}
    assert pipeline.run_batch(plan, totals).total_micros == 3_000_000
    assert pipeline.run_close(plan, totals).total_micros == 0
