"""Shared pieces of the pricing engine: exact arithmetic, rounding, line types, errors.

Prices and unrounded amounts are Decimal; amounts leave the engine as integer micros, rounded
half-up (tollgate.money.to_micros) only at cumulative points, never per event (see engine).
The per-event path prices with each model's `Pricer`, the same F as exact integer ratios
(micros_ratio, round_ratio): no Decimal context, a few integer operations per line.
"""
from __future__ import annotations

import functools
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
from fractions import Fraction
from typing import NamedTuple

from tollgate.money import MICROS_PER_UNIT

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


def micros_ratio(amount: Decimal | int) -> Fraction:
    """An amount in currency units -> the same amount in micros, as an exact ratio of integers
    (a Decimal is n / 10**k, so nothing is lost)."""
    return Fraction(amount) * MICROS_PER_UNIT


def numerator_over(r: Fraction, d: int) -> int:
    """n such that r == n / d, for d a multiple of r's denominator (a common denominator)."""
    return r.numerator * (d // r.denominator)


def round_ratio(n: int, d: int) -> int:
    """n / d (d > 0) rounded half-up, ties away from zero: ROUND_HALF_UP, the rule of to_micros,
    in integer arithmetic."""
    if n >= 0:
        return (2 * n + d) // (2 * d)
    return -((d - 2 * n) // (2 * d))


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


# The line types are NamedTuples (immutable, as ledger lines must be): a frozen dataclass costs
# ~1.5 µs to build, a NamedTuple ~0.35 µs, and every event makes a few.


class TierLine(NamedTuple):
    """The part of one event (or period) that fell in one tier."""

    tier: int  # index in the pricing's tiers
    quantity: int
    unit_price: Decimal
    flat_fee: Decimal  # the tier's flat fee if it was entered in this sub-line, else 0
    amount_micros: int  # a difference of rounded cumulative amounts: sub-lines add up exactly


class ChargeLine(NamedTuple):
    """One priced line of an event, a period close or a batch.

    kind: "usage" (a billed metric), "metered" (a composite's underlying metric: amount 0, kept
    for cost and margin), "percentage" (quantity = change of the base amount, in micros),
    "flat" (the period fee), "minimum" (a percentage charge's minimum true-up), "cost" (amount
    0: the cost of a metric no other line of the event carries, e.g. a failed call not billed).

    cost_micros: what the line's metric cost the provider (plan `costs`, tollgate.rating.pricing.cost),
    exact like amounts: a difference of rounded cumulative costs. 0 for lines without a metric.
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
    cost_micros: int = 0
