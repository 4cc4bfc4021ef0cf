"""The pricing engine: prices events, period closes and whole periods, exactly.

Each usage-based charge is a function F(q) -> Decimal of the cumulative quantity q of its usage key
(charge id, Charge.dimension_key(dimensions)) in the period. An event moving q from a to b costs
round(F(b)) - round(F(a)) micros (round = tollgate.money.to_micros, half-up), so the per-event
micros of a period telescope to round(F(total)): real time equals batch exactly, in any arrival
order. The order decides which event pays which micro, never the total.

State is passed in and returned: the caller stores the cumulatives (one int per usage key) with
the ledger lines, in one transaction. Percentage and flat charges keep no state: their amounts are
derived from the usage cumulatives (see charge_amounts).

Two evaluations of the same F: the period close and batch (close_period, rate_period,
charge_amounts) use the models' Decimal definitions, amount(pricing, q); the per-event path
(rate_event, the rater's hot path) uses each model's Pricer, built once per plan (plan_pricing),
and carries the period's costs from one event to the next in the Cumulatives it returns, so an
event prices only the keys it moves. The property tests hold the two to each other: any events
plus the close add up to the batch, line by line.

Rollover: `carried` (UsageKey -> units carried in from the previous period, included charges
only) raises the quota of those keys (included.with_carried). When the carried units become
known after some of the period's events were rated without them, carry_credit prices the
difference F_new(q) - F_old(q) at the cumulatives so far: the events before, the credit and the
events after still add up to the batch with the final allowance.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from tollgate.rating.pricing import composite, cost, flat, graduated, included, per_unit, percentage, volume
from tollgate.rating.pricing.base import (
    ChargeLine,
    InvalidMeasurementError,
    StateError,
    UnknownMetricError,
    UsageKey,
    exact,
)
from tollgate.money import to_micros
from tollgate.plans import SUCCESS_STATUS, Charge, Plan, Pricing

# No units carried in (the default everywhere): one shared immutable mapping, compared by identity
# on the per-event path.
NO_CARRY: Mapping[UsageKey, int] = MappingProxyType({})

# Models priced by F(cumulative quantity): each module has amount(pricing, q) and
# breakdown(pricing, a, b) (the definitions), and pricer(pricing) (the per-event form).
USAGE_MODELS = {
    "per_unit": per_unit,
    "graduated": graduated,
    "volume": volume,
    "included": included,
    "composite": composite,
}


class RatedEvent(NamedTuple):
    lines: tuple[ChargeLine, ...]
    cumulative: Cumulatives  # the period cumulatives after the event (the input is untouched)
    updates: dict[UsageKey, int]  # only the keys the event changed: what to upsert
    subtotal_before_micros: int  # the period's rated charges before the event (period_subtotal)

    @property
    def amount_micros(self) -> int:
        return sum(line.amount_micros for line in self.lines)

    @property
    def subtotal_after_micros(self) -> int:
        return self.subtotal_before_micros + self.amount_micros  # exact: the lines telescope

    @property
    def cost_micros(self) -> int:
        return sum(line.cost_micros for line in self.lines)


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
    if n != dimension_key and n.isdigit() and int(n) < len(charge.overrides) and charge.overrides[int(n)].key is None:
        return charge.overrides[int(n)].pricing
    for o in charge.overrides:
        if o.key == dimension_key:
            return o.pricing
    raise StateError(f"usage key ({charge.id!r}, {dimension_key!r}) does not match the plan's overrides")


def pricing_carried(charge: Charge, dimension_key: str, carried: Mapping[UsageKey, int]) -> Pricing:
    """pricing_for_key with the units carried into the key's period (rollover) added to its quota."""
    p = pricing_for_key(charge, dimension_key)
    units = carried.get((charge.id, dimension_key), 0) if carried else 0
    return included.with_carried(p, units) if units else p


