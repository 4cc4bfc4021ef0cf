"""Volume-tiered: all units at the price of the tier the cumulative quantity reaches, plus that
tier's flat fee. F(0) = 0.

F is not monotone: reaching a cheaper tier reprices every earlier unit, so the total can drop and
the event that crosses the bound gets a negative amount. That is correct and still telescopes:
the per-event amounts add up to round(F(period total)) in any order.
"""
from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from rater.pricing.base import TierLine, exact
from tollgate.money import to_micros
from tollgate.plans import PriceTier, Pricing


def tier_index(tiers: Sequence[PriceTier], q: int) -> int:
    for i, t in enumerate(tiers):
        if t.up_to is None or q <= t.up_to:
            return i
    return len(tiers) - 1  # unreachable for validated plans: the last tier is open


@exact
def amount(pricing: Pricing, q: int) -> Decimal:
    if q <= 0:
        return Decimal(0)
    t = pricing.tiers[tier_index(pricing.tiers, q)]
    return q * t.unit_price + t.flat_fee


@exact
def breakdown(pricing: Pricing, a: int, b: int) -> tuple[TierLine, ...]:
    """One sub-line: the tier reached. Its amount is the whole event's (it includes the repricing
    of earlier units when the tier changed), so it may be negative."""
    if b == a:
        return ()
    i = tier_index(pricing.tiers, b)
    t = pricing.tiers[i]
    entered = a == 0 or tier_index(pricing.tiers, a) != i
    amt = to_micros(amount(pricing, b)) - to_micros(amount(pricing, a))
    return (TierLine(i, b - a, t.unit_price, t.flat_fee if entered else Decimal(0), amt),)
