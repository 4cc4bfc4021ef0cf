"""Volume-tiered: all units at the price of the tier the cumulative quantity reaches, plus that
tier's flat fee. F(0) = 0.

F is not monotone: reaching a cheaper tier reprices every earlier unit, so the total can drop and
the event that crosses the bound gets a negative amount. That is correct and still telescopes:
the per-event amounts add up to round(F(period total)) in any order.
"""
from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from math import lcm

from tollgate.rating.pricing.base import TierLine, exact, micros_ratio, numerator_over, round_ratio
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


_ZERO = Decimal(0)


class Pricer:
    """F of one pricing for the engine's per-event path: micros(q) == to_micros(amount(q)) and
    breakdown(a, b, ...) == breakdown(pricing, a, b); each tier's price and fee precomputed in
    micros as integer ratios."""

    __slots__ = ("tiers", "unit_price", "_pieces")

    def __init__(self, pricing: Pricing):
        self.tiers = pricing.tiers
        self.unit_price = pricing.unit_price
        pieces = []  # (up or None, unit numerator, fee numerator, denominator)
        for t in self.tiers:
            unit, fee = micros_ratio(t.unit_price), micros_ratio(t.flat_fee)
            d = lcm(unit.denominator, fee.denominator)
            pieces.append((t.up_to, numerator_over(unit, d), numerator_over(fee, d), d))
        self._pieces = tuple(pieces)

    def micros(self, q: int) -> int:
        if q <= 0:
            return 0
        for up, unit, fee, d in self._pieces:
            if up is None or q <= up:
                n = q * unit + fee
                return n if d == 1 else round_ratio(n, d)
        raise AssertionError("unreachable: the last tier is open")

    def breakdown(self, a: int, b: int, fa: int, fb: int) -> tuple[TierLine, ...]:
        """fa, fb: micros(a) and micros(b), which the caller has already."""
        if b == a:
            return ()
        i = tier_index(self.tiers, b)
        t = self.tiers[i]
        entered = a == 0 or tier_index(self.tiers, a) != i
        return (TierLine(i, b - a, t.unit_price, t.flat_fee if entered else _ZERO, fb - fa),)


def pricer(pricing: Pricing) -> Pricer:
    return Pricer(pricing)