def check_carried(plan: Plan, carried: Mapping[UsageKey, int]) -> None:
    """Carried units belong to keys of the plan's included charges, and are whole numbers >= 0."""
    if not carried:
        return
    charges = {c.id: c for c in plan.charges}
    for (cid, dim_key), units in carried.items():
        c = charges.get(cid)
        if c is None or c.model != "included":
            raise StateError(f"carried units ({cid!r}, {dim_key!r}): no included charge {cid!r} in plan {plan.id!r}")
        pricing_for_key(c, dim_key)
        if isinstance(units, bool) or not isinstance(units, int) or units < 0:
            raise StateError(f"carried units ({cid!r}, {dim_key!r}): {units!r} is not a whole number >= 0")


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


def _metered_line(charge: Charge, dim_key: str, metric: str, q: int, after: int, cost_micros: int = 0) -> ChargeLine:
    return ChargeLine(charge.id, charge.model, "metered", metric, dim_key, q, None, 0, (), after, cost_micros)


def _percentage_line(charge: Charge, base_before: int, base_after: int, amount: int) -> ChargeLine:
    return ChargeLine(
        charge.id, "percentage", "percentage", None, "default", base_after - base_before, None, amount, (), base_after
    )


def _check_measurements(known: frozenset[str], plan_id: str, measurements: Mapping[str, int]) -> None:
    if not known.issuperset(measurements):
        raise UnknownMetricError(next(m for m in measurements if m not in known), plan_id)
    for metric, value in measurements.items():
        # Negative corrections are refused: F is defined for cumulative q >= 0 and a credit is
        # a control-plane adjustment, not usage.
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidMeasurementError(f"measurement {metric!r}: {value!r} is not a whole number >= 0")


# --------------------------------------------------------------------------- the per-event path


class _UsageCharge:
    """A usage charge with a Pricer per dimension key."""

    __slots__ = ("charge", "id", "model", "metric", "metered", "pricers", "dimension_key", "bill_failed", "carried")

    CARRIED_MAX = 4096  # (dim key, units carried in) pricers remembered

    def __init__(self, charge: Charge):
        self.charge = charge
        self.id, self.model, self.metric, self.metered = charge.id, charge.model, charge.metric, charge.metered
        self.bill_failed = charge.bill_failed
        keys = ["default", *(o.key or f"override{i}" for i, o in enumerate(charge.overrides))]
        self.pricers = {k: USAGE_MODELS[charge.model].pricer(pricing_for_key(charge, k)) for k in keys}
        # the first matching override by the index (tollgate.matching): O(1) in the overrides
        self.dimension_key = charge.dimension_key if charge.overrides else _default_key
        self.carried: dict[tuple[str, int], Any] = {}  # (dim key, units carried in) -> Pricer

    def pricer(self, dimension_key: str, carried: int = 0):
        if carried:
            return self._carried_pricer(dimension_key, carried)
        p = self.pricers.get(dimension_key)
        if p is None:  # not a key this plan makes: StateError, unless pricing_for_key accepts it
            p = USAGE_MODELS[self.model].pricer(pricing_for_key(self.charge, dimension_key))
        return p

    def _carried_pricer(self, dimension_key: str, units: int):
        """The key's Pricer with `units` carried in (an included charge): kept per (key, units),
        which stay the same for a customer's whole period."""
        p = self.carried.get((dimension_key, units))
        if p is None:
            p = included.pricer(included.with_carried(pricing_for_key(self.charge, dimension_key), units))
            if len(self.carried) < self.CARRIED_MAX:
                self.carried[(dimension_key, units)] = p
        return p


def _default_key(dimensions: Mapping[str, Any]) -> str:
    return "default"


