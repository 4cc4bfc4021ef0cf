"""Graduated: each unit priced by the tier it falls in, plus the flat fee of each tier entered.

Tier i covers cumulative units (lo_i, up_to_i], lo_0 = 0, lo_i = up_to_{i-1}; its flat fee is due
once the cumulative quantity passes lo_i (the first unit in the tier).
"""
from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from math import lcm

from tollgate.rating.pricing.base import TierLine, exact, micros_ratio, numerator_over, round_ratio
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


_ZERO = Decimal(0)


class Pricer:
    """F of a tier list for the engine's per-event path: micros(q) == to_micros(amount(q)) and
    breakdown(a, b, ...) == breakdown_for_tiers(tiers, a, b).

    Precomputed per tier i covering (lo, up]: F(q) = F(lo) + fee_i + (q - lo) * unit_price_i,
    in micros as the integer ratio (base + (q - lo) * unit) / d, so an event evaluates one tier
    instead of summing every tier below it in Decimal."""

    __slots__ = ("tiers", "unit_price", "_pieces")

    def __init__(self, tiers: Sequence[PriceTier], unit_price: Decimal | None = None):
        self.tiers = tuple(tiers)
        self.unit_price = unit_price  # the line's price when no tier is touched (never, for b > a)
        pieces = []  # (lo, up or None, base numerator, unit numerator, denominator)
        lo, below = 0, micros_ratio(0)  # below: F(lo) in micros
        for t in self.tiers:
            base, unit = below + micros_ratio(t.flat_fee), micros_ratio(t.unit_price)
            d = lcm(base.denominator, unit.denominator)
            pieces.append((lo, t.up_to, numerator_over(base, d), numerator_over(unit, d), d))
            if t.up_to is None:
                break
            below = base + (t.up_to - lo) * unit
            lo = t.up_to
        self._pieces = tuple(pieces)

    def micros(self, q: int) -> int:
        if q <= 0:
            return 0
        for lo, up, base, unit, d in self._pieces:
            if up is None or q <= up:
                n = base + (q - lo) * unit
                return n if d == 1 else round_ratio(n, d)
        raise AssertionError("unreachable: the last tier is open")

    def breakdown(self, a: int, b: int, fa: int, fb: int) -> tuple[TierLine, ...]:
        """fa, fb: micros(a) and micros(b), which the caller has already."""
        lines: list[TierLine] = []
        lo = 0
        for i, t in enumerate(self.tiers):
            start = max(a, lo)
            end = b if t.up_to is None else min(b, t.up_to)
            if end > start:
                amt = (fb if end == b else self.micros(end)) - (fa if start == a else self.micros(start))
                lines.append(TierLine(i, end - start, t.unit_price, t.flat_fee if start == lo else _ZERO, amt))
            if t.up_to is None or t.up_to >= b:
                break
            lo = t.up_to
        return tuple(lines)


def pricer(pricing: Pricing) -> Pricer:
    return Pricer(pricing.tiers)
