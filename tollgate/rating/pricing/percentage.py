"""Percentage of the base charges' amounts, with a per-period minimum.

The cumulative quantity is the base: the period-to-date rounded micros of the base charges. Per
event, the line is round(F(base after)) - round(F(base before)), F(x) = x * percent / 100, so it
telescopes like any other charge. The minimum is a true-up at period close:
max(0, minimum - round(F(base at close))).
"""
from __future__ import annotations

from decimal import Decimal

from tollgate.rating.pricing.base import exact, round_micros
from tollgate.money import to_micros
from tollgate.plans import Charge


@exact
def amount_micros(charge: Charge, base_micros: int) -> int:
    return round_micros(Decimal(base_micros) * charge.percent / 100)


@exact
def minimum_true_up(charge: Charge, base_micros: int) -> int:
    return max(0, to_micros(charge.minimum) - amount_micros(charge, base_micros))


def closed_amount_micros(charge: Charge, base_micros: int) -> int:
    """The period's amount once closed: at least the minimum."""
    return amount_micros(charge, base_micros) + minimum_true_up(charge, base_micros)