class PlanPricing:
    """What rate_event needs of a plan, computed once per Plan object (plan_pricing)."""

    __slots__ = ("plan", "usage", "by_id", "percentages", "known_metrics", "outcomes", "composite_ids",
                 "costs", "failed_free")

    def __init__(self, plan: Plan):
        self.plan = plan
        self.usage = tuple(_UsageCharge(c) for c in plan.charges if c.model in USAGE_MODELS)
        # composite charges that meter something: (outcome metric, the metrics its price covers)
        self.outcomes = tuple((u.metric, frozenset(u.metered), u.bill_failed) for u in self.usage if u.metered)
        self.by_id = {u.id: u for u in self.usage}
        self.percentages = tuple(c for c in plan.charges if c.model == "percentage")
        self.known_metrics = frozenset(known_metrics(plan))
        self.composite_ids = frozenset(u.id for u in self.usage if u.model == "composite")
        self.costs = cost.plan_costs(plan.costs)  # metric -> its cost per dimension; {} without costs
        self.failed_free = any(not u.bill_failed for u in self.usage)  # some charge skips failed events


_PLAN_PRICING: dict[int, tuple[Plan, PlanPricing]] = {}
_PLAN_PRICING_MAX = 256


def plan_pricing(plan: Plan) -> PlanPricing:
    """The PlanPricing of `plan`, cached by identity: a Plan is immutable and the rater keeps one
    object per (plan id, version) (rater.pipeline.Directory), so this is a cache by id + version
    that cannot confuse two documents under one id (tests make many). The entry holds the plan,
    so its id() is not reused while cached; the oldest entry goes first beyond _PLAN_PRICING_MAX."""
    hit = _PLAN_PRICING.get(id(plan))
    if hit is not None and hit[0] is plan:
        return hit[1]
    pp = PlanPricing(plan)
    if len(_PLAN_PRICING) >= _PLAN_PRICING_MAX:
        del _PLAN_PRICING[next(iter(_PLAN_PRICING))]
    _PLAN_PRICING[id(plan)] = (plan, pp)
    return pp


class Cumulatives(dict):
    """The period cumulatives rate_event returns: UsageKey -> quantity, read-only, carrying what
    they cost under `plan`: `key_micros` (round(F(q)) of each billed key), `amounts` (open
    per-charge micros, as charge_amounts) and their sum `subtotal_micros`.

    Passed back as the next event's `cumulative`, it saves re-pricing every key of the period on
    each event (the subtotal before the event, and F(a) of the keys it moves, are known). It is
    read-only because changing a quantity would leave those costs wrong: copy with dict(c). Any
    other mapping (e.g. rows read from PostgreSQL) is validated and priced once instead."""

    __slots__ = ("plan", "carried", "key_micros", "amounts", "subtotal_micros")

    def _read_only(self, *args, **kwargs):
        raise TypeError("Cumulatives are read-only (their costs are computed from them): copy with dict(...)")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only

    @classmethod
    def _make(cls, quantities: dict[UsageKey, int], plan: Plan, carried: Mapping[UsageKey, int],
              key_micros: dict[UsageKey, int], amounts: dict[str, int], subtotal_micros: int) -> Cumulatives:
        c = cls(quantities)
        c.plan, c.carried, c.key_micros, c.amounts, c.subtotal_micros = plan, carried, key_micros, amounts, subtotal_micros
        return c


def _costs(pp: PlanPricing, cumulative: Mapping[UsageKey, int],
           carried: Mapping[UsageKey, int]) -> tuple[dict[UsageKey, int], dict[str, int], int]:
    """(micros per billed key, open amounts per charge, their sum) of a period's cumulatives."""
    if (type(cumulative) is Cumulatives and cumulative.plan is pp.plan
            and (cumulative.carried is carried or cumulative.carried == carried)):
        return cumulative.key_micros, cumulative.amounts, cumulative.subtotal_micros
    keys = _billed_keys(pp.plan, cumulative)  # StateError for a key or quantity the plan cannot have
    check_carried(pp.plan, carried)
    key_micros: dict[UsageKey, int] = {}

    def usage_micros(c: Charge) -> int:
        u, total = pp.by_id[c.id], 0
        for k, q in keys.get(c.id, ()):
            total += (m := u.pricer(k, carried.get((c.id, k), 0) if carried else 0).micros(q))
            key_micros[(c.id, k)] = m
        return total

    amounts = _amounts(pp.plan, usage_micros, closed=False)
    return key_micros, amounts, sum(amounts.values())


