"""Margin Guard rules: parsing (errors name the field) and the pure trip conditions."""
import pytest

from tollgate.margin_guard import GuardRuleError, margin_percent, margin_trips, parse_rules, session_trips
from tollgate.plans import PlanError, load_plan_text
from tests.control.conftest import SAMPLE_PLAN


def test_session_rule_by_outcome_and_by_max_cost():
    rules = parse_rules([
        {"id": "loop", "when": "session_cost", "percent_of_outcome": 80, "outcome": "contract_reviewed"},
        {"id": "hard", "when": "session_cost", "max_cost": "5.00", "action": "alert", "stop": "agent"},
    ])
    assert [(r.action, r.stop) for r in rules] == [("deny", "session"), ("alert", "agent")]
    prices = {"contract_reviewed": 2_500_000}
    assert session_trips(rules, 2_000_000, prices) == []  # exactly 80 %: not past it
    assert [r.id for r in session_trips(rules, 2_000_001, prices)] == ["loop"]
    assert [r.id for r in session_trips(rules, 5_000_001, prices)] == ["loop", "hard"]
    assert [r.id for r in session_trips(rules, 5_000_001, {})] == ["hard"]  # no such outcome: that rule cannot judge


def test_period_margin_rule():
    (r,) = parse_rules([{"id": "thin", "when": "period_margin", "below_percent": "20", "min_revenue": "10.00"}])
    assert r.stop == "customer"
    assert margin_trips((r,), 9_000_000, 9_000_000) == []  # under the minimum revenue: not judged
    assert margin_trips((r,), 10_000_000, 8_000_000) == []  # exactly 20 %
    assert margin_trips((r,), 10_000_000, 8_000_001) == [r]
    (z,) = parse_rules([{"id": "z", "when": "period_margin", "below_percent": 0}])
    assert margin_trips((z,), 0, 1) == [z] and margin_trips((z,), 0, 0) == []
    assert margin_percent(10_000_000, 8_010_000) == "19.90" and margin_percent(0, 5) is None


@pytest.mark.parametrize("raw, field", [
    ({"id": "x"}, "margin_guard"),
    ([{"when": "session_cost", "max_cost": "1"}], "margin_guard[0].id"),
    ([{"id": "a b", "when": "session_cost", "max_cost": "1"}], "margin_guard[0].id"),
    ([{"id": "x", "when": "soon"}], "margin_guard[0].when"),
    ([{"id": "x", "when": "session_cost"}], "margin_guard[0].percent_of_outcome"),
    ([{"id": "x", "when": "session_cost", "max_cost": "1", "percent_of_outcome": 5, "outcome": "o"}],
     "margin_guard[0].percent_of_outcome"),
    ([{"id": "x", "when": "session_cost", "percent_of_outcome": 80}], "margin_guard[0].outcome"),
    ([{"id": "x", "when": "session_cost", "max_cost": 1.5}], "margin_guard[0].max_cost"),
    ([{"id": "x", "when": "session_cost", "max_cost": "-1"}], "margin_guard[0].max_cost"),
    ([{"id": "x", "when": "session_cost", "max_cost": "1", "stop": "customer"}], "margin_guard[0].stop"),
    ([{"id": "x", "when": "period_margin"}], "margin_guard[0].below_percent"),
    ([{"id": "x", "when": "period_margin", "below_percent": 101}], "margin_guard[0].below_percent"),
    ([{"id": "x", "when": "period_margin", "below_percent": 5, "action": "panic"}], "margin_guard[0].action"),
    ([{"id": "x", "when": "period_margin", "below_percent": 5, "extra": 1}], "margin_guard[0].extra"),
    ([{"id": "x", "when": "period_margin", "below_percent": 5}, {"id": "x", "when": "period_margin", "below_percent": 5}],
     "margin_guard[1].id"),
])
def test_bad_rules_name_the_field(raw, field):
    with pytest.raises(GuardRuleError) as e:
        parse_rules(raw)
    assert e.value.field == field


def test_plan_rules_must_name_a_composite_charge():
    text = SAMPLE_PLAN.read_text()
    plan = load_plan_text(text + "\nmargin_guard:\n  - {id: loop, when: session_cost, percent_of_outcome: 80, outcome: contract_reviewed}\n")
    assert plan.margin_guard[0].outcome == "contract_reviewed" and plan.outcome_prices == {"contract_reviewed": 2_500_000}
    with pytest.raises(PlanError) as e:
        load_plan_text(text + "\nmargin_guard:\n  - {id: loop, when: session_cost, percent_of_outcome: 80, outcome: input_tokens}\n")
    assert e.value.field == "margin_guard[0].outcome"
