"""Stage 0, quantities: refuse an event that carries more of a metric than its plan allows.

The enforcer refuses such a report (422) when it knows the key's plan; when it could not read the
plan (Redis down) it holds the event only to the global ceiling, so this is the defence: the
event is dead-lettered `invalid_value` (rater.pipeline's reason for InvalidMeasurementError) and
nothing is charged. `limits.max_quantity_per_event` in tollgate.plans.
"""
from __future__ import annotations

from tollgate.rating.pricing import InvalidMeasurementError
from tollgate.rating.stages.context import RatingContext


def run(ctx: RatingContext) -> RatingContext:
    if ctx.mode == "event":
        plan = ctx.plan
        for metric, q in ctx.measurements.items():
            if q > plan.max_quantity(metric):
                raise InvalidMeasurementError(
                    f"measurements: {q} {metric} in one event is over the plan's maximum of "
                    f"{plan.max_quantity(metric)} (limits.max_quantity_per_event)")
    return ctx