def rate_event(
    plan: Plan,
    dimensions: Mapping[str, Any],
    measurements: Mapping[str, int],
    cumulative: Mapping[UsageKey, int],
    carried: Mapping[UsageKey, int] = NO_CARRY,
) -> RatedEvent:
    """Price one event: one line per charge it moves (zero quantities give no line).

    Only the charges whose metric the event measures are evaluated, each at one point (F(b);
    F(a) is carried in `cumulative` when it is the Cumulatives of the previous event).
    `carried`: units carried into the period by rollover (included charges' keys)."""
    pp = plan_pricing(plan)
    _check_measurements(pp.known_metrics, plan.id, measurements)
    key_micros, amounts, subtotal_before = _costs(pp, cumulative, carried)
    after = dict(cumulative)
    key_micros_after = dict(key_micros)
    amounts_after = dict(amounts)
    updates: dict[UsageKey, int] = {}
    lines: list[ChargeLine] = []
    # Failed calls (properties.status set and not "success") are not billed by the charges that
    # say bill_failed: false; their metrics still cost what they cost.
    failed = pp.failed_free and _failed(dimensions)
    # Costs first: the cost of each measured metric (exact on its cost key's cumulative), then
    # carried by the first line of the event with that metric, or by a "cost" line.
    costs = _event_costs(pp, dimensions, measurements, after, updates) if pp.costs else None
    # Composite (M:N): an event that reports an outcome has the metrics its price covers recorded
    # under the outcome's charge (metered lines, amount 0, for margin) and not billed again by
    # their own charges; an event without the outcome bills them by their own charges.
    covered: frozenset[str] | set[str] = frozenset()
    for outcome, metered, bill_failed in pp.outcomes:
        if measurements.get(outcome, 0) and (bill_failed or not failed):  # a failed outcome is no outcome
            covered = metered if not covered else covered | metered
    for u in pp.usage:
        q = measurements.get(u.metric, 0)
        if not q or (u.metric in covered and not u.metered) or (failed and not u.bill_failed):
            continue  # the event does not move this charge, its outcome's price covers it, or it failed
        dim_key = u.dimension_key(dimensions)
        if q:
            key = (u.id, dim_key)
            a = after.get(key, 0)
            b = a + q
            pricer = u.pricer(dim_key) if not carried else u.pricer(dim_key, carried.get(key, 0))
            fa, fb = key_micros.get(key, 0), pricer.micros(b)  # F(0) = 0 for a key not used yet
            tiers = pricer.breakdown(a, b, fa, fb)
            if not tiers:
                unit_price = pricer.unit_price
            else:
                unit_price = tiers[0].unit_price if len(tiers) == 1 else None
            c = costs.pop(u.metric, None) if costs else None
            lines.append(ChargeLine(u.id, u.model, "usage", u.metric, dim_key, q, unit_price, fb - fa, tiers, b,
                                    c[0] if c else 0))
            after[key] = updates[key] = b
            key_micros_after[key] = fb
            amounts_after[u.id] += fb - fa
        for metric in u.metered:
            q = measurements.get(metric, 0)
            if q:
                key = (u.id, composite.metered_key(dim_key, metric))
                after[key] = updates[key] = after.get(key, 0) + q
                c = costs.pop(metric, None) if costs else None
                lines.append(_metered_line(u.charge, dim_key, metric, q, after[key], c[0] if c else 0))
    if costs:  # metrics no line carries: billed by no charge in this event (e.g. a failed call)
        for metric, (c, key, cum) in costs.items():
            lines.append(ChargeLine(cost.COST_KIND, cost.COST_KIND, cost.COST_KIND, metric, key,
                                    measurements[metric], None, 0, (), cum, c))
    if pp.percentages and updates:
        for c in pp.percentages:  # plan order: a base is an earlier charge, already updated
            b0 = sum(amounts[x] for x in c.base_charges)
            b1 = sum(amounts_after[x] for x in c.base_charges)
            if b1 != b0:
                amounts_after[c.id] = percentage.amount_micros(c, b1)
                lines.append(_percentage_line(c, b0, b1, amounts_after[c.id] - amounts[c.id]))
    lines = tuple(lines)
    subtotal_after = subtotal_before + sum([line.amount_micros for line in lines])  # == sum(amounts_after)
    return RatedEvent(lines, Cumulatives._make(after, plan, carried, key_micros_after, amounts_after, subtotal_after),
                      updates, subtotal_before)


