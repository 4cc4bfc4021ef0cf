"""Rate plans as validated documents (JSON or YAML).

A plan says how usage is limited (rate limits, spend cap, spend tiers) and priced (charges). The
control plane validates it here once; the enforcer uses `Plan.estimate_micros` to size holds; the
rater's pricing engine prices the same `Charge` objects. A bad plan raises PlanError naming the
field, e.g. `charges[1].tiers[0].unit_price: must be >= 0`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any

import orjson
import yaml

from tollgate.alert_rules import DEFAULTS as ALERT_DEFAULTS
from tollgate.alert_rules import AlertSettings, AlertSettingsError, parse_settings
from tollgate.errors import FieldError
from tollgate.keys import ID_PATTERN
from tollgate.matching import OverrideIndex
from tollgate.margin_guard import GuardRule, GuardRuleError, check_outcomes, parse_rules
from tollgate.money import MoneyError, parse_decimal, to_micros, to_micros_ceil
from tollgate.periods import MAX_ANCHOR_DAY

BILLING_MODES = ("prepaid", "postpaid", "hybrid")
# limits.max_quantity_per_event: the most units of one metric a single usage event may carry.
# The default is far above any real call (50x the largest LLM context window in tokens) and far
# below a typo or an overflow (2**40); a plan may set any metric (or its default) up to the ceiling,
# which is also what the enforcer holds an event to when it cannot read the key's plan.
DEFAULT_MAX_QUANTITY_PER_EVENT = 10**8
MAX_QUANTITY_PER_EVENT_CEILING = 10**12
# sessions.idle_timeout_seconds at most: longer keeps a session's bill open past any useful preview.
MAX_SESSION_IDLE_S = 7 * 86400
CHARGE_MODELS = ("per_unit", "graduated", "volume", "included", "flat", "percentage", "composite")
USAGE_CHARGE_MODELS = ("per_unit", "graduated", "volume", "included", "composite")
# The status property of an event that succeeded (MCP tool calls: properties.status); an event
# with another status is "failed", and a charge with bill_failed: false does not bill it.
SUCCESS_STATUS = "success"


class PlanError(FieldError):
    pass


@dataclass(frozen=True)
class PriceTier:
    up_to: int | None  # inclusive upper bound of cumulative units; None = infinity
    unit_price: Decimal
    flat_fee: Decimal = Decimal(0)  # added once when usage enters this tier


@dataclass(frozen=True)
class Pricing:
    """The price-bearing part of a charge; overrides replace it for matching dimensions."""

    unit_price: Decimal | None = None
    tiers: tuple[PriceTier, ...] = ()
    included_units: int = 0

    def max_unit_price(self) -> Decimal:
        prices = [t.unit_price for t in self.tiers]
        if self.unit_price is not None:
            prices.append(self.unit_price)
        return max(prices, default=Decimal(0))


@dataclass(frozen=True)
class Override:
    match: dict[str, str]
    pricing: Pricing
    # the dimension key usage is accumulated under; None: "override<position>". A customer's
    # negotiated price (tollgate.rating.negotiated) names its own, stable whatever the plan's list.
    key: str | None = None

    def matches(self, dimensions: dict[str, Any]) -> bool:
        return all(str(dimensions.get(k)) == v for k, v in self.match.items())


@dataclass(frozen=True)
class Charge:
    id: str
    model: str
    metric: str | None  # None for flat and percentage
    pricing: Pricing = Pricing()
    overrides: tuple[Override, ...] = ()
    amount: Decimal = Decimal(0)  # flat: fee per period
    percent: Decimal = Decimal(0)  # percentage: of the base charges' amounts
    minimum: Decimal = Decimal(0)  # percentage: minimum per period
    base_charges: tuple[str, ...] = ()  # percentage: ids of the charges it is a percentage of
    metered: tuple[str, ...] = ()  # composite: metrics metered for cost/margin, not billed
    # usage models: False = an event whose properties.status is set and is not "success" is not
    # billed by this charge (its metrics still carry their cost: tollgate.rating.pricing.engine)
    bill_failed: bool = True
    # included: `rollover: {max_units: N}`, the most unused included units of each usage key
    # carried into the next period (tollgate.rating.rollover); None: no rollover
    rollover_max_units: int | None = None

    @cached_property
    def override_index(self) -> OverrideIndex:
        """The overrides' first-match-wins lookup without a scan (tollgate.matching)."""
        return OverrideIndex([o.match for o in self.overrides])

    def override_for(self, dimensions: dict[str, Any]) -> int | None:
        """The position of the override that applies to `dimensions` (the first that matches)."""
        return self.override_index.lookup(dimensions) if self.overrides else None

    def pricing_for(self, dimensions: dict[str, Any]) -> Pricing:
        i = self.override_for(dimensions)
        return self.pricing if i is None else self.overrides[i].pricing

    def dimension_key(self, dimensions: dict[str, Any]) -> str:
        """Which override applies: usage is accumulated per (charge, dimension key)."""
        i = self.override_for(dimensions)
        return "default" if i is None else (self.overrides[i].key or f"override{i}")


