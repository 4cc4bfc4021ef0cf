"""Graduated: each unit priced by the tier it falls in, plus the flat fee of each tier entered.

Tier i covers cumulative units (lo_i, up_to_i], lo_0 = 0, lo_i = up_to_{i-1}; its flat fee is due
once the cumulative quantity passes lo_i (the first unit in the tier).
"""
from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from rater.pricing.base import TierLine, exact
from tollgate.money import to_micros
from tollgate.plans import PriceTier, Pricing


def amount_for_tiers(tiers: Sequence[PriceTier], q: int) -> Decimal:
    total = Decimal(0)
    lo = 0
    for t in tiers:
        if q <= lo:
            break
        hi = q if t.up_to is None else min(q, t.up_to)
        total += (hi - lo) * t.unit_price + t.flat_fee
        if t.up_to is None:
            break
        lo = t.up_to
    return total


def breakdown_for_tiers(tiers: Sequence[PriceTier], a: int, b: int) -> tuple[TierLine, ...]:
    """One sub-line per tier that (a, b] touches.

    Each sub-line is round(F(end)) - round(F(start)) over its piece, so the sub-lines telescope to
    the event's round(F(b)) - round(F(a)) exactly, to the micro.
    """
    lines: list[TierLine] = []
    lo = 0
    for i, t in enumerate(tiers):
        start = max(a, lo)
        end = b if t.up_to is None else min(b, t.up_to)
        if end > start:
            amt = to_micros(amount_for_tiers(tiers, end)) - to_micros(amount_for_tiers(tiers, start))
            fee = t.flat_fee if start == lo else Decimal(0)  # start == lo: this piece enters the tier
            lines.append(TierLine(i, end - start, t.unit_price, fee, amt))
        if t.up_to is None or t.up_to >= b:
            break
        lo = t.up_to
    return tuple(lines)


@exact
def amount(pricing: Pricing, q: int) -> Decimal:
    return amount_for_tiers(pricing.tiers, q)


@exact
def breakdown(pricing: Pricing, a: int, b: int) -> tuple[TierLine, ...]:
    return breakdown_for_tiers(pricing.tiers, a, b)
