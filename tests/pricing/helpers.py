"""Plan documents for the pricing and stage tests (through the real parser, so they are valid)."""
from __future__ import annotations

from decimal import Decimal

from tollgate.plans import Plan, PriceTier, Pricing, parse_plan


def make_plan(charges: list[dict], **extra) -> Plan:
    doc = {"id": "p1", "limits": {"requests_per_minute": 100, "tokens_per_minute": 100000}, "charges": charges}
    doc.update(extra)
    return parse_plan(doc)


def tiers(*spec) -> tuple[PriceTier, ...]:
    """tiers((100, "0.01", "1"), (None, "0.005")) -> PriceTiers."""
    return tuple(PriceTier(up_to, Decimal(p), Decimal(fee[0]) if fee else Decimal(0)) for up_to, p, *fee in spec)


def tiered(*spec) -> Pricing:
    return Pricing(tiers=tiers(*spec))


# The tiers of the hand-computed examples: bounds at 100 and 1000, flat fees on tiers 0 and 2.
TIERS_A = [
    {"up_to": 100, "unit_price": "0.01", "flat_fee": "1"},
    {"up_to": 1000, "unit_price": "0.008"},
    {"up_to": None, "unit_price": "0.005", "flat_fee": "0.5"},
]