@dataclass(frozen=True)
class CostOverride:
    match: dict[str, str]
    unit_cost: Decimal


@dataclass(frozen=True)
class MetricCost:
    """What one unit of a metric costs the provider (e.g. the model vendor's price of a token),
    per dimension like a charge's price: the first override whose match holds, else unit_cost."""

    metric: str
    unit_cost: Decimal
    overrides: tuple[CostOverride, ...] = ()

    @cached_property
    def override_index(self) -> OverrideIndex:
        return OverrideIndex([o.match for o in self.overrides])


@dataclass(frozen=True)
class SpendTier:
    name: str
    threshold_micros: int  # period spend at which the customer is promoted to this tier
    multiplier: Decimal  # applied to requests/min, tokens/min and spend cap


@dataclass(frozen=True)
class Discount:
    kind: str  # "percent" | "amount"
    value: Decimal


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    currency: str
    billing_mode: str
    requests_per_minute: int
    tokens_per_minute: int
    spend_cap_micros: int | None
    hold_ttl_seconds: int
    tiers: tuple[SpendTier, ...]
    charges: tuple[Charge, ...]
    minimum_commit_micros: int = 0
    discounts: tuple[Discount, ...] = ()
    tax_percent: Decimal = Decimal(0)
    # billing_period.anchor_day: periods start at 00:00 UTC on this day of each month (tollgate.periods)
    billing_anchor_day: int = 1
    # limits.max_quantity_per_event: (metric, most units per usage event), "default" for the rest
    max_quantity_per_event: tuple[tuple[str, int], ...] = ()
    max_quantity_default: int = DEFAULT_MAX_QUANTITY_PER_EVENT
    # alerts: the customers' default alert settings (tollgate.alert_rules; overridable per customer)
    alerts: AlertSettings = ALERT_DEFAULTS
    # sessions.idle_timeout_seconds: the plan aggregates agent sessions (rater.sessions); None: it does not
    session_idle_timeout_s: int | None = None
    # costs: what each metric costs the provider (for margin; never billed). The plan's own, plus
    # those of the shared catalog it names (cost_catalog) that the rater merges in
    # (tollgate.cost_catalogs.with_catalog): a metric the plan lists wins over the catalog's.
    costs: tuple[MetricCost, ...] = ()
    cost_catalog: str | None = None
    # margin_guard: the customers' default Margin Guard rules (tollgate.margin_guard; a customer's own list replaces them)
    margin_guard: tuple[GuardRule, ...] = ()
    document: dict = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def has_rollover(self) -> bool:
        """Whether any charge carries unused included units over (the rater reads carried-in
        units only for such plans)."""
        return any(c.rollover_max_units is not None for c in self.charges)

    def max_quantity(self, metric: str) -> int:
        """The most units of `metric` one usage event may carry (beyond: refused, never billed)."""
        return self._max_quantity.get(metric, self.max_quantity_default)

    @cached_property
    def _max_quantity(self) -> dict[str, int]:
        return dict(self.max_quantity_per_event)

    @cached_property
    def outcome_prices(self) -> dict[str, int]:
        """Each composite charge's base unit price in micros (what a session_cost guard compares to)."""
        return {c.id: to_micros(c.pricing.max_unit_price()) for c in self.charges if c.model == "composite"}

    def tier(self, name: str) -> SpendTier:
        for t in self.tiers:
            if t.name == name:
                return t
        return self.tiers[0]

    def limits_for_tier(self, tier: SpendTier) -> tuple[int, int, int]:
        """(requests/min, tokens/min, spend cap micros or -1) scaled by the tier multiplier."""
        m = tier.multiplier
        cap = -1 if self.spend_cap_micros is None else int(self.spend_cap_micros * m)
        return int(self.requests_per_minute * m), int(self.tokens_per_minute * m), cap

    def estimate_micros(self, dimensions: dict[str, Any], estimate: dict[str, int]) -> int:
        """Hold size: the estimate at each charge's highest unit price, rounded up.

        Conservative on purpose (tiers and included units are ignored): a hold too large is
        released at settlement; one too small would let a prepaid wallet go negative.
        """
        total = Decimal(0)
        for metric, default_price, charge, override_prices in self._estimable:
            q = estimate.get(metric)
            if q:
                i = charge.override_for(dimensions)  # the first matching override, as pricing_for
                total += (default_price if i is None else override_prices[i]) * q
        return to_micros_ceil(total)

    def estimate_unit_price(self, metric: str, dimensions: dict[str, Any]) -> Decimal:
        """What estimate_micros charges one unit of `metric` (summed over its charges), unrounded:
        for gateways that size holds themselves (control.projection.gateway_estimate)."""
        total = Decimal(0)
        for m, default_price, charge, override_prices in self._estimable:
            if m == metric:
                i = charge.override_for(dimensions)
                total += default_price if i is None else override_prices[i]
        return total

    @cached_property
    def _estimable(self) -> tuple[tuple[str, Decimal, Charge, tuple[Decimal, ...]], ...]:
        """(metric, highest unit price, the charge, each override's highest unit price) of each
        charge an estimate can size: computed once per plan, not on every /v1/check."""
        return tuple((c.metric, c.pricing.max_unit_price(), c, tuple(o.pricing.max_unit_price() for o in c.overrides))
                     for c in self.charges if c.model in ("per_unit", "graduated", "volume", "included"))


