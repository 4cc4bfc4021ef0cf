"""Each charge model against hand-computed amounts, at and around every tier bound."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tollgate.rating.pricing import composite, flat, graduated, included, per_unit, percentage, volume
from tollgate.rating.pricing.base import TierLine
from tests.pricing.helpers import TIERS_A, make_plan
from tollgate.money import to_micros
from tollgate.plans import Pricing

GRAD = make_plan([{"id": "g", "model": "graduated", "metric": "tokens", "tiers": TIERS_A}]).charges[0].pricing
VOL = make_plan([{"id": "v", "model": "volume", "metric": "tokens", "tiers": TIERS_A}]).charges[0].pricing
D = Decimal


def micros(pricing, model, a, b):
    return to_micros(model.amount(pricing, b)) - to_micros(model.amount(pricing, a))


# tiers: (0,100] at 0.01 + fee 1 on entry; (100,1000] at 0.008; (1000,inf) at 0.005 + fee 0.5 on entry
@pytest.mark.parametrize(
    "q, expected",
    [
        (0, "0"),
        (1, "1.01"),  # first unit enters tier 0: fee 1
        (99, "1.99"),
        (100, "2.00"),
        (101, "2.008"),
        (999, "9.192"),  # 2 + 899 * 0.008
        (1000, "9.2"),
        (1001, "9.705"),  # 9.2 + 0.005 + fee 0.5
        (1500, "12.2"),  # 9.2 + 500 * 0.005 + 0.5
    ],
)
def test_graduated_hand_computed(q, expected):
    assert graduated.amount(GRAD, q) == D(expected)


@pytest.mark.parametrize(
    "q, expected",
    [
        (0, "0"),
        (1, "1.01"),
        (99, "1.99"),
        (100, "2.00"),  # still tier 0
        (101, "0.808"),  # all 101 units at 0.008, no fee: cheaper than at 100
        (999, "7.992"),
        (1000, "8.000"),
        (1001, "5.505"),  # all 1001 at 0.005 + fee 0.5
        (1500, "8.0"),
    ],
)
def test_volume_hand_computed(q, expected):
    assert volume.amount(VOL, q) == D(expected)


def test_graduated_event_crossing_two_bounds_is_split_per_tier():
    # 50 -> 1500: F(50) = 1.5, F(1500) = 12.2
    lines = graduated.breakdown(GRAD, 50, 1500)
    assert lines == (
        TierLine(0, 50, D("0.01"), D(0), 500_000),
        TierLine(1, 900, D("0.008"), D(0), 7_200_000),
        TierLine(2, 500, D("0.005"), D("0.5"), 3_000_000),  # enters tier 2: its fee is here
    )
    assert sum(t.amount_micros for t in lines) == micros(GRAD, graduated, 50, 1500) == 10_700_000


@pytest.mark.parametrize(
    "a, b, expected",
    [
        (99, 101, [(0, 1, 10_000), (1, 1, 8_000)]),
        (100, 101, [(1, 1, 8_000)]),
        (99, 100, [(0, 1, 10_000)]),
        (0, 1, [(0, 1, 1_010_000)]),
        (999, 1001, [(1, 1, 8_000), (2, 1, 505_000)]),
        (1000, 1001, [(2, 1, 505_000)]),
        (100, 1001, [(1, 900, 7_200_000), (2, 1, 505_000)]),
    ],
)
def test_graduated_breakdown_around_bounds(a, b, expected):
    lines = graduated.breakdown(GRAD, a, b)
    assert [(t.tier, t.quantity, t.amount_micros) for t in lines] == expected
    assert sum(t.amount_micros for t in lines) == micros(GRAD, graduated, a, b)


def test_volume_event_crossing_a_cheaper_bound_is_negative_and_telescopes():
    assert micros(VOL, volume, 100, 101) == 808_000 - 2_000_000
    assert micros(VOL, volume, 1000, 1001) == 5_505_000 - 8_000_000
    # 50 -> 1500 in one event, or unit by unit around the bounds: the same total
    one = micros(VOL, volume, 50, 1500)
    steps = [50, 99, 100, 101, 999, 1000, 1001, 1500]
    assert one == sum(micros(VOL, volume, a, b) for a, b in zip(steps, steps[1:])) == 6_500_000
    (line,) = volume.breakdown(VOL, 50, 1500)
    assert (line.tier, line.quantity, line.flat_fee, line.amount_micros) == (2, 1450, D("0.5"), 6_500_000)
    (line,) = volume.breakdown(VOL, 1100, 1200)
    assert line.flat_fee == 0  # already in tier 2


def test_sub_micro_prices_round_at_cumulative_points_only():
    # 1.5 micros per unit up to 3, then 0.4: per-event micros are differences of rounded F
    p = make_plan([{"id": "g", "model": "graduated", "metric": "t", "tiers": [
        {"up_to": 3, "unit_price": "0.0000015"}, {"up_to": None, "unit_price": "0.0000004"}]}]).charges[0].pricing
    per_event = [micros(p, graduated, q, q + 1) for q in range(6)]
    assert per_event == [2, 1, 2, 0, 0, 1]  # F = 1.5, 3, 4.5, 4.9, 5.3, 5.7 micros
    assert sum(per_event) == to_micros(graduated.amount(p, 6)) == 6


def test_per_unit_nine_decimals():
    p = Pricing(unit_price=D("0.000003125"))
    assert per_unit.amount(p, 1000) == D("0.003125")
    assert micros(p, per_unit, 0, 1000) == 3125
    q = Pricing(unit_price=D("0.000000625"))  # 0.625 micros per unit
    assert micros(q, per_unit, 0, 4) == 3  # 2.5 micros rounds half-up
    assert micros(q, per_unit, 0, 1) == 1 and micros(q, per_unit, 1, 4) == 2


@pytest.mark.parametrize("q, expected", [(0, "0"), (999, "0"), (1000, "0"), (1001, "0.002"), (1500, "1.000")])
def test_included_then_overage(q, expected):
    p = Pricing(unit_price=D("0.002"), included_units=1000)
    assert included.amount(p, q) == D(expected)
    # the same price as two graduated tiers (one implementation of the breakdown)
    assert graduated.amount_for_tiers(included.tiers(p), q) == D(expected)


def test_included_split_and_breakdown():
    p = Pricing(unit_price=D("0.002"), included_units=1000)
    assert included.split(p, 900, 1100) == (100, 100)
    assert included.split(p, 1000, 1100) == (0, 100)
    assert included.split(p, 0, 1000) == (1000, 0)
    assert [(t.tier, t.quantity, t.unit_price, t.amount_micros) for t in included.breakdown(p, 900, 1100)] == [
        (0, 100, D(0), 0),
        (1, 100, D("0.002"), 200_000),
    ]
    assert included.remaining(p, 900) == 100 and included.remaining(p, 1200) == 0
    assert included.breakdown(Pricing(unit_price=D("0.1")), 0, 3)[0].amount_micros == 300_000  # no quota


def test_flat_fee_line():
    c = make_plan([{"id": "u", "model": "per_unit", "metric": "t", "unit_price": "1"},
                   {"id": "base", "model": "flat", "amount": "20.005"}]).charges[1]
    line = flat.close_line(c)
    assert (line.kind, line.quantity, line.unit_price, line.amount_micros) == ("flat", 1, D("20.005"), 20_005_000)


def test_percentage_and_minimum():
    c = make_plan([{"id": "u", "model": "per_unit", "metric": "t", "unit_price": "1"},
                   {"id": "fee", "model": "percentage", "percent": "2.5", "minimum": "1",
                    "base_charges": ["u"]}]).charges[1]
    assert percentage.amount_micros(c, 10_000_000) == 250_000
    assert percentage.amount_micros(c, 21) == 1  # 0.525 micros rounds half-up to 1
    assert percentage.amount_micros(c, 20) == 1  # 0.5 -> 1
    assert percentage.amount_micros(c, 19) == 0
    assert percentage.minimum_true_up(c, 10_000_000) == 750_000
    assert percentage.minimum_true_up(c, 100_000_000) == 0
    assert percentage.closed_amount_micros(c, 10_000_000) == 1_000_000


def test_composite_outcome_per_unit_and_metered_keys():
    c = make_plan([{"id": "review", "model": "composite", "outcome": "contracts_reviewed", "unit_price": "4.99",
                    "metered": ["input_tokens", "output_tokens"]}]).charges[0]
    assert composite.amount(c.pricing, 3) == D("14.97")
    assert composite.metered_metrics(c) == ("input_tokens", "output_tokens")
    k = composite.metered_key("override0", "input_tokens")
    assert composite.parse_metered_key(k) == ("override0", "input_tokens")
    assert composite.parse_metered_key("default") is None
