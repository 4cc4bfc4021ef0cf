"""Rate a past period's usage under a draft plan and compare it with what was billed.

Per customer: the usage of the period from the rollups (control.simulator.reads), summed per
(dimension set, outcome), is rated under the draft as one event per group by the pure engine
(tollgate.rating.pricing.engine.rate_event), which keys it through the draft's own charges and
overrides (Charge.dimension_key), covers an outcome's metered metrics as the rater does, and
skips failed calls where the draft says so; the resulting cumulatives are rated as the whole
period by the pure pipeline (run_batch: usage, flat fees, minimums, commit true-up, discounts,
tax), with the customer's negotiated prices and the units rollover carried into the period.
Real time equals batch, so this is what the period's invoice would have been under the draft.

The current amounts are the period's invoice, line by line, or where the period is not closed yet
the batch rating of its recorded cumulatives under the customer's plan (the preview's rule).

Exact (the draft equal to the current plan reproduces the invoice to the micro, tested): usage
keyed by charge and override, every pricing model, included quotas and rollover, composite
outcomes as the rater recorded them, flat fees, minimums, commit, discounts, tax.
Approximate (docs/ARCHITECTURE.md, "Billing simulator"):
- the rollups keep at most 8 scalar properties per event (64 characters each, no duration_ms):
  an override matching on anything else is judged on what was kept;
- events are grouped per dimension set: per-event maximums (limits.max_quantity_per_event) are
  not checked, and an outcome the draft adds is judged per group, not per event (a group
  reporting the new outcome has all its metered metrics covered);
- agent sessions the draft bills per session (sessions: ...) are rated as their rolled-up events;
- usage rated in a later period than its timestamp (arrived after the close) counts in its own;
- metrics the draft does not price are left out and reported under `unpriced`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from control.errors import InvalidInput, NotFound
from control.simulator.reads import CustomerInputs, dims_of, read_inputs
from tollgate.invoices import describe
from tollgate.keys import ID_PATTERN
from tollgate.money import format_micros
from tollgate.periods import is_period, period_bounds, period_of
from tollgate.plans import Plan, plan_from_row
from tollgate.rating.negotiated import effective_plan
from tollgate.rating.pricing import RatingError
from tollgate.rating.pricing.base import UsageKey
from tollgate.rating.pricing.engine import NO_CARRY, plan_pricing, rate_event
from tollgate.rating.rollover import applicable
from tollgate.rating.stages.context import RatingContext
from tollgate.rating.stages.pipeline import run_batch

MAX_CUSTOMERS = 100_000
# Lines that are the whole period's, not a charge's: one per kind.
_TOTAL_KINDS = {"true_up": "minimum commit true-up", "discount": "discounts", "tax": "tax"}
_ORDER = {"usage": 0, "rollover": 1, "metered": 1, "percentage": 2, "true_up": 7, "discount": 8, "tax": 9}

LineKey = tuple[str, str | None, str | None, str | None]  # kind, charge, metric, dimension key


def parse_period(raw: object, now: float) -> str:
    if not isinstance(raw, str) or not is_period(raw):
        raise InvalidInput("period", "must be YYYYMM, e.g. 202611")
    if raw > period_of(now):
        raise InvalidInput("period", f"{raw} has not started: the simulator rates usage that happened")
    try:
        period_bounds(raw)
    except ValueError as e:  # year 0
        raise InvalidInput("period", str(e)) from None
    return raw


def parse_customers(raw: object) -> list[str] | None:
    """None (the draft plan's customers), a comma-separated string or a list of ids."""
    if raw is None or raw == "" or raw == []:
        return None
    ids = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidInput("customers", "must be customer ids, comma-separated or a list")
    ids = sorted({i.strip() for i in ids if i.strip()})
    for i in ids:
        if not ID_PATTERN.fullmatch(i):
            raise InvalidInput("customers", f"{i[:80]!r} is not a customer id")
    if len(ids) > MAX_CUSTOMERS:
        raise InvalidInput("customers", f"at most {MAX_CUSTOMERS} customers")
    return ids or None


async def simulate(db: asyncpg.Pool, draft: Plan, period: str, customer_ids: Sequence[str] | None) -> dict:
    """The period's usage of `customer_ids` (default: the customers on the plan with the draft's id
    that existed in the period) under `draft`, beside what they were billed."""
    async with db.acquire() as conn:
        plans = {r["id"]: plan_from_row(r) for r in await conn.fetch("SELECT id, document FROM plans")}
        if customer_ids is None:
            end = period_bounds(period, draft.billing_anchor_day)[1]
            rows = await conn.fetch("SELECT * FROM customers WHERE plan_id = $1 AND created_at < $2 ORDER BY id",
                                    draft.id, end)
        else:
            rows = await conn.fetch("SELECT * FROM customers WHERE id = ANY($1::text[]) ORDER BY id", list(customer_ids))
            missing = sorted(set(customer_ids) - {r["id"] for r in rows})
            if missing:
                raise NotFound("customers", f"no customer {missing[0]!r}" + (
                    f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        other = next((r for r in rows if plans[r["plan_id"]].currency != draft.currency), None)
        if other is not None:  # a difference between two currencies means nothing
            raise InvalidInput("currency", f"the draft is in {draft.currency}, customer {other['id']!r}'s plan in "
                                           f"{plans[other['plan_id']].currency}")
        inputs = await read_inputs(conn, rows, plans, period,
                                   lambda plan: period_bounds(period, plan.billing_anchor_day))
    results = [simulate_customer(draft, inputs[r["id"]]) for r in rows]
    cur = sum(r["_current"] for r in results)
    new = sum(r["_draft"] for r in results)
    for r in results:
        del r["_current"], r["_draft"]
    return {"period": period, "draft_plan_id": draft.id, "currency": draft.currency, "customers": results,
            "totals": {"customers": len(results), "current": format_micros(cur), "draft": format_micros(new),
                       "difference": format_micros(new - cur)}}


def simulate_customer(draft: Plan, inp: CustomerInputs) -> dict:
    row = inp.row
    current_plan = effective_plan(inp.plan, row["prices"])
    plan = effective_plan(draft, row["prices"])  # negotiated prices are the customer's contract
    out = {"customer_id": inp.id, "current_plan_id": inp.plan.id, "period_start": inp.start.isoformat(),
           "period_end": inp.end.isoformat()}
    errors = []
    # current
    if inp.invoice is not None:
        current = _invoice_lines(inp.invoice_lines)
        current_total = inp.invoice["total_micros"]
        out["current_source"] = "invoice"
    else:
        try:
            ctx = run_batch(current_plan, inp.cumulative, **_options(current_plan, row, inp.carried))
            current, current_total = _batch_lines(ctx), ctx.total_micros
        except RatingError as e:  # e.g. the plan changed in the period: its cumulatives are another's
            current, current_total = {}, 0
            errors.append(f"current: {e}")
        out["current_source"] = "cumulatives"
    # draft
    unpriced: dict[str, int] = {}
    try:
        cumulative = draft_cumulatives(plan, inp.usage, _carried(plan, inp.carried), unpriced)
        ctx = run_batch(plan, cumulative, **_options(plan, row, inp.carried))
        draft_lines, draft_total = _batch_lines(ctx), ctx.total_micros
    except RatingError as e:
        draft_lines, draft_total = {}, 0
        errors.append(f"draft: {e}")
    lines = []
    for key in sorted(current.keys() | draft_lines.keys(), key=lambda k: (_ORDER.get(k[0], 5), *(x or "" for x in k[1:]))):
        c, d = current.get(key, 0), draft_lines.get(key, 0)
        kind, charge, metric, dim = key
        lines.append({"kind": kind, "charge_id": charge, "metric": metric, "dimension_key": dim,
                      "description": _TOTAL_KINDS.get(kind) or describe(kind, charge or kind, metric, dim),
                      "current": format_micros(c), "draft": format_micros(d), "difference": format_micros(d - c)})
    out.update({"current_total": format_micros(current_total), "draft_total": format_micros(draft_total),
                "difference": format_micros(draft_total - current_total), "lines": lines,
                "unpriced": {m: q for m, q in sorted(unpriced.items())}, "error": "; ".join(errors) or None,
                "_current": current_total, "_draft": draft_total})
    return out


def draft_cumulatives(plan: Plan, usage: Mapping[tuple[str, str], Mapping[str, int]],
                      carried: Mapping[UsageKey, int], unpriced: dict[str, int]) -> Mapping[UsageKey, int]:
    """The period's cumulatives under `plan`: each (dimension set, outcome) group of the usage as
    one event through the engine (its keys, outcome coverage and failed-call rules)."""
    known = plan_pricing(plan).known_metrics
    cumulative: Mapping[UsageKey, int] = {}
    for (dims, _outcome), measured in sorted(usage.items()):
        ms = {}
        for m, q in measured.items():
            if m in known:
                ms[m] = q
            else:
                unpriced[m] = unpriced.get(m, 0) + q
        if ms:
            cumulative = rate_event(plan, dims_of(dims), ms, cumulative, carried).cumulative
    return cumulative


def _carried(plan: Plan, carried: Mapping[UsageKey, int]) -> Mapping[UsageKey, int]:
    return applicable(plan, carried) or NO_CARRY


def _options(plan: Plan, row, carried: Mapping[UsageKey, int]) -> dict:
    tier = plan.tier(row["tier"])  # today's tier (the cap changes no amount, only the routing)
    cap = plan.limits_for_tier(tier)[2] if row["spend_cap_micros"] is None else int(row["spend_cap_micros"] * tier.multiplier)
    return {"billing_mode": row["billing_mode"], "spend_cap_micros": None if cap < 0 else cap,
            "carried_in": applicable(plan, carried) or None}


def _batch_lines(ctx: RatingContext) -> dict[LineKey, int]:
    out: dict[LineKey, int] = {}
    for ln in ctx.lines:
        if ln.kind != "cost":  # the provider's cost, not the customer's
            k = (ln.kind, ln.charge_id, ln.metric, ln.dimension_key)
            out[k] = out.get(k, 0) + ln.amount_micros
    for kind, amount in (("true_up", ctx.commit_true_up_micros), ("discount", -ctx.discount_micros),
                         ("tax", ctx.tax_micros)):
        if amount:
            out[(kind, None, None, None)] = amount
    return out


def _invoice_lines(rows) -> dict[LineKey, int]:
    out: dict[LineKey, int] = {}
    for r in rows:
        k = (r["kind"], None, None, None) if r["kind"] in _TOTAL_KINDS else (
            r["kind"], r["charge_id"], r["metric"], r["dimension_key"])
        out[k] = out.get(k, 0) + r["amount_micros"]
    return out
