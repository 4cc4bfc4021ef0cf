"""Period ids and bounds with an anchor day, at and around the boundary; the plan field; the
enforcer's per-anchor period cache."""
from __future__ import annotations

from datetime import timedelta

import pytest

from enforcer.checks import _Period
from tests.periods.conftest import plan_text, utc
from tollgate.periods import next_period, period_bounds, period_of, prev_period, shift_period
from tollgate.plans import PlanError, load_plan_text, parse_plan

US = timedelta(microseconds=1)


@pytest.mark.parametrize(("at", "anchor", "expected"), [
    (utc(2026, 3, 15), 15, "202603"),  # the first instant of the period
    (utc(2026, 3, 15) - US, 15, "202602"),  # the last instant of the previous one
    (utc(2026, 3, 14, 12), 15, "202602"),
    (utc(2026, 3, 31, 23, 59, 59), 15, "202603"),
    (utc(2026, 4, 14, 23, 59, 59), 15, "202603"),
    (utc(2026, 1, 14), 15, "202512"),  # across the year
    (utc(2026, 1, 15), 15, "202601"),
    (utc(2026, 3, 1), 1, "202603"),  # anchor 1: calendar months
    (utc(2026, 3, 1) - US, 1, "202602"),
    (utc(2026, 2, 28), 28, "202602"),  # February has a 28th: every month has its period start
    (utc(2026, 3, 27, 23), 28, "202602"),
    (utc(2024, 2, 29), 28, "202402"),
])
def test_period_of_an_instant(at, anchor, expected):
    assert period_of(at, anchor) == expected
    assert period_of(at.timestamp(), anchor) == expected  # epoch seconds too
    start, end = period_bounds(expected, anchor)
    assert start <= at < end


def test_the_default_is_the_calendar_month():
    assert period_of(utc(2026, 3, 14, 12)) == "202603"
    assert period_bounds("202612") == (utc(2026, 12, 1), utc(2027, 1, 1))


@pytest.mark.parametrize(("period", "anchor", "start", "end"), [
    ("202603", 15, utc(2026, 3, 15), utc(2026, 4, 15)),
    ("202612", 15, utc(2026, 12, 15), utc(2027, 1, 15)),
    ("202602", 28, utc(2026, 2, 28), utc(2026, 3, 28)),
    ("202602", 1, utc(2026, 2, 1), utc(2026, 3, 1)),
])
def test_bounds_tile_the_time_line(period, anchor, start, end):
    assert period_bounds(period, anchor) == (start, end)
    assert period_bounds(next_period(period), anchor)[0] == end  # no gap, no overlap
    assert period_of(end - US, anchor) == period and period_of(end, anchor) == next_period(period)


def test_period_arithmetic():
    assert next_period("202612") == "202701" and prev_period("202701") == "202612"
    assert shift_period("202603", -15) == "202412"


@pytest.mark.parametrize("bad", [0, 29, 31, -1, "15", 15.0, True, None])
def test_an_invalid_anchor_day_is_refused(bad):
    with pytest.raises(ValueError):
        period_of(utc(2026, 3, 1), bad)
    with pytest.raises(ValueError):
        period_bounds("202603", bad)


@pytest.mark.parametrize("bad", ["2026-03", "202613", "202600", "20263", None])
def test_an_invalid_period_id_is_refused(bad):
    with pytest.raises(ValueError):
        period_bounds(bad)


# --------------------------------------------------------------------------- the plan field


def test_the_plan_says_the_anchor_day():
    assert load_plan_text(plan_text(15)).billing_anchor_day == 15
    assert load_plan_text(plan_text(28)).billing_anchor_day == 28
    no_field = load_plan_text(plan_text(1).replace("billing_period: {anchor_day: 1}\n", ""))
    assert "billing_period" not in no_field.document and no_field.billing_anchor_day == 1


@pytest.mark.parametrize(("value", "message"), [
    ("0", "must be >= 1"), ("29", "must be <= 28"), ("31", "must be <= 28"), ('"15"', "whole number"),
    ("1.5", "whole number"), ("true", "whole number"),
])
def test_an_invalid_anchor_day_names_the_field(value, message):
    text = plan_text(1).replace("{anchor_day: 1}", "{anchor_day: %s}" % value)
    with pytest.raises(PlanError) as e:
        load_plan_text(text)
    assert e.value.field == "billing_period.anchor_day" and message in e.value.message


def test_billing_period_must_be_a_mapping():
    doc = load_plan_text(plan_text(1)).document | {"billing_period": 15}
    with pytest.raises(PlanError) as e:
        parse_plan(doc)
    assert e.value.field == "billing_period"


# --------------------------------------------------------------------------- the enforcer's cache


class Clock:
    def __init__(self, t: float):
        self.t, self.reads = t, 0

    def __call__(self) -> float:
        self.reads += 1
        return self.t


def test_the_enforcer_caches_each_anchor_until_its_period_turns(monkeypatch):
    clock = Clock((utc(2026, 3, 15) - US).timestamp())
    p = _Period(clock)
    calls = []
    import enforcer.checks as checks  # noqa: PLC0415
    monkeypatch.setattr(checks, "period_of", lambda t, a: calls.append(a) or period_of(t, a))

    assert (p.now(15), p.now(1)) == ("202602", "202603")
    assert [p.now(15) for _ in range(100)] == ["202602"] * 100
    assert calls == [15, 1]  # computed once per anchor, not per request

    clock.t = utc(2026, 3, 15).timestamp()  # the anchor-15 period turns; the calendar one does not
    assert (p.now(15), p.now(1)) == ("202603", "202603")
    assert calls == [15, 1, 15]
    clock.t = utc(2026, 4, 1).timestamp()
    assert (p.now(15), p.now(1)) == ("202603", "202604")
    assert calls == [15, 1, 15, 1]
