"""Per unit: every unit at the same price. F(q) = q * unit_price."""
from __future__ import annotations

from decimal import Decimal

from rater.pricing.base import TierLine, exact
from tollgate.plans import Pricing


@exact
def amount(pricing: Pricing, q: int) -> Decimal:
    return q * pricing.unit_price


def breakdown(pricing: Pricing, a: int, b: int) -> tuple[TierLine, ...]:
    return ()  # one price: nothing to break down
