"""Costs beside prices: cost lines, exactness on the period cumulative, failed calls, catalogs."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tollgate.cost_catalogs import parse_catalog, with_catalog
from tollgate.plans import PlanError
from tollgate.rating.pricing import rate_event, rate_period, rate_period_costs
from tollgate.rating.pricing.cost import COST_CHARGE
from tollgate.rating.negotiated import unpriced_keys
from tests.pricing.helpers import make_plan

TOKENS = [
    {"id": "in", "model": "per_unit", "metric": "input_tokens", "unit_price": "0.000003",
     "overrides": [{"match": {"model": "big"}, "unit_price": "0.00001"}]},
    {"id": "out", "model": "per_unit", "metric": "output_tokens", "unit_price": "0.000012"},
]
COSTS = {
    "input_tokens": {"unit_cost": "0.0000025",
                     "costs_by": {"dimension": "model", "costs": {"mini": "0.00000015"}}},
    "output_tokens": "0.00001",
}


def by_metric(lines):
    return {(l.kind, l.metric): l for l in lines}


def test_lines_carry_their_metrics_cost():
    plan = make_plan(TOKENS, costs=COSTS)
    ev = rate_event(plan, {"model": "gpt"}, {"input_tokens": 1000, "output_tokens": 100}, {})
    lines = by_metric(ev.lines)
    assert lines[("usage", "input_tokens")].cost_micros == 2_500
    assert lines[("usage", "output_tokens")].cost_micros == 1_000
    assert ev.cost_micros == 3_500 and ev.amount_micros == 3_000 + 1_200
    assert ev.updates[(COST_CHARGE, "input_tokens@0.0000025")] == 1000


def test_fractional_micro_costs_telescope_on_the_period_cumulative():
    plan = make_plan(TOKENS, costs=COSTS)
    cum, costs = {}, []
    for _ in range(7):  # 0.15 micros a token: 3 tokens = 0.45 micros, rounded per event would be 0
        ev = rate_event(plan, {"model": "mini"}, {"input_tokens": 3}, cum)
        costs.append(ev.cost_micros)
        cum = ev.cumulative
    assert costs == [0, 1, 0, 1, 0, 1, 0] and sum(costs) == 3  # round(21 * 0.15) = round(3.15)
    assert cum[(COST_CHARGE, "input_tokens@0.00000015")] == 21
    assert sum(l.cost_micros for l in rate_period_costs(cum)) == 3
    # batch billing ignores cost keys, and a plan change does not call them unpriced
    assert sum(l.amount_micros for l in rate_period(plan, cum)) == 21 * 3
    assert unpriced_keys(plan, list(cum)) == []


def test_composite_metered_lines_carry_cost_and_cost_only_lines():
    plan = make_plan([
        *TOKENS,
        {"id": "review", "model": "composite", "outcome": "contract_reviewed", "unit_price": "2.50",
         "metered": ["input_tokens"]},
    ], costs={"input_tokens": "0.000002", "contract_reviewed": "0.10"})
    ev = rate_event(plan, {}, {"contract_reviewed": 1, "input_tokens": 1000}, {})
    lines = by_metric(ev.lines)
    assert lines[("metered", "input_tokens")].amount_micros == 0
    assert lines[("metered", "input_tokens")].cost_micros == 2_000  # what margin is for
    assert lines[("usage", "contract_reviewed")].cost_micros == 100_000
    assert ev.amount_micros == 2_500_000 and ev.cost_micros == 102_000


def test_failed_calls_free_but_costed():
    plan = make_plan([
        {"id": "calls", "model": "per_unit", "metric": "tool_calls", "unit_price": "0.01", "bill_failed": False},
        {"id": "in", "model": "per_unit", "metric": "input_tokens", "unit_price": "0.000003"},
    ], costs={"tool_calls": "0.002"})
    ok = rate_event(plan, {"tool": "t", "status": "success"}, {"tool_calls": 1, "input_tokens": 10}, {})
    assert ok.amount_micros == 10_000 + 30 and ok.cost_micros == 2_000
    failed = rate_event(plan, {"tool": "t", "status": "error"}, {"tool_calls": 1, "input_tokens": 10}, {})
    lines = by_metric(failed.lines)
    assert ("usage", "tool_calls") not in lines  # not billed
    assert lines[("usage", "input_tokens")].amount_micros == 30  # the token charge bills failed calls
    assert lines[("cost", "tool_calls")].cost_micros == 2_000 and lines[("cost", "tool_calls")].amount_micros == 0
    no_status = rate_event(plan, {"tool": "t"}, {"tool_calls": 1}, {})
    assert no_status.amount_micros == 10_000  # no status: not a failure


def test_a_failed_outcome_does_not_cover_its_metrics():
    plan = make_plan([
        *TOKENS,
        {"id": "review", "model": "composite", "outcome": "contract_reviewed", "unit_price": "2.50",
         "metered": ["input_tokens"], "bill_failed": False},
    ])
    ev = rate_event(plan, {"status": "timeout"}, {"contract_reviewed": 1, "input_tokens": 1000}, {})
    assert by_metric(ev.lines).keys() == {("usage", "input_tokens")} and ev.amount_micros == 3_000


def test_no_costs_no_cost_state():
    plan = make_plan(TOKENS)
    ev = rate_event(plan, {}, {"input_tokens": 5}, {})
    assert ev.cost_micros == 0 and list(ev.updates) == [("in", "default")]


def test_catalog_merged_under_the_plans_own_costs():
    catalog = parse_catalog({"id": "vendor-2026", "costs": {"input_tokens": "0.000001", "output_tokens": "0.000004"}})
    plan = with_catalog(make_plan(TOKENS, costs={"output_tokens": "0.000009"}, cost_catalog="vendor-2026"), catalog)
    ev = rate_event(plan, {}, {"input_tokens": 1000, "output_tokens": 1000}, {})
    lines = by_metric(ev.lines)
    assert lines[("usage", "input_tokens")].cost_micros == 1_000  # the catalog's
    assert lines[("usage", "output_tokens")].cost_micros == 9_000  # the plan's own wins


@pytest.mark.parametrize("costs, field", [
    ({"input_tokns": "0.1"}, "costs.input_tokns"),
    ({"input_tokens": "-1"}, "costs.input_tokens"),
    ({"input_tokens": {"unit_cost": "x"}}, "costs.input_tokens.unit_cost"),
    ({"input_tokens": {"unit_price": "1"}}, "costs.input_tokens.unit_price"),
    ({"input_tokens": {"overrides": [{"match": {"model": "a"}}]}}, "costs.input_tokens.overrides[0].unit_cost"),
    ({"input_tokens": {"costs_by": {"dimension": "model", "costs": {}}}}, "costs.input_tokens.costs_by.costs"),
    ({"input_tokens": {"costs_by": {"dimension": "model", "costs": {"a": "-2"}}}},
     "costs.input_tokens.costs_by.costs.a"),
    ([1], "costs"),
])
def test_cost_validation_names_the_field(costs, field):
    with pytest.raises(PlanError) as e:
        make_plan(TOKENS, costs=costs)
    assert e.value.field == field


@pytest.mark.parametrize("charge, extra, field", [
    ({"bill_failed": "no"}, {}, "charges[0].bill_failed"),
    ({"prices_by": {"dimension": "tool"}}, {}, "charges[0].prices_by.prices"),
    ({"prices_by": {"dimension": "tool", "prices": {"a": "-1"}}}, {}, "charges[0].prices_by.prices.a.unit_price"),
    ({"prices_by": {"dim": "tool", "prices": {"a": "1"}}}, {}, "charges[0].prices_by.dim"),
    ({}, {"cost_catalog": "no such!"}, "cost_catalog"),
])
def test_charge_validation_names_the_field(charge, extra, field):
    with pytest.raises(PlanError) as e:
        make_plan([{**TOKENS[1], **charge}], **extra)
    assert e.value.field == field


def test_flat_charges_take_no_bill_failed():
    with pytest.raises(PlanError) as e:
        make_plan([TOKENS[1], {"id": "fee", "model": "flat", "amount": "1", "bill_failed": False}])
    assert e.value.field == "charges[1].bill_failed"


def test_catalog_validation():
    with pytest.raises(PlanError) as e:
        parse_catalog({"id": "v", "costs": {"t": {"overrides": "x"}}})
    assert e.value.field == "costs.t.overrides"
    with pytest.raises(PlanError) as e:
        parse_catalog({"id": "v"})
    assert e.value.field == "costs"
    assert parse_catalog({"id": "v", "costs": {"any_metric": "1"}}).costs[0].unit_cost == Decimal(1)
