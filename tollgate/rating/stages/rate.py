"""Stage 2, rate: price the step with the engine and place it in the period's running subtotal.

subtotal_after = subtotal_before + this step's lines exactly, because the lines telescope. For an
event, subtotal_before comes from the engine, which carries it with the cumulatives (no
re-pricing of the period's other keys). Every mode prices with the units carried into the period
(ctx.carried_in); the rollover mode prices the change from ctx.carried_in_before.
"""
from __future__ import annotations

from tollgate.rating.pricing import engine
from tollgate.rating.stages.context import RatingContext


def run(ctx: RatingContext) -> RatingContext:
    if ctx.mode == "event":
        ev = engine.rate_event(ctx.plan, ctx.dimensions, ctx.measurements, ctx.cumulative, ctx.carried)
        before = ev.subtotal_before_micros
        lines, after, updates = ev.lines, ev.cumulative, ev.updates
    elif ctx.mode == "close":
        before = engine.period_subtotal(ctx.plan, ctx.cumulative, carried=ctx.carried)
        lines = tuple(engine.close_period(ctx.plan, ctx.cumulative, ctx.carried))
        after, updates = dict(ctx.cumulative), {}
    elif ctx.mode == "batch":
        before = 0
        lines = tuple(engine.rate_period(ctx.plan, ctx.cumulative, ctx.carried))
        after, updates = dict(ctx.cumulative), {}
    elif ctx.mode == "rollover":  # no usage moves: the period so far repriced with the new quota
        credit, before, _ = engine.carry_credit(ctx.plan, ctx.cumulative, ctx.carried_in_before or {}, ctx.carried)
        lines, after, updates = tuple(credit), dict(ctx.cumulative), {}
    else:
        raise ValueError(f"unknown mode {ctx.mode!r}")
    ctx.lines, ctx.cumulative_after, ctx.updates = lines, after, updates
    ctx.subtotal_before_micros = before
    ctx.subtotal_after_micros = before + sum([line.amount_micros for line in lines])
    return ctx
