"""Stage 0, quantities: refuse an event that carries more of a metric than its plan allows.

The enforcer refuses such a report (422) when it knows the key's plan; when it could not read the
plan (Redis down) it holds the event only to the global ceiling, so this is the defence: the
event is dead-lettered `invalid_value` (rater.pipeline's reason for InvalidMeasurementError) and
nothing is charged. `limits.max_quantity_per_event` in tollgate.plans.

An aggregated agent session (ctx.aggregate, rater.sessions) is a sum of events each checked
here on its own (check_part) when it arrived: the sum is not bounded, as a period's totals are not.
"""
from __future__ import annotations

from collections.abc import Mapping

from tollgate.plans import Plan
from tollgate.rating.pricing import InvalidMeasurementError, UnknownMetricError
from tollgate.rating.pricing.engine import plan_pricing
from tollgate.rating.stages.context import RatingContext


def run(ctx: RatingContext) -> RatingContext:
    if ctx.mode == "event" and not ctx.aggregate:
        _within_limits(ctx.plan, ctx.measurements)
    return ctx


def check_part(plan: Plan, measurements: Mapping[str, int]) -> None:
    """What rating an event would refuse of its measurements alone (an unknown metric, more than
    the plan's maximum per event), without pricing it: an event aggregated into a session is
    refused on arrival exactly as it would be rated alone."""
    known = plan_pricing(plan).known_metrics
    for metric in measurements:
        if metric not in known:
            raise UnknownMetricError(metric, plan.id)
    _within_limits(plan, measurements)


def _within_limits(plan: Plan, measurements: Mapping[str, int]) -> None:
    for metric, q in measurements.items():
        if q > plan.max_quantity(metric):
            raise InvalidMeasurementError(
                f"measurements: {q} {metric} in one event is over the plan's maximum of "
                f"{plan.max_quantity(metric)} (limits.max_quantity_per_event)")