# --------------------------------------------------------------------------- parsing


def load_plan_text(text: str) -> Plan:
    """YAML is a superset of JSON: one loader takes both."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PlanError("document", f"not valid YAML/JSON: {e}") from None
    return parse_plan(doc)


def parse_plan(doc: Any) -> Plan:
    if not isinstance(doc, dict):
        raise PlanError("document", "must be a mapping")
    limits = _mapping(doc.get("limits", {}), "limits")
    tiers = _parse_tiers(doc.get("tiers"))
    charges = _parse_charges(doc.get("charges"))
    costs = parse_costs(doc.get("costs"), "costs", known=_known_metrics(charges))
    catalog = doc.get("cost_catalog")
    cap = limits.get("monthly_spend_cap")
    max_quantity = _max_quantity_per_event(limits.get("max_quantity_per_event"))
    return Plan(
        id=_ident(doc.get("id"), "id"),
        name=str(doc.get("name") or doc.get("id")),
        currency=_currency(doc.get("currency", "USD")),
        billing_mode=_choice(doc.get("billing_mode", "prepaid"), BILLING_MODES, "billing_mode"),
        requests_per_minute=_int(limits.get("requests_per_minute"), "limits.requests_per_minute", 1),
        tokens_per_minute=_int(limits.get("tokens_per_minute"), "limits.tokens_per_minute", 1),
        spend_cap_micros=None if cap is None else _money(cap, "limits.monthly_spend_cap"),
        hold_ttl_seconds=_int(limits.get("hold_ttl_seconds", 300), "limits.hold_ttl_seconds", 1),
        tiers=tiers,
        charges=charges,
        minimum_commit_micros=_money(doc.get("minimum_commit", 0), "minimum_commit"),
        discounts=_parse_discounts(doc.get("discounts", [])),
        tax_percent=_dec(_mapping(doc.get("tax", {}), "tax").get("percent", 0), "tax.percent", 0, 100),
        billing_anchor_day=_anchor_day(doc.get("billing_period")),
        max_quantity_default=max_quantity.pop("default", DEFAULT_MAX_QUANTITY_PER_EVENT),
        max_quantity_per_event=tuple(sorted(max_quantity.items())),
        alerts=_alerts(doc.get("alerts")),
        session_idle_timeout_s=_sessions(doc.get("sessions")),
        costs=costs,
        cost_catalog=None if catalog is None else _ident(catalog, "cost_catalog"),
        margin_guard=guard_rules(doc.get("margin_guard"), charges),
        document=doc,
    )


def _known_metrics(charges: tuple[Charge, ...]) -> set[str]:
    return {m for c in charges if c.model in USAGE_CHARGE_MODELS for m in (c.metric, *c.metered)}


def parse_costs(raw: Any, f: str, known: set[str] | None = None) -> tuple[MetricCost, ...]:
    """`costs: {<metric>: <unit cost> | {unit_cost, overrides: [{match, unit_cost}], costs_by}}`.

    unit_cost defaults to 0 (a metric costed only per model, say); costs_by is the compact form of
    many single-dimension overrides, `{dimension: model, costs: {gpt-4o: "0.0000025", ...}}`,
    appended after the explicit overrides. `known`: the metrics a plan's charges bill or meter
    (a plan's own cost for any other metric is a typo); None for a shared catalog."""
    out = []
    for metric, spec in _mapping(raw, f).items():
        mf = f"{f}.{metric}"
        if not (isinstance(metric, str) and ID_PATTERN.match(metric)):
            raise PlanError(f, f"{str(metric)[:64]!r} is not a metric name (1-64 letters, digits, '_', '-', '.')")
        if known is not None and metric not in known:
            raise PlanError(mf, "no charge of the plan bills or meters this metric")
        if not isinstance(spec, dict):
            out.append(MetricCost(metric, _dec(spec, mf, 0)))
            continue
        for name in spec:
            if name not in ("unit_cost", "overrides", "costs_by"):
                raise PlanError(f"{mf}.{name}", "unknown field; expected unit_cost, overrides, costs_by")
        overrides = []
        for j, o in enumerate(_list(spec.get("overrides"), f"{mf}.overrides")):
            of = f"{mf}.overrides[{j}]"
            o = _mapping(o, of, True)
            for name in o:
                if name not in ("match", "unit_cost"):
                    raise PlanError(f"{of}.{name}", "unknown field; expected match, unit_cost")
            overrides.append(CostOverride(_match(o.get("match"), f"{of}.match"), _dec(o.get("unit_cost"), f"{of}.unit_cost", 0)))
        if spec.get("costs_by") is not None:
            dim, entries = _by_map(spec["costs_by"], f"{mf}.costs_by", "costs")
            overrides += [CostOverride({dim: v}, _dec(c, f"{mf}.costs_by.costs.{v}", 0)) for v, c in entries]
        out.append(MetricCost(metric, _dec(spec.get("unit_cost", 0), f"{mf}.unit_cost", 0), tuple(overrides)))
    return tuple(out)


def _match(raw: Any, f: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in _mapping(raw, f, True).items()}


def _by_map(raw: Any, f: str, values: str) -> tuple[str, list[tuple[str, Any]]]:
    """`{dimension: <name>, <values>: {<dimension value>: <price or cost>, ...}}` -> (name, entries)."""
    raw = _mapping(raw, f, True)
    for name in raw:
        if name not in ("dimension", values):
            raise PlanError(f"{f}.{name}", f"unknown field; expected dimension, {values}")
    dim = _ident(raw.get("dimension"), f"{f}.dimension")
    entries = _mapping(raw.get(values), f"{f}.{values}", True)
    if not entries:
        raise PlanError(f"{f}.{values}", "must not be empty")
    return dim, [(str(v), p) for v, p in entries.items()]


def _anchor_day(raw: Any) -> int:
    """`billing_period: {anchor_day: N}`: 1-28 (every month has those days), default 1."""
    day = _mapping(raw, "billing_period").get("anchor_day", 1)
    day = _int(day, "billing_period.anchor_day", 1)
    if day > MAX_ANCHOR_DAY:
        raise PlanError("billing_period.anchor_day", f"must be <= {MAX_ANCHOR_DAY} (every month has that day)")
    return day


def _sessions(raw: Any) -> int | None:
    """`sessions: {idle_timeout_seconds: N}`: usage events with a session_id are aggregated into
    one billable session each (rater.sessions), closed by its end event or after N seconds
    without an event (1 s .. 7 days). Absent: a session_id is attribution only."""
    if raw is None:
        return None
    doc = _mapping(raw, "sessions")
    unknown = sorted(set(doc) - {"idle_timeout_seconds"})
    if unknown:
        raise PlanError(f"sessions.{unknown[0]}", "unknown setting (only idle_timeout_seconds)")
    n = _int(doc.get("idle_timeout_seconds"), "sessions.idle_timeout_seconds", 1)
    if n > MAX_SESSION_IDLE_S:
        raise PlanError("sessions.idle_timeout_seconds", f"must be <= {MAX_SESSION_IDLE_S} (7 days)")
    return n


def guard_rules(raw: Any, charges: tuple[Charge, ...]) -> tuple[GuardRule, ...]:
    """Margin Guard rules valid for these charges (a plan's own, or a customer's under its plan)."""
    try:
        rules = parse_rules(raw)
        check_outcomes(rules, {c.id for c in charges if c.model == "composite"})
    except GuardRuleError as e:
        raise PlanError(e.field, e.message) from None
    return rules


def _alerts(raw: Any) -> AlertSettings:
    try:
        return parse_settings(raw)
    except AlertSettingsError as e:
        raise PlanError(e.field, e.message) from None


def _max_quantity_per_event(raw: Any) -> dict[str, int]:
    """`limits.max_quantity_per_event: {default: N, <metric>: M}`, each 1 .. the ceiling."""
    f = "limits.max_quantity_per_event"
    out = {}
    for metric, n in _mapping(raw, f).items():
        if metric != "default" and not (isinstance(metric, str) and ID_PATTERN.match(metric)):
            raise PlanError(f, f"{str(metric)[:64]!r} is neither 'default' nor a metric name (1-64 letters, digits, '_', '-', '.')")
        out[metric] = _int(n, f"{f}.{metric}", 1)
        if out[metric] > MAX_QUANTITY_PER_EVENT_CEILING:
            raise PlanError(f"{f}.{metric}", f"must be <= {MAX_QUANTITY_PER_EVENT_CEILING}")
    return out


def _parse_tiers(raw: Any) -> tuple[SpendTier, ...]:
    if raw is None:
        return (SpendTier("default", 0, Decimal(1)),)
    items = _list(raw, "tiers", non_empty=True)
    out: list[SpendTier] = []
    for i, t in enumerate(items):
        f = f"tiers[{i}]"
        t = _mapping(t, f)
        tier = SpendTier(
            name=_ident(t.get("name"), f"{f}.name"),
            threshold_micros=_money(t.get("threshold", 0), f"{f}.threshold"),
            multiplier=_dec(t.get("multiplier", 1), f"{f}.multiplier", 0),
        )
        if out and tier.threshold_micros <= out[-1].threshold_micros:
            raise PlanError(f"{f}.threshold", "thresholds must increase")
        if any(o.name == tier.name for o in out):
            raise PlanError(f"{f}.name", f"duplicate tier {tier.name!r}")
        out.append(tier)
    if out[0].threshold_micros != 0:
        raise PlanError("tiers[0].threshold", "the first tier starts at 0")
    return tuple(out)


def _parse_charges(raw: Any) -> tuple[Charge, ...]:
    items = _list(raw, "charges", non_empty=True)
    out: list[Charge] = []
    for i, c in enumerate(items):
        f = f"charges[{i}]"
        c = _mapping(c, f)
        model = _choice(c.get("model"), CHARGE_MODELS, f"{f}.model")
        metric = c.get("metric")
        if model in ("flat", "percentage"):
            metric = None
        elif model == "composite":
            metric = _ident(c.get("outcome", metric), f"{f}.outcome")
        else:
            metric = _ident(metric, f"{f}.metric")
        cid = _ident(c.get("id", metric or model), f"{f}.id")
        if any(o.id == cid for o in out):
            raise PlanError(f"{f}.id", f"duplicate charge id {cid!r}")
        kw: dict[str, Any] = {}
        if model in USAGE_CHARGE_MODELS:
            kw["pricing"] = _parse_pricing(c, model, f)
            for j, o in enumerate(c.get("overrides") or []):
                if isinstance(o, dict) and "rollover" in o:
                    raise PlanError(f"{f}.overrides[{j}].rollover",
                                    "set rollover on the charge: it applies to each of its usage keys")
            kw["overrides"] = tuple(
                Override(
                    match=_match(o.get("match"), f"{f}.overrides[{j}].match"),
                    pricing=_parse_pricing({**_pricing_defaults(c), **o}, model, f"{f}.overrides[{j}]"),
                )
                for j, o in enumerate(_mapping(x, f"{f}.overrides[{k}]") for k, x in enumerate(_list(c.get("overrides", []), f"{f}.overrides")))
            ) + _prices_by(c, model, f)
            bill_failed = c.get("bill_failed", True)
            if not isinstance(bill_failed, bool):
                raise PlanError(f"{f}.bill_failed", "must be true or false")
            kw["bill_failed"] = bill_failed
        elif "bill_failed" in c or "prices_by" in c:
            raise PlanError(f"{f}.{'bill_failed' if 'bill_failed' in c else 'prices_by'}", f"not a field of {model} charges")
        if model == "flat":
            kw["amount"] = _dec(c.get("amount"), f"{f}.amount", 0)
        if model == "percentage":
            kw["percent"] = _dec(c.get("percent"), f"{f}.percent", 0, 100)
            kw["minimum"] = _dec(c.get("minimum", 0), f"{f}.minimum", 0)
            bases = tuple(_ident(b, f"{f}.base_charges[{j}]") for j, b in enumerate(_list(c.get("base_charges"), f"{f}.base_charges", True)))
            for j, b in enumerate(bases):
                if b not in {o.id for o in out}:
                    raise PlanError(f"{f}.base_charges[{j}]", f"no earlier charge {b!r}")
            kw["base_charges"] = bases
        if "rollover" in c:
            kw["rollover_max_units"] = _rollover(c["rollover"], model, f)
        if model == "composite":
            kw["metered"] = tuple(_ident(m, f"{f}.metered[{j}]") for j, m in enumerate(_list(c.get("metered", []), f"{f}.metered")))
        out.append(Charge(id=cid, model=model, metric=metric, **kw))
    return tuple(out)


def _prices_by(c: dict, model: str, f: str) -> tuple[Override, ...]:
    """`prices_by: {dimension: tool, prices: {<tool>: <unit price> | {<pricing fields>}}}`: the
    compact form of one single-dimension override per value (thousands of MCP tools, say),
    appended after the explicit overrides. The lookup is indexed either way (tollgate.matching)."""
    if c.get("prices_by") is None:
        return ()
    dim, entries = _by_map(c["prices_by"], f"{f}.prices_by", "prices")
    out = []
    for v, p in entries:
        pf = f"{f}.prices_by.prices.{v}"
        body = dict(_mapping(p, pf, True)) if isinstance(p, dict) else {"unit_price": p}
        out.append(Override({dim: v}, _parse_pricing({**_pricing_defaults(c), **body}, model, pf)))
    return tuple(out)


def _rollover(raw: Any, model: str, f: str) -> int:
    """`rollover: {max_units: N}` (included charges only): N >= 1 whole units per usage key."""
    if model != "included":
        raise PlanError(f"{f}.rollover", "only an included charge carries unused units over")
    r = _mapping(raw, f"{f}.rollover", True)
    for name in r:
        if name != "max_units":
            raise PlanError(f"{f}.rollover.{name}", "unknown field; expected max_units")
    return _int(r.get("max_units"), f"{f}.rollover.max_units", 1)


def _pricing_defaults(c: dict) -> dict:
    return {k: c[k] for k in ("included_units",) if k in c}


def _parse_pricing(c: dict, model: str, f: str) -> Pricing:
    if model in ("graduated", "volume"):
        tiers = []
        for j, t in enumerate(_list(c.get("tiers"), f"{f}.tiers", True)):
            tf = f"{f}.tiers[{j}]"
            t = _mapping(t, tf)
            up_to = t.get("up_to")
            tier = PriceTier(
                up_to=None if up_to is None else _int(up_to, f"{tf}.up_to", 1),
                unit_price=_dec(t.get("unit_price"), f"{tf}.unit_price", 0),
                flat_fee=_dec(t.get("flat_fee", 0), f"{tf}.flat_fee", 0),
            )
            if tiers and (tiers[-1].up_to is None or (tier.up_to is not None and tier.up_to <= tiers[-1].up_to)):
                raise PlanError(f"{tf}.up_to", "tier bounds must increase and only the last may be open")
            tiers.append(tier)
        if tiers[-1].up_to is not None:
            raise PlanError(f"{f}.tiers[{len(tiers) - 1}].up_to", "the last tier must be open (up_to: null)")
        return Pricing(tiers=tuple(tiers))
    included = _int(c.get("included_units", 0), f"{f}.included_units", 0) if model == "included" else 0
    return Pricing(unit_price=_dec(c.get("unit_price"), f"{f}.unit_price", 0), included_units=included)


def _parse_discounts(raw: Any) -> tuple[Discount, ...]:
    out = []
    for i, d in enumerate(_list(raw, "discounts")):
        d = _mapping(d, f"discounts[{i}]")
        kind = _choice(d.get("type"), ("percent", "amount"), f"discounts[{i}].type")
        hi = 100 if kind == "percent" else None
        out.append(Discount(kind, _dec(d.get("value"), f"discounts[{i}].value", 0, hi)))
    return tuple(out)


# --------------------------------------------------------------------------- field helpers


def _mapping(v: Any, f: str, required: bool = False) -> dict:
    if v is None and not required:
        return {}
    if not isinstance(v, dict):
        raise PlanError(f, "must be a mapping")
    return v


def _list(v: Any, f: str, non_empty: bool = False) -> list:
    if v is None:
        v = []
    if not isinstance(v, list):
        raise PlanError(f, "must be a list")
    if non_empty and not v:
        raise PlanError(f, "must not be empty")
    return v


def _ident(v: Any, f: str) -> str:
    if not isinstance(v, str) or not ID_PATTERN.match(v):
        raise PlanError(f, "required: 1-64 characters of letters, digits, '_', '-', '.'")
    return v


def _choice(v: Any, options: tuple[str, ...], f: str) -> str:
    if v not in options:
        raise PlanError(f, f"must be one of {', '.join(options)}")
    return v


def _currency(v: Any) -> str:
    if not isinstance(v, str) or len(v) != 3 or not v.isalpha():
        raise PlanError("currency", "must be a 3-letter ISO 4217 code")
    return v.upper()


def _int(v: Any, f: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise PlanError(f, "required: a whole number")
    if v < lo:
        raise PlanError(f, f"must be >= {lo}")
    return v


def _dec(v: Any, f: str, lo: int | None = None, hi: int | None = None) -> Decimal:
    if v is None:
        raise PlanError(f, "required")
    try:
        d = parse_decimal(v, f)
    except MoneyError as e:
        raise PlanError(f, str(e).split(": ", 1)[1]) from None
    if lo is not None and d < lo:
        raise PlanError(f, f"must be >= {lo}")
    if hi is not None and d > hi:
        raise PlanError(f, f"must be <= {hi}")
    return d


def _money(v: Any, f: str) -> int:
    return to_micros(_dec(v, f, 0))


def plan_from_row(row) -> Plan:
    """Stored documents were validated when applied; parsing again gives the Plan object. The
    jsonb column arrives as text, or decoded where a connection has a json codec."""
    doc = row["document"]
    return parse_plan(orjson.loads(doc) if isinstance(doc, (str, bytes)) else doc)
