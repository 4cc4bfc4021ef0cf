"""The engine on a plan combining every model: events, close, batch, errors."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tollgate.rating.pricing import (
    InvalidMeasurementError,
    RatingError,
    StateError,
    UnknownMetricError,
    charge_amounts,
    close_period,
    period_subtotal,
    rate_event,
    rate_period,
)
from tollgate.rating.pricing.engine import pricing_for_key
from tests.pricing.helpers import TIERS_A, make_plan

D = Decimal
PLAN = make_plan(
    [
        {"id": "in", "model": "per_unit", "metric": "input_tokens", "unit_price": "0.000003",
         "overrides": [{"match": {"model": "opus"}, "unit_price": "0.000015"}]},
        {"id": "out", "model": "graduated", "metric": "output_tokens", "tiers": TIERS_A},
        {"id": "req", "model": "included", "metric": "requests", "unit_price": "0.01", "included_units": 2},
        {"id": "review", "model": "composite", "outcome": "contracts_reviewed", "unit_price": "4.99",
         "metered": ["input_tokens", "pages"]},
        {"id": "platform", "model": "flat", "amount": "10"},
        {"id": "support", "model": "percentage", "percent": "10", "minimum": "2", "base_charges": ["in", "out"]},
    ]
)


def by_kind(lines):
    return {(l.charge_id, l.kind, l.metric, l.dimension_key): l for l in lines}


def test_event_lines_and_state():
    cum = {}
    ev = rate_event(PLAN, {"model": "sonnet"}, {"input_tokens": 1000, "output_tokens": 150, "requests": 1}, cum)
    assert cum == {}  # the input is not changed
    lines = by_kind(ev.lines)
    assert lines[("in", "usage", "input_tokens", "default")].amount_micros == 3_000
    out = lines[("out", "usage", "output_tokens", "default")]
    assert out.amount_micros == 2_400_000  # 2.00 for tier 0 (fee incl.) + 50 * 0.008
    assert out.unit_price is None and [t.quantity for t in out.tiers] == [100, 50]
    req = lines[("req", "usage", "requests", "default")]
    assert (req.amount_micros, req.unit_price) == (0, D(0))  # inside the included quota
    assert not [k for k in lines if k[0] == "review"]  # no outcome in this event: nothing under it
    pct = lines[("support", "percentage", None, "default")]
    assert (pct.quantity, pct.amount_micros, pct.cumulative_after) == (2_403_000, 240_300, 2_403_000)
    assert ev.amount_micros == 3_000 + 2_400_000 + 240_300
    assert (ev.subtotal_before_micros, ev.subtotal_after_micros) == (0, ev.amount_micros)
    assert ev.cumulative == ev.updates == {
        ("in", "default"): 1000,
        ("out", "default"): 150,
        ("req", "default"): 1,
    }


def test_override_accumulates_and_prices_separately():
    ev1 = rate_event(PLAN, {"model": "opus"}, {"input_tokens": 1000}, {})
    assert by_kind(ev1.lines)[("in", "usage", "input_tokens", "override0")].amount_micros == 15_000
    ev2 = rate_event(PLAN, {"model": "sonnet"}, {"input_tokens": 1000}, ev1.cumulative)
    assert ev2.cumulative[("in", "override0")] == 1000 and ev2.cumulative[("in", "default")] == 1000
    assert pricing_for_key(PLAN.charges[0], "override0").unit_price == D("0.000015")


def test_override_choice_is_the_plans_for_every_value_type():
    """The engine remembers the override each value picked (by its str(), all Override.matches
    compares): 1, "1", True and 1.0 are equal as dict keys but pick differently."""
    plan = make_plan([{"id": "in", "model": "per_unit", "metric": "input_tokens", "unit_price": "0.000003",
                       "overrides": [{"match": {"tier": "1"}, "unit_price": "0.000015"},
                                     {"match": {"tier": "True", "region": "eu"}, "unit_price": "0.000030"}]}])
    charge = plan.charges[0]
    cases = [{"tier": 1}, {"tier": "1"}, {"tier": True}, {"tier": 1.0}, {"tier": True, "region": "eu"},
             {"tier": "True", "region": "eu"}, {"region": "eu"}, {}, {"tier": [1]}, {"tier": 1}]
    for dims in cases * 2:  # the second pass is served from what the first remembered
        (line,) = rate_event(plan, dims, {"input_tokens": 10}, {}).lines
        assert line.dimension_key == charge.dimension_key(dims), dims
    picked = [rate_event(plan, d, {"input_tokens": 10}, {}).lines[0].dimension_key for d in cases[:6]]
    assert picked == ["override0", "override0", "default", "default", "override1", "override1"]


def test_composite_outcome_billed():
    ev = rate_event(PLAN, {}, {"contracts_reviewed": 2, "pages": 40}, {})
    lines = by_kind(ev.lines)
    assert lines[("review", "usage", "contracts_reviewed", "default")].amount_micros == 9_980_000
    assert lines[("review", "metered", "pages", "default")].quantity == 40
    assert ev.amount_micros == 9_980_000  # review is not a base of the percentage


def test_an_outcome_covers_its_metered_metrics_in_the_same_event():
    """The issue's case: one contract reviewed and 1,000 input tokens is the outcome's price only;
    the tokens are recorded under it (amount 0, for margin) and not billed by `in`. Output tokens,
    which the outcome does not meter, are billed by their own charge; the same tokens in an event
    without the outcome are billed as usual."""
    ev = rate_event(PLAN, {}, {"contracts_reviewed": 1, "input_tokens": 1000, "output_tokens": 10}, {})
    lines = by_kind(ev.lines)
    assert lines[("review", "usage", "contracts_reviewed", "default")].amount_micros == 4_990_000
    metered = lines[("review", "metered", "input_tokens", "default")]
    assert (metered.quantity, metered.amount_micros, metered.unit_price) == (1000, 0, None)
    assert ("in", "usage", "input_tokens", "default") not in lines
    assert lines[("out", "usage", "output_tokens", "default")].quantity == 10
    assert ("in", "default") not in ev.cumulative
    alone = rate_event(PLAN, {}, {"input_tokens": 1000}, ev.cumulative)
    assert by_kind(alone.lines)[("in", "usage", "input_tokens", "default")].amount_micros == 3_000
    assert alone.cumulative[("review", "default:input_tokens")] == 1000  # the covered ones only


def test_zero_measurement_gives_no_line_but_is_checked():
    assert rate_event(PLAN, {}, {"input_tokens": 0}, {}).lines == ()
    with pytest.raises(UnknownMetricError) as e:
        rate_event(PLAN, {}, {"input_tokens": 5, "images": 0}, {})
    assert e.value.metric == "images" and isinstance(e.value, RatingError)


@pytest.mark.parametrize("value", [-1, 1.5, "3", True, D(2)])
def test_bad_measurement(value):
    with pytest.raises(InvalidMeasurementError):
        rate_event(PLAN, {}, {"input_tokens": value}, {})


@pytest.mark.parametrize(
    "cum",
    [{("nope", "default"): 1}, {("in", "override7"): 1}, {("platform", "default"): 1},
     {("review", "default:output_tokens"): 1}, {("in", "default"): -1}],
)
def test_state_not_matching_the_plan(cum):
    with pytest.raises(StateError):
        period_subtotal(PLAN, cum)


def test_close_period_flat_and_minimum():
    cum = {("in", "default"): 1_000_000}  # 3.00 of base: support 0.30 < minimum 2
    lines = close_period(PLAN, cum)
    assert [(l.charge_id, l.kind, l.amount_micros) for l in lines] == [
        ("platform", "flat", 10_000_000),
        ("support", "minimum", 1_700_000),
    ]
    assert charge_amounts(PLAN, cum, closed=True)["support"] == 2_000_000
    assert period_subtotal(PLAN, cum, closed=True) == 3_000_000 + 10_000_000 + 2_000_000


def test_percentage_of_flat_and_of_percentage_at_close():
    plan = make_plan([
        {"id": "u", "model": "per_unit", "metric": "t", "unit_price": "1"},
        {"id": "f", "model": "flat", "amount": "100"},
        {"id": "p1", "model": "percentage", "percent": "10", "minimum": "50", "base_charges": ["u", "f"]},
        {"id": "p2", "model": "percentage", "percent": "50", "base_charges": ["p1"]},
    ])
    ev = rate_event(plan, {}, {"t": 3}, {})
    assert [(l.charge_id, l.amount_micros) for l in ev.lines] == [("u", 3_000_000), ("p1", 300_000), ("p2", 150_000)]
    close = close_period(plan, ev.cumulative)
    assert [(l.charge_id, l.kind, l.amount_micros) for l in close] == [
        ("f", "flat", 100_000_000),
        ("p1", "percentage", 10_000_000),  # 10% of the flat fee
        ("p1", "minimum", 39_700_000),  # 10.30 -> 50
        ("p2", "percentage", 24_850_000),  # 50% of what p1 gained at close
    ]
    batch = rate_period(plan, ev.cumulative)
    assert sum(l.amount_micros for l in batch) == ev.amount_micros + sum(l.amount_micros for l in close)
    assert sum(l.amount_micros for l in batch) == 3_000_000 + 100_000_000 + 50_000_000 + 25_000_000


def test_batch_equals_events_plus_close():
    events = [
        ({"model": "opus"}, {"input_tokens": 700, "output_tokens": 99, "requests": 1, "pages": 3}),
        ({"model": "sonnet"}, {"input_tokens": 12345, "output_tokens": 2, "requests": 1}),
        ({}, {"output_tokens": 900, "requests": 3, "contracts_reviewed": 1, "input_tokens": 50, "pages": 7}),
        ({"model": "opus"}, {"output_tokens": 1, "input_tokens": 1}),
    ]
    cum, total = {}, 0
    for dims, m in events:
        ev = rate_event(PLAN, dims, m, cum)
        assert ev.subtotal_before_micros == total == period_subtotal(PLAN, cum)
        cum, total = ev.cumulative, total + ev.amount_micros
    total += sum(l.amount_micros for l in close_period(PLAN, cum))
    batch = rate_period(PLAN, cum)
    assert sum(l.amount_micros for l in batch) == total == period_subtotal(PLAN, cum, closed=True)
    out = [l for l in batch if l.charge_id == "out"][0]
    assert out.quantity == 1002 and [t.quantity for t in out.tiers] == [100, 900, 2]
    # only the event with the outcome meters under it; its 50 input tokens are not billed by `in`
    assert {(l.metric, l.quantity) for l in batch if l.kind == "metered"} == {("input_tokens", 50), ("pages", 7)}
    assert sum(l.quantity for l in batch if l.charge_id == "in") == 700 + 12345 + 1


def test_cumulatives_carry_their_costs_and_are_read_only():
    ev = rate_event(PLAN, {"model": "opus"}, {"input_tokens": 1000, "output_tokens": 150}, {})
    cum = ev.cumulative
    assert cum == {("in", "override0"): 1000, ("out", "default"): 150}
    assert cum.subtotal_micros == ev.subtotal_after_micros == period_subtotal(PLAN, cum)
    with pytest.raises(TypeError):
        cum[("in", "override0")] = 5  # would leave the carried costs wrong
    with pytest.raises(TypeError):
        cum.update({("in", "default"): 1})
    copy = dict(cum)
    copy[("in", "default")] = 7  # a plain copy is priced from scratch
    assert rate_event(PLAN, {}, {"input_tokens": 1}, copy).subtotal_before_micros == period_subtotal(PLAN, copy)


def test_state_is_checked_when_it_is_not_the_engines_own():
    with pytest.raises(StateError):  # e.g. usage left by an older plan version: a dead letter
        rate_event(PLAN, {}, {"input_tokens": 1}, {("nope", "default"): 1})
    other = make_plan([{"id": "x", "model": "per_unit", "metric": "input_tokens", "unit_price": "1"}])
    foreign = rate_event(other, {}, {"input_tokens": 1}, {}).cumulative  # another plan's Cumulatives
    with pytest.raises(StateError):
        rate_event(PLAN, {}, {"input_tokens": 1}, foreign)


def test_plans_with_the_same_id_are_priced_each_by_its_own_prices():
    """The per-plan precomputation is cached by Plan object, never by id."""
    one = make_plan([{"id": "t", "model": "per_unit", "metric": "t", "unit_price": "1"}])
    two = make_plan([{"id": "t", "model": "per_unit", "metric": "t", "unit_price": "2"}])
    assert one.id == two.id
    assert [rate_event(p, {}, {"t": 3}, {}).amount_micros for p in (one, two, one)] == [3_000_000, 6_000_000, 3_000_000]
