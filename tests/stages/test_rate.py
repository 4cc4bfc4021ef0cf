import pytest

from tollgate.rating.pricing import UnknownMetricError
from tollgate.rating.stages import rate
from tollgate.rating.stages.context import RatingContext
from tests.pricing.helpers import make_plan

PLAN = make_plan([
    {"id": "tok", "model": "per_unit", "metric": "tokens", "unit_price": "0.001"},
    {"id": "base", "model": "flat", "amount": "5"},
])


def test_event_places_the_lines_in_the_running_subtotal():
    ctx = rate.run(RatingContext(PLAN, "event", {}, {"tokens": 300}, {("tok", "default"): 1000}))
    assert (ctx.subtotal_before_micros, ctx.subtotal_after_micros) == (1_000_000, 1_300_000)
    assert ctx.charges_micros == 300_000
    assert ctx.cumulative_after == ctx.updates == {("tok", "default"): 1300}


def test_close_adds_the_flat_fee():
    ctx = rate.run(RatingContext(PLAN, "close", cumulative={("tok", "default"): 1000}))
    assert [l.kind for l in ctx.lines] == ["flat"]
    assert (ctx.subtotal_before_micros, ctx.subtotal_after_micros) == (1_000_000, 6_000_000)
    assert ctx.updates == {}


def test_batch_rates_from_zero():
    ctx = rate.run(RatingContext(PLAN, "batch", cumulative={("tok", "default"): 1000}))
    assert (ctx.subtotal_before_micros, ctx.subtotal_after_micros) == (0, 6_000_000)


def test_unknown_metric_is_raised_for_the_dead_letters():
    with pytest.raises(UnknownMetricError):
        rate.run(RatingContext(PLAN, "event", {}, {"images": 1}, {}))
