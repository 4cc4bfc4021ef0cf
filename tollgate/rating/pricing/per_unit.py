"""Per unit: every unit at the same price. F(q) = q * unit_price."""
from __future__ import annotations

from decimal import Decimal

from tollgate.rating.pricing.base import TierLine, exact, micros_ratio, round_ratio
from tollgate.plans import Pricing


@exact
def amount(pricing: Pricing, q: int) -> Decimal:
    return q * pricing.unit_price


def breakdown(pricing: Pricing, a: int, b: int) -> tuple[TierLine, ...]:
    return ()  # one price: nothing to break down


class Pricer:
    """F of one pricing for the engine's per-event path: micros(q) == to_micros(amount(q)).

    The price in micros is n / d exactly (d = 1 for prices that are whole micros, the usual case
    for tokens), so round(F(q)) is one multiplication and at most one floor division."""

    __slots__ = ("unit_price", "_n", "_d")

    def __init__(self, pricing: Pricing):
        self.unit_price = pricing.unit_price
        r = micros_ratio(pricing.unit_price)
        self._n, self._d = r.numerator, r.denominator

    def micros(self, q: int) -> int:
        return q * self._n if self._d == 1 else round_ratio(q * self._n, self._d)

    def breakdown(self, a: int, b: int, fa: int, fb: int) -> tuple[TierLine, ...]:
        return ()


def pricer(pricing: Pricing) -> Pricer:
    return Pricer(pricing)
