"""The pricing engine: prices events, period closes and whole periods, exactly.

Each usage-based charge is a function F(q) -> Decimal of the cumulative quantity q of its usage key
(charge id, Charge.dimension_key(dimensions)) in the period. An event moving q from a to b costs
round(F(b)) - round(F(a)) micros (round = tollgate.money.to_micros, half-up), so the per-event
micros of a period telescope to round(F(total)): real time equals batch exactly, in any arrival
order. The order decides which event pays which micro, never the total.

State is passed in and returned: the caller stores the cumulatives (one int per usage key) with
the ledger lines, in one transaction. Percentage and flat charges keep no state: their amounts are
derived from the usage cumulatives (see charge_amounts).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rater.pricing import composite, flat, graduated, included, per_unit, percentage, volume
from rater.pricing.base import (
    ChargeLine,
    InvalidMeasurementError,
    StateError,
    UnknownMetricError,
    UsageKey,
    exact,
)
from tollgate.money import to_micros
from tollgate.plans import Charge, Plan, Pricing

# Models priced by F(cumulative quantity): each module has amount(pricing, q) and
# breakdown(pricing, a, b).
USAGE_MODELS = {
    "per_unit": per_unit,
    "graduated": graduated,
    "volume": volume,
    "included": included,
    "composite": composite,
}


@dataclass(frozen=True)
class RatedEvent:
    lines: tuple[ChargeLine, ...]
    cumulative: dict[UsageKey, int]  # the period cumulatives after the event (the input is untouched)
    updates: dict[UsageKey, int]  # only the keys the event changed: what to upsert
    subtotal_before_micros: int  # the period's rated charges before the event (period_subtotal)

    @property
    def amount_micros(self) -> int:
        return sum(line.amount_micros for line in self.lines)

    @property
    def subtotal_after_micros(self) -> int:
        return self.subtotal_before_micros + self.amount_micros  # exact: the lines telescope


def known_metrics(plan: Plan) -> set[str]:
    out: set[str] = set()
    for c in plan.charges:
        if c.model in USAGE_MODELS:
            out.add(c.metric)
            out.update(c.metered)
    return out


def usage_key(charge: Charge, dimensions: Mapping[str, Any]) -> UsageKey:
    return charge.id, charge.dimension_key(dimensions)


def pricing_for_key(charge: Charge, dimension_key: str) -> Pricing:
    """The Pricing a stored key was accumulated under (inverse of Charge.dimension_key)."""
    if dimension_key == "default":
        return charge.pricing
    n = dimension_key.removeprefix("override")
    if n != dimension_key and n.isdigit() and int(n) < len(charge.overrides):
        return charge.overrides[int(n)].pricing
    raise StateError(f"usage key ({charge.id!r}, {dimension_key!r}) does not match the plan's overrides")


def _usage_line(charge: Charge, dim_key: str, pricing: Pricing, a: int, b: int) -> ChargeLine:
    model = USAGE_MODELS[charge.model]
    tiers = model.breakdown(pricing, a, b)
    if not tiers:
        unit_price = pricing.unit_price
    else:
        unit_price = tiers[0].unit_price if len(tiers) == 1 else None
    return ChargeLine(
        charge_id=charge.id,
        model=charge.model,
        kind="usage",
        metric=charge.metric,
        dimension_key=dim_key,
        quantity=b - a,
        unit_price=unit_price,
        amount_micros=to_micros(model.amount(pricing, b)) - to_micros(model.amount(pricing, a)),
        tiers=tiers,
        cumulative_after=b,
    )


def _metered_line(charge: Charge, dim_key: str, metric: str, q: int, after: int) -> ChargeLine:
    return ChargeLine(charge.id, charge.model, "metered", metric, dim_key, q, None, 0, (), after)


def _percentage_line(charge: Charge, base_before: int, base_after: int, amount: int) -> ChargeLine:
    return ChargeLine(
        charge.id, "percentage", "percentage", None, "default", base_after - base_before, None, amount, (), base_after
    )


def _check_measurements(plan: Plan, measurements: Mapping[str, int]) -> None:
    known = known_metrics(plan)
    for metric, value in measurements.items():
        if metric not in known:
            raise UnknownMetricError(metric, plan.id)
        # Negative corrections are refused: F is defined for cumulative q >= 0 and a credit is
        # a control-plane adjustment, not usage.
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidMeasurementError(f"measurement {metric!r}: {value!r} is not a whole number >= 0")


@exact
def rate_event(
    plan: Plan,
    dimensions: Mapping[str, Any],
    measurements: Mapping[str, int],
    cumulative: Mapping[UsageKey, int],
) -> RatedEvent:
    """Price one event: one line per charge it moves (zero quantities give no line)."""
    _check_measurements(plan, measurements)
    after = dict(cumulative)
    updates: dict[UsageKey, int] = {}
    lines: list[ChargeLine] = []
    for c in plan.charges:
        if c.model not in USAGE_MODELS:
            continue
        dim_key = c.dimension_key(dimensions)
        q = measurements.get(c.metric, 0)
        if q:
            key = (c.id, dim_key)
            a = after.get(key, 0)
            lines.append(_usage_line(c, dim_key, c.pricing_for(dimensions), a, a + q))
            after[key] = updates[key] = a + q
        for metric in c.metered:
            q = measurements.get(metric, 0)
            if q:
                key = (c.id, composite.metered_key(dim_key, metric))
                after[key] = updates[key] = after.get(key, 0) + q
                lines.append(_metered_line(c, dim_key, metric, q, after[key]))
    before_amounts = charge_amounts(plan, cumulative)
    pct = [c for c in plan.charges if c.model == "percentage"]
    if pct and updates:
        after_amounts = charge_amounts(plan, after)
        for c in pct:
            b0 = sum(before_amounts[x] for x in c.base_charges)
            b1 = sum(after_amounts[x] for x in c.base_charges)
            if b1 != b0:
                lines.append(_percentage_line(c, b0, b1, after_amounts[c.id] - before_amounts[c.id]))
    return RatedEvent(tuple(lines), after, updates, sum(before_amounts.values()))


def _billed_keys(plan: Plan, cumulative: Mapping[UsageKey, int]) -> dict[str, list[tuple[str, int]]]:
    """Billed (dim key, quantity) per charge id; metered keys are checked and left out."""
    charges = {c.id: c for c in plan.charges}
    out: dict[str, list[tuple[str, int]]] = {}
    for (cid, dim_key), q in cumulative.items():
        c = charges.get(cid)
        if c is None or c.model not in USAGE_MODELS:
            raise StateError(f"usage key ({cid!r}, {dim_key!r}): no usage charge {cid!r} in plan {plan.id!r}")
        if isinstance(q, bool) or not isinstance(q, int) or q < 0:
            raise StateError(f"usage key ({cid!r}, {dim_key!r}): cumulative {q!r} is not a whole number >= 0")
        metered = composite.parse_metered_key(dim_key)
        if metered is not None:
            pricing_for_key(c, metered[0])
            if metered[1] not in c.metered:
                raise StateError(f"usage key ({cid!r}, {dim_key!r}): {metered[1]!r} is not metered by {cid!r}")
            continue
        out.setdefault(cid, []).append((dim_key, q))
    return out


@exact
def charge_amounts(plan: Plan, cumulative: Mapping[UsageKey, int], closed: bool = False) -> dict[str, int]:
    """Period-to-date micros of every charge, from the usage cumulatives alone.

    Open (during the period): flat fees are 0 and percentage minimums not applied. Closed: the
    flat fees are in and each percentage charge is at least its minimum. Evaluated in plan order:
    a percentage's base charges are earlier charges (validated by tollgate.plans).
    """
    keys = _billed_keys(plan, cumulative)
    amounts: dict[str, int] = {}
    for c in plan.charges:
        if c.model in USAGE_MODELS:
            f = USAGE_MODELS[c.model].amount
            amounts[c.id] = sum(to_micros(f(pricing_for_key(c, k), q)) for k, q in keys.get(c.id, ()))
        elif c.model == "flat":
            amounts[c.id] = flat.fee_micros(c) if closed else 0
        elif c.model == "percentage":
            base = sum(amounts[x] for x in c.base_charges)
            amounts[c.id] = percentage.closed_amount_micros(c, base) if closed else percentage.amount_micros(c, base)
    return amounts


def period_subtotal(plan: Plan, cumulative: Mapping[UsageKey, int], closed: bool = False) -> int:
    """The period's rated charges so far (before commit, discounts and tax), in micros."""
    return sum(charge_amounts(plan, cumulative, closed).values())


