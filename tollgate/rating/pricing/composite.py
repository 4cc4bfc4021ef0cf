"""Composite (M:N): a business outcome is billed per unit (F(q) = q * unit_price on the outcome
metric, overrides allowed). Its price covers the `metered` metrics of the same event: in an event
that reports the outcome they are accumulated under the composite (lines of amount 0 with their
quantity, for cost and margin reports) and not billed by their own charges; in an event without
the outcome they are billed by their own charges as any usage (engine.rate_event).
"""
from __future__ import annotations

from decimal import Decimal

from tollgate.rating.pricing import per_unit
from tollgate.rating.pricing.base import TierLine
from tollgate.plans import Charge, Pricing


def amount(pricing: Pricing, q: int) -> Decimal:
    return per_unit.amount(pricing, q)


def breakdown(pricing: Pricing, a: int, b: int) -> tuple[TierLine, ...]:
    return ()


def pricer(pricing: Pricing) -> per_unit.Pricer:
    return per_unit.Pricer(pricing)


def metered_key(dimension_key: str, metric: str) -> str:
    """Dimension part of the usage key of a metered metric: (charge id, '<dim key>:<metric>').

    ':' cannot occur in a metric or an override key, so it never collides with a billed key.
    """
    return f"{dimension_key}:{metric}"


def parse_metered_key(key: str) -> tuple[str, str] | None:
    """(dimension key, metric) of a metered key, None for a billed key."""
    if ":" not in key:
        return None
    dim, metric = key.split(":", 1)
    return dim, metric


def metered_metrics(charge: Charge) -> tuple[str, ...]:
    return charge.metered
