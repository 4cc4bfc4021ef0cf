"""Flat recurring fee: one charge per period, billed at period close (in arrears).

Why at close rather than on the first event: a period without any usage still owes its fee, and
the close run is where the other period-level amounts (percentage minimums, commit true-up) are
settled too, so real time and batch include it at the same point.
"""
from __future__ import annotations

from tollgate.rating.pricing.base import ChargeLine, exact
from tollgate.money import to_micros
from tollgate.plans import Charge


@exact
def fee_micros(charge: Charge) -> int:
    return to_micros(charge.amount)


def close_line(charge: Charge) -> ChargeLine:
    return ChargeLine(
        charge_id=charge.id,
        model="flat",
        kind="flat",
        metric=None,
        dimension_key="default",
        quantity=1,
        unit_price=charge.amount,
        amount_micros=fee_micros(charge),
        cumulative_after=1,
    )
