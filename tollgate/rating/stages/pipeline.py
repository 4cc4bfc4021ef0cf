"""The pure rating pipeline: quantities -> allowance -> rate -> commit -> discount -> tax -> route.

Settlement (Redis settle.lua, PostgreSQL ledger) comes after and is not here. Each run is a pure
function of its inputs: the rater passes the period's cumulatives and stores
ctx.cumulative_after (ctx.updates) with the ledger lines in one transaction.

Real time equals batch: for any events of a period, in any order,
    sum(run_event(...).total_micros) + run_close(...).total_micros == run_batch(...).total_micros
and the same holds for each part (charges, commit true-up, discount, tax). With rollover, the
batch is rated with the final units carried in; events rated before those were known, then
run_rollover (the credit), then the events after and the close still add up to it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tollgate.rating.pricing.base import UsageKey
from tollgate.rating.stages import allowance, commit, discount, quantities, rate, route, tax
from tollgate.rating.stages.context import RatingContext
from tollgate.plans import Plan

STAGES = (quantities.run, allowance.run, rate.run, commit.run, discount.run, tax.run, route.run)


def run(ctx: RatingContext) -> RatingContext:
    for stage in STAGES:
        ctx = stage(ctx)
    return ctx


def run_event(plan: Plan, dimensions: Mapping[str, Any], measurements: Mapping[str, int],
              cumulative: Mapping[UsageKey, int], **options: Any) -> RatingContext:
    """One usage event against the period's cumulatives before it.

    options (keyword only, each a RatingContext input): billing_mode, spend_cap_micros,
    tax_percent, wallet_available_micros, wallet_paid_micros, invoice_due_micros, carried_in."""
    return run(RatingContext(plan, "event", dimensions, measurements, cumulative, **options))


def run_close(plan: Plan, cumulative: Mapping[UsageKey, int], **options: Any) -> RatingContext:
    """Once per customer and period, after its last event: flat fees, minimums, commit true-up."""
    return run(RatingContext(plan, "close", {}, {}, cumulative, **options))


def run_rollover(plan: Plan, cumulative: Mapping[UsageKey, int], carried_before: Mapping[UsageKey, int],
                 carried_in: Mapping[UsageKey, int], **options: Any) -> RatingContext:
    """The units carried into the period became `carried_in` after its events so far (cumulatives
    `cumulative`) were rated with `carried_before`: the credit (or charge) that makes them as if
    rated with `carried_in` from the start (tollgate.rating.rollover)."""
    return run(RatingContext(plan, "rollover", {}, {}, cumulative, carried_in=carried_in,
                             carried_in_before=carried_before, **options))


def run_batch(plan: Plan, totals: Mapping[UsageKey, int], **options: Any) -> RatingContext:
    """The whole period at once from its usage totals (reconciliation, invoices)."""
    return run(RatingContext(plan, "batch", {}, {}, totals, **options))
