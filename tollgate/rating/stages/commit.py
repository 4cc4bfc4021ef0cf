"""Stage 3, commit & caps: minimum commit true-up at period close, spend cap flags.

The true-up compares the commit with the period's rated charges (before discounts and tax; the
discount stage comes after and applies to the true-up too). Cap flags say that this step made the
period's rated spend reach 80% / 100% of the cap; they inform (alerts, webhooks) and never block:
blocking is the enforcer's job, before the request.
"""
from __future__ import annotations

from tollgate.rating.stages.context import RatingContext

CAP_THRESHOLDS = (80, 100)  # percent of the spend cap


def true_up(commit_micros: int, period_subtotal_micros: int) -> int:
    return max(0, commit_micros - period_subtotal_micros)


def cap_flags(before_micros: int, after_micros: int, cap_micros: int | None) -> tuple[int, ...]:
    """Thresholds reached in (before, after]: before < cap * pct / 100 <= after, in integers."""
    if cap_micros is None or cap_micros <= 0:
        return ()
    return tuple(
        pct for pct in CAP_THRESHOLDS if before_micros * 100 < cap_micros * pct <= after_micros * 100
    )


def run(ctx: RatingContext) -> RatingContext:
    up = true_up(ctx.plan.minimum_commit_micros, ctx.subtotal_after_micros) if ctx.mode in ("close", "batch") else 0
    ctx.commit_true_up_micros = up
    ctx.cap_flags = cap_flags(ctx.subtotal_before_micros, ctx.subtotal_after_micros, ctx.effective_spend_cap_micros)
    return ctx
