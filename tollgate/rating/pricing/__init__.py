"""Pricing engine: one module per charge model, `engine` combines them for a plan.

Public API (see engine): rate_event, rate_period, rate_period_costs, close_period, charge_amounts, period_subtotal;
types ChargeLine, TierLine, RatedEvent, Cumulatives (the state rate_event returns); errors
RatingError (UnknownMetricError, InvalidMeasurementError, StateError) for the dead-letter table.
"""
from tollgate.rating.pricing.base import (
    ChargeLine,
    InvalidMeasurementError,
    RatingError,
    StateError,
    TierLine,
    UnknownMetricError,
    UsageKey,
)
from tollgate.rating.pricing.engine import (
    Cumulatives,
    RatedEvent,
    charge_amounts,
    close_period,
    known_metrics,
    period_subtotal,
    rate_event,
    rate_period,
    rate_period_costs,
    usage_key,
)

__all__ = [
    "ChargeLine",
    "Cumulatives",
    "InvalidMeasurementError",
    "RatedEvent",
    "RatingError",
    "StateError",
    "TierLine",
    "UnknownMetricError",
    "UsageKey",
    "charge_amounts",
    "close_period",
    "known_metrics",
    "period_subtotal",
    "rate_event",
    "rate_period",
    "rate_period_costs",
    "usage_key",
]
