"""Stage 5, tax: a percent of the net (after discounts), 0 by default.

Rounded on the cumulative net like everything else: tax of a step = T(N1) - T(N0) with
T(n) = round(n * percent / 100), so per-event tax adds up to the period's tax exactly. The rate
must stay the same for a customer for the whole period; pick it with tax_percent_for.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tollgate.rating.pricing.base import exact, round_micros
from tollgate.rating.stages.context import RatingContext
from tollgate.plans import Plan


@dataclass(frozen=True)
class TaxRule:
    match: Mapping[str, str]  # customer attributes, e.g. {"country": "DE"}
    percent: Decimal


def tax_percent_for(plan: Plan, attributes: Mapping[str, Any], rules: Iterable[TaxRule] = ()) -> Decimal:
    """The first rule whose match holds; else the plan's tax percent (0 unless the plan says)."""
    for r in rules:
        if all(str(attributes.get(k)) == v for k, v in r.match.items()):
            return r.percent
    return plan.tax_percent


@exact
def tax_on(percent: Decimal, net_micros: int) -> int:
    return round_micros(Decimal(net_micros) * percent / 100)


def run(ctx: RatingContext) -> RatingContext:
    p = ctx.effective_tax_percent
    # 0 % (the default) taxes nothing: skip the two Decimal evaluations
    ctx.tax_micros = tax_on(p, ctx.net_after_micros) - tax_on(p, ctx.net_before_micros) if p else 0
    return ctx