@exact
def close_period(plan: Plan, cumulative: Mapping[UsageKey, int]) -> list[ChargeLine]:
    """The lines the period close adds: flat fees, percentages of what the close added to their
    base (e.g. a percentage of a flat fee), percentage minimum true-ups."""
    open_, closed = charge_amounts(plan, cumulative), charge_amounts(plan, cumulative, closed=True)
    lines: list[ChargeLine] = []
    for c in plan.charges:
        if c.model == "flat":
            lines.append(flat.close_line(c))
        elif c.model == "percentage":
            b0 = sum(open_[x] for x in c.base_charges)
            b1 = sum(closed[x] for x in c.base_charges)
            raw = percentage.amount_micros(c, b1)
            if b1 != b0:
                lines.append(_percentage_line(c, b0, b1, raw - open_[c.id]))
            if closed[c.id] != raw:
                true_up = closed[c.id] - raw
                lines.append(ChargeLine(c.id, "percentage", "minimum", None, "default", 0, None, true_up, (), b1))
    return lines


@exact
def rate_period(plan: Plan, totals: Mapping[UsageKey, int]) -> list[ChargeLine]:
    """Batch: the whole period rated from its usage totals, close lines included.

    sum(amounts) == sum of the per-event amounts of any sequence of events with these totals,
    plus the close_period lines.
    """
    keys = _billed_keys(plan, totals)
    open_ = charge_amounts(plan, totals)
    lines: list[ChargeLine] = []
    for c in plan.charges:
        if c.model in USAGE_MODELS:
            for dim_key, q in sorted(keys.get(c.id, ())):
                if q:
                    lines.append(_usage_line(c, dim_key, pricing_for_key(c, dim_key), 0, q))
            for (cid, k), q in sorted(totals.items()):
                m = composite.parse_metered_key(k) if cid == c.id else None
                if m is not None and q:
                    lines.append(_metered_line(c, m[0], m[1], q, q))
        elif c.model == "percentage":
            base = sum(open_[x] for x in c.base_charges)
            if base:
                lines.append(_percentage_line(c, 0, base, open_[c.id]))
    return lines + close_period(plan, totals)
