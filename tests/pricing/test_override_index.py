"""The override index (tollgate.matching) finds exactly the override the ordered scan finds."""
from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tollgate.matching import OverrideIndex
from tollgate.rating.pricing import rate_event
from tests.pricing.helpers import make_plan


def scan(matches, dims):
    for i, m in enumerate(matches):
        if all(str(dims.get(k)) == v for k, v in m.items()):
            return i
    return None


def test_first_match_wins_across_fields_and_match_all():
    matches = [{"model": "a", "region": "eu"}, {"region": "eu"}, {"model": "a"}, {}, {"model": "b"}]
    idx = OverrideIndex(matches)
    assert idx.lookup({"model": "a", "region": "eu"}) == 0
    assert idx.lookup({"model": "a", "region": "us"}) == 2
    assert idx.lookup({"model": "x", "region": "eu"}) == 1
    assert idx.lookup({"model": "b"}) == 3  # the match-all override comes before {"model": "b"}
    assert idx.lookup({}) == 3
    assert OverrideIndex([{"model": "a"}]).lookup({"model": "b"}) is None


def test_values_compare_as_strings_like_the_scan():
    idx = OverrideIndex([{"n": "1"}, {"flag": "True"}, {"tool": "None"}])
    assert idx.lookup({"n": 1}) == 0
    assert idx.lookup({"flag": True}) == 1
    assert idx.lookup({}) == 2  # a missing dimension reads as "None", as Override.matches does


names = st.sampled_from(["model", "tool", "region"])
values = st.sampled_from(["a", "b", "c", "1"])


@settings(max_examples=300, deadline=None)
@given(matches=st.lists(st.dictionaries(names, values, max_size=3), max_size=12),
       dims=st.dictionaries(names, st.one_of(values, st.integers(0, 2))))
def test_index_equals_the_ordered_scan(matches, dims):
    assert OverrideIndex(matches).lookup(dims) == scan(matches, dims)


def test_five_thousand_tool_prices_first_match_wins():
    tools = {f"tool_{i}": f"0.00{i % 7 + 1}" for i in range(5000)}
    plan = make_plan([{
        "id": "calls", "model": "per_unit", "metric": "tool_calls", "unit_price": "0.0005",
        # an explicit override before the map wins over the map's entry for the same tool
        "overrides": [{"match": {"tool": "tool_42"}, "unit_price": "1"}],
        "prices_by": {"dimension": "tool", "prices": tools},
    }])
    charge = plan.charges[0]
    assert len(charge.overrides) == 5001
    ev = rate_event(plan, {"tool": "tool_4999"}, {"tool_calls": 1}, {})
    assert ev.lines[0].amount_micros == 1000 * (4999 % 7 + 1) and ev.lines[0].dimension_key == "override5000"
    assert rate_event(plan, {"tool": "tool_42"}, {"tool_calls": 1}, {}).lines[0].unit_price == Decimal(1)
    assert rate_event(plan, {"tool": "unknown"}, {"tool_calls": 2}, {}).lines[0].amount_micros == 1000
    # the enforcer's hold estimate takes the same override through the index
    assert plan.estimate_micros({"tool": "tool_42"}, {"tool_calls": 3}) == 3_000_000
    assert plan.estimate_micros({"tool": "tool_6"}, {"tool_calls": 1}) == 7_000