def _failed(dimensions: Mapping[str, Any]) -> bool:
    status = dimensions.get("status")
    return status is not None and str(status) != SUCCESS_STATUS


def _event_costs(pp: PlanPricing, dimensions: Mapping[str, Any], measurements: Mapping[str, int],
                 after: dict[UsageKey, int], updates: dict[UsageKey, int]) -> dict[str, tuple[int, str, int]]:
    """metric -> (cost micros, cost key, its cumulative after) of each measured metric with a
    non-zero unit cost; moves the cost keys' cumulatives in `after` and `updates`."""
    out = {}
    for metric, q in measurements.items():
        mc = pp.costs.get(metric)
        if mc is None or not q:
            continue
        key, n, d = mc.entry(dimensions)
        if not n:
            continue  # costs nothing: no cumulative to keep
        ck = (cost.COST_CHARGE, key)
        a = after.get(ck, 0)
        b = a + q
        after[ck] = updates[ck] = b
        out[metric] = (cost.micros(b, n, d) - cost.micros(a, n, d), key, b)
    return out


# --------------------------------------------------------------------------- close and batch


def _billed_keys(plan: Plan, cumulative: Mapping[UsageKey, int]) -> dict[str, list[tuple[str, int]]]:
    """Billed (dim key, quantity) per charge id; metered keys are checked and left out."""
    charges = {c.id: c for c in plan.charges}
    out: dict[str, list[tuple[str, int]]] = {}
    for (cid, dim_key), q in cumulative.items():
        c = charges.get(cid)
        if c is None and cid == cost.COST_CHARGE:
            continue  # a cost cumulative: never billed (cost.batch_lines prices it)
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


def _amounts(plan: Plan, usage_micros: Callable[[Charge], int], closed: bool) -> dict[str, int]:
    """Micros of every charge given those of the usage charges: flat fees (0 until closed) and
    percentages, in plan order (a percentage's base charges are earlier charges, validated by
    tollgate.plans)."""
    amounts: dict[str, int] = {}
    for c in plan.charges:
        if c.model in USAGE_MODELS:
            amounts[c.id] = usage_micros(c)
        elif c.model == "flat":
            amounts[c.id] = flat.fee_micros(c) if closed else 0
        elif c.model == "percentage":
            base = sum(amounts[x] for x in c.base_charges)
            amounts[c.id] = percentage.closed_amount_micros(c, base) if closed else percentage.amount_micros(c, base)
    return amounts


@exact
def charge_amounts(plan: Plan, cumulative: Mapping[UsageKey, int], closed: bool = False,
                   carried: Mapping[UsageKey, int] = NO_CARRY) -> dict[str, int]:
    """Period-to-date micros of every charge, from the usage cumulatives alone (the models'
    Decimal definitions), with the units `carried` into the period.

    Open (during the period): flat fees are 0 and percentage minimums not applied. Closed: the
    flat fees are in and each percentage charge is at least its minimum.
    """
    keys = _billed_keys(plan, cumulative)
    check_carried(plan, carried)

    def usage_micros(c: Charge) -> int:
        f = USAGE_MODELS[c.model].amount
        return sum(to_micros(f(pricing_carried(c, k, carried), q)) for k, q in keys.get(c.id, ()))

    return _amounts(plan, usage_micros, closed)


def period_subtotal(plan: Plan, cumulative: Mapping[UsageKey, int], closed: bool = False,
                    carried: Mapping[UsageKey, int] = NO_CARRY) -> int:
    """The period's rated charges so far (before commit, discounts and tax), in micros."""
    return sum(charge_amounts(plan, cumulative, closed, carried).values())


