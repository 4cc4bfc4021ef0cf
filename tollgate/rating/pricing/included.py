"""Included quota then overage: F(q) = max(0, q - included_units) * unit_price.

This module is the one implementation of included units: the engine prices with it and the
allowance stage only attributes units with `split` (it does not take units away from the
measurement, which would price them twice or not at all). The quota is per usage key, so an
override (e.g. another model) has its own included units, and units carried in by rollover
(with_carried) add to the quota of their key only.
"""
from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from tollgate.rating.pricing import graduated
from tollgate.rating.pricing.base import TierLine, exact
from tollgate.plans import PriceTier, Pricing


def with_carried(pricing: Pricing, units: int) -> Pricing:
    """The pricing of a usage key whose period also has `units` carried in from the period before
    (rollover, tollgate.rating.rollover): the quota grows by them, nothing else changes."""
    return replace(pricing, included_units=pricing.included_units + units) if units else pricing


def tiers(pricing: Pricing) -> tuple[PriceTier, ...]:
    """The same price as two graduated tiers: the included units free, the rest at unit_price."""
    if pricing.included_units <= 0:
        return (PriceTier(None, pricing.unit_price),)
    return (PriceTier(pricing.included_units, Decimal(0)), PriceTier(None, pricing.unit_price))


@exact
def amount(pricing: Pricing, q: int) -> Decimal:
    return max(0, q - pricing.included_units) * pricing.unit_price


@exact
def breakdown(pricing: Pricing, a: int, b: int) -> tuple[TierLine, ...]:
    """Sub-lines 'included' (tier 0, price 0) and 'overage' for an event crossing the quota."""
    return graduated.breakdown_for_tiers(tiers(pricing), a, b)


def split(pricing: Pricing, a: int, b: int) -> tuple[int, int]:
    """(included units, overage units) of the cumulative move a -> b (a <= b)."""
    inc = max(0, min(b, pricing.included_units) - min(a, pricing.included_units))
    return inc, (b - a) - inc


def remaining(pricing: Pricing, q: int) -> int:
    return max(0, pricing.included_units - q)


def pricer(pricing: Pricing) -> graduated.Pricer:
    """The per-event form: the same two graduated tiers as `breakdown`."""
    return graduated.Pricer(tiers(pricing), pricing.unit_price)
