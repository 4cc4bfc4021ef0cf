"""Stage 4, discount: the plan's discounts, in the order the plan lists them, never below zero.

Discounts apply to the period's cumulative gross G (charges + commit true-up): N(G) is G after
each discount in turn (percent: r - round(r * v / 100); amount: max(0, r - v), a per-period
amount consumed as spend accrues). A step's discount is (G1 - N(G1)) - (G0 - N(G0)), so it
telescopes like the charges. N is non-decreasing, so a step that adds charges never gets a net
below zero and the period's net is never below zero.
"""
from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from tollgate.rating.pricing.base import exact, round_micros
from tollgate.rating.stages.context import RatingContext
from tollgate.money import to_micros
from tollgate.plans import Discount


@exact
def net_after_discounts(discounts: Iterable[Discount], gross_micros: int) -> int:
    r = gross_micros
    for d in discounts:
        if d.kind == "percent":
            r -= round_micros(Decimal(r) * d.value / 100)
        elif d.kind == "amount":
            r -= to_micros(d.value)
        else:
            raise ValueError(f"unknown discount kind {d.kind!r}")
        r = max(0, r)
    return r


def run(ctx: RatingContext) -> RatingContext:
    g0, g1 = ctx.gross_before_micros, ctx.gross_after_micros
    if not ctx.plan.discounts:  # N(G) = G: skip the two Decimal evaluations
        ctx.net_before_micros, ctx.net_after_micros, ctx.discount_micros = g0, g1, 0
        return ctx
    n0 = net_after_discounts(ctx.plan.discounts, g0)
    n1 = net_after_discounts(ctx.plan.discounts, g1)
    ctx.net_before_micros, ctx.net_after_micros, ctx.discount_micros = n0, n1, (g1 - n1) - (g0 - n0)
    return ctx