@exact
def close_period(plan: Plan, cumulative: Mapping[UsageKey, int],
                 carried: Mapping[UsageKey, int] = NO_CARRY) -> list[ChargeLine]:
    """The lines the period close adds: flat fees, percentages of what the close added to their
    base (e.g. a percentage of a flat fee), percentage minimum true-ups."""
    open_ = charge_amounts(plan, cumulative, carried=carried)
    closed = charge_amounts(plan, cumulative, closed=True, carried=carried)
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
def rate_period(plan: Plan, totals: Mapping[UsageKey, int], carried: Mapping[UsageKey, int] = NO_CARRY) -> list[ChargeLine]:
    """Batch: the whole period rated from its usage totals, close lines included, with the units
    `carried` into it.

    sum(amounts) == sum of the per-event amounts of any sequence of events with these totals,
    plus the close_period lines (plus a carry_credit, if the carried units came late).
    """
    keys = _billed_keys(plan, totals)
    open_ = charge_amounts(plan, totals, carried=carried)
    lines: list[ChargeLine] = []
    for c in plan.charges:
        if c.model in USAGE_MODELS:
            for dim_key, q in sorted(keys.get(c.id, ())):
                if q:
                    lines.append(_usage_line(c, dim_key, pricing_carried(c, dim_key, carried), 0, q))
            for (cid, k), q in sorted(totals.items()):
                m = composite.parse_metered_key(k) if cid == c.id else None
                if m is not None and q:
                    lines.append(_metered_line(c, m[0], m[1], q, q))
        elif c.model == "percentage":
            base = sum(open_[x] for x in c.base_charges)
            if base:
                lines.append(_percentage_line(c, 0, base, open_[c.id]))
    return lines + close_period(plan, totals, carried)


def rate_period_costs(totals: Mapping[UsageKey, int]) -> list[ChargeLine]:
    """Batch costs: one "cost" line per cost key of the period's totals (amount 0, cost_micros);
    their sum equals the per-event costs of any events with these totals (cost.batch_lines)."""
    return cost.batch_lines(totals)


@exact
def carry_credit(plan: Plan, cumulative: Mapping[UsageKey, int], before: Mapping[UsageKey, int],
                 after: Mapping[UsageKey, int]) -> tuple[list[ChargeLine], int, int]:
    """The period's events so far were rated with the units `before` carried in; from now on it
    is `after` (the close of the previous period came late). Lines of kind "rollover", one per
    key whose carried units changed and whose usage so far is repriced: quantity = the units so
    far that moved into the quota (negative: out of it), amount = round(F_after(q)) -
    round(F_before(q)); then the percentage lines of the change of their base. Returns (lines,
    open subtotal before, open subtotal after); the lines add up to the difference."""
    open0 = charge_amounts(plan, cumulative, carried=before)
    open1 = charge_amounts(plan, cumulative, carried=after)
    charges = {c.id: c for c in plan.charges}
    lines: list[ChargeLine] = []
    for key in sorted(set(before) | set(after)):
        u0, u1, q = before.get(key, 0), after.get(key, 0), cumulative.get(key, 0)
        if u0 == u1 or not q:
            continue
        c = charges[key[0]]
        p0, p1 = pricing_carried(c, key[1], before), pricing_carried(c, key[1], after)
        amount = to_micros(included.amount(p1, q)) - to_micros(included.amount(p0, q))
        moved = min(q, p1.included_units) - min(q, p0.included_units)
        if amount or moved:
            lines.append(ChargeLine(c.id, c.model, "rollover", c.metric, key[1], moved, p0.unit_price, amount, (), q))
    for c in plan.charges:
        if c.model == "percentage":
            b0 = sum(open0[x] for x in c.base_charges)
            b1 = sum(open1[x] for x in c.base_charges)
            if b1 != b0:
                lines.append(_percentage_line(c, b0, b1, open1[c.id] - open0[c.id]))
    return lines, sum(open0.values()), sum(open1.values())
