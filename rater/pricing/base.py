"""Shared pieces of the pricing engine: exact arithmetic, rounding, line types, errors.

Prices and unrounded amounts are Decimal; amounts leave the engine as integer micros, rounded
half-up (tollgate.money.to_micros) only at cumulative points, never per event (see engine).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    getcontext,
    localcontext,
)

# (charge id, Charge.dimension_key(dimensions)): the unit usage is accumulated by in a period.
UsageKey = tuple[str, str]

# Wide enough for any price * quantity we meet; Inexact is trapped so an amount that would not be
# exact raises instead of being rounded silently (the default context keeps only 28 digits).
_EXACT = Context(prec=80, rounding=ROUND_HALF_UP, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])


def exact(fn):
    """Run fn under the exact Decimal context."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = getcontext()
        if ctx.prec >= _EXACT.prec and ctx.traps[Inexact]:  # already exact: skip the copy
            return fn(*args, **kwargs)
        with localcontext(_EXACT):
            return fn(*args, **kwargs)

    return wrapper


def round_micros(d: Decimal) -> int:
    """A Decimal already in micros -> int micros, half-up: the same rule as to_micros."""
    return int(d.to_integral_value(rounding=ROUND_HALF_UP))


class RatingError(ValueError):
    """An event or state the engine cannot price; the rater sends the event to the dead letters."""


class UnknownMetricError(RatingError):
    def __init__(self, metric: str, plan_id: str):
        super().__init__(f"metric {metric!r} is not billed or metered by any charge of plan {plan_id!r}")
        self.metric = metric
        self.plan_id = plan_id


class InvalidMeasurementError(RatingError):
    pass


class StateError(RatingError):
    """A cumulative key that does not belong to the plan (e.g. the plan changed mid-period)."""


@dataclass(frozen=True)
class TierLine:
    """The part of one event (or period) that fell in one tier."""

    tier: int  # index in the pricing's tiers
    quantity: int
    unit_price: Decimal
    flat_fee: Decimal  # the tier's flat fee if it was entered in this sub-line, else 0
    amount_micros: int  # a difference of rounded cumulative amounts: sub-lines add up exactly


@dataclass(frozen=True)
class ChargeLine:
    """One priced line of an event, a period close or a batch.

    kind: "usage" (a billed metric), "metered" (a composite's underlying metric: amount 0, kept
    for cost and margin), "percentage" (quantity = change of the base amount, in micros),
    "flat" (the period fee), "minimum" (a percentage charge's minimum true-up).
    """

    charge_id: str
    model: str
    kind: str
    metric: str | None
    dimension_key: str
    quantity: int
    unit_price: Decimal | None  # None when several tiers were touched, or for percentage lines
    amount_micros: int
    tiers: tuple[TierLine, ...] = ()
    cumulative_after: int = 0  # period-to-date quantity of the key (percentage: base micros)
