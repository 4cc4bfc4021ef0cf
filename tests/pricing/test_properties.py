"""Property tests: real time equals batch, exactly, for random plans and event sequences."""
from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tollgate.rating.pricing import graduated, known_metrics, rate_period_costs, volume
from tollgate.rating.pricing.cost import COST_CHARGE, cost_key
from tollgate.rating.pricing.engine import USAGE_MODELS, pricing_for_key
from tollgate.rating.rollover import carried_out, keys_of
from tollgate.rating.stages.pipeline import run_batch, run_close, run_event, run_rollover
from tollgate.money import to_micros
from tollgate.plans import PriceTier, Pricing, parse_plan

METRICS = ("input_tokens", "output_tokens", "requests", "reviews")
MODELS = ("per_unit", "graduated", "volume", "included", "composite")
DIMS = ("a", "b", "c")

# up to 9 decimal places; mostly token-sized prices, sometimes large ones
prices = st.one_of(
    st.decimals(min_value=0, max_value=Decimal("0.0001"), places=9),
    st.decimals(min_value=0, max_value=Decimal("50"), places=9),
).map(str)
fees = st.decimals(min_value=0, max_value=Decimal("20"), places=6).map(str)


@st.composite
def tier_docs(draw, max_bound=3000):
    bounds = sorted(draw(st.sets(st.integers(1, max_bound), max_size=4)))
    out = []
    for up_to in [*bounds, None]:
        t = {"up_to": up_to, "unit_price": draw(prices)}
        if draw(st.booleans()):
            t["flat_fee"] = draw(fees)
        out.append(t)
    return out


def pricing_doc(draw, model):
    if model in ("graduated", "volume"):
        return {"tiers": draw(tier_docs())}
    if model == "included":
        doc = {"unit_price": draw(prices), "included_units": draw(st.integers(0, 3000))}
        return doc
    return {"unit_price": draw(prices)}


@st.composite
def plan_docs(draw):
    charges = []
    for i in range(draw(st.integers(1, 4))):
        model = draw(st.sampled_from(MODELS))
        c = {"id": f"c{i}", "model": model, **pricing_doc(draw, model)}
        if model == "composite":
            c["outcome"] = draw(st.sampled_from(METRICS))
            c["metered"] = draw(st.lists(st.sampled_from(METRICS), unique=True, max_size=2))
        else:
            c["metric"] = draw(st.sampled_from(METRICS))
        matches = draw(st.lists(st.sampled_from(DIMS), unique=True, max_size=2))
        c["overrides"] = [{"match": {"model": d}, **pricing_doc(draw, model)} for d in matches]
        if draw(st.booleans()):
            c["bill_failed"] = False
        if model == "included" and draw(st.booleans()):
            c["rollover"] = {"max_units": draw(st.integers(1, 4000))}
        charges.append(c)
    metrics = sorted({m for c in charges for m in (c.get("metric"), c.get("outcome"), *c.get("metered", ())) if m})
    costs = {m: {"unit_cost": draw(prices),
                 "overrides": [{"match": {"model": d}, "unit_cost": draw(prices)}
                               for d in draw(st.lists(st.sampled_from(DIMS), unique=True, max_size=2))]}
             for m in draw(st.lists(st.sampled_from(metrics), unique=True))}
    if draw(st.booleans()):
        charges.append({"id": "fee", "model": "flat", "amount": draw(fees)})
    for j in range(draw(st.integers(0, 2))):
        ids = [c["id"] for c in charges]
        charges.append({
            "id": f"pct{j}", "model": "percentage",
            "percent": str(draw(st.decimals(0, 100, places=4))),
            "minimum": draw(st.sampled_from(["0", "0.5", "3", "250"])),
            "base_charges": draw(st.lists(st.sampled_from(ids), unique=True, min_size=1)),
        })
    discounts = draw(st.lists(st.one_of(
        st.builds(lambda v: {"type": "percent", "value": str(v)}, st.decimals(0, 100, places=4)),
        st.builds(lambda v: {"type": "amount", "value": str(v)}, st.decimals(0, 30, places=6)),
    ), max_size=3))
    return {
        "id": "prop",
        "billing_mode": draw(st.sampled_from(["prepaid", "postpaid", "hybrid"])),
        "limits": {"requests_per_minute": 10, "tokens_per_minute": 10,
                   "monthly_spend_cap": str(draw(st.decimals(0, 100, places=2)))},
        "minimum_commit": str(draw(st.decimals(0, 100, places=6))),
        "discounts": discounts,
        "tax": {"percent": str(draw(st.decimals(0, 30, places=3)))},
        "charges": charges,
        "costs": costs,
    }


def events_for(metrics):
    measurements = st.dictionaries(st.sampled_from(metrics), st.integers(0, 2500), max_size=4)
    dims = st.sampled_from([{}, *({"model": d} for d in (*DIMS, "z")), {"model": "a", "status": "error"},
                            {"status": "success"}, {"status": "timeout"}])
    return st.lists(st.tuples(dims, measurements), max_size=12)


def totals_of(plan, events):
    """The period's usage per key, counted independently of the engine."""
    totals = Counter()
    for dims, m in events:
        # a failed event (status other than success) is not billed by charges with bill_failed: false
        failed = dims.get("status", "success") != "success"
        # an outcome in the event covers its composite's metered metrics: recorded under the
        # composite, not billed by their own charges (M:N)
        covered = {mm for c in plan.charges if c.metered and m.get(c.metric, 0) and (c.bill_failed or not failed)
                   for mm in c.metered}
        for c in plan.charges:
            if c.model in MODELS and (c.bill_failed or not failed):
                dk = c.dimension_key(dims)
                if c.metric not in covered or c.metered:
                    totals[(c.id, dk)] += m.get(c.metric, 0)
                if m.get(c.metric, 0):
                    for mm in c.metered:
                        totals[(c.id, f"{dk}:{mm}")] += m.get(mm, 0)
        for mc in plan.costs:  # the cost of every measured metric, billed or not
            o = next((o for o in mc.overrides if all(dims.get(k) == v for k, v in o.match.items())), None)
            unit = mc.unit_cost if o is None else o.unit_cost
            if unit and m.get(mc.metric, 0):
                totals[(COST_CHARGE, cost_key(mc.metric, unit))] += m[mc.metric]
    return {k: v for k, v in totals.items() if v}


def costs_by_key(lines):
    """Cost per (metric, unit cost) of batch cost lines."""
    g = Counter()
    for l in lines:
        g[l.metric] += l.cost_micros
    return {k: v for k, v in g.items() if v}


def grouped(lines):
    g = defaultdict(lambda: [0, 0])
    for l in lines:
        if l.kind == "cost":
            continue  # cost-only lines (amount 0): their costs are compared on their own
        g[(l.charge_id, l.kind, l.metric, l.dimension_key)][0] += l.quantity
        g[(l.charge_id, l.kind, l.metric, l.dimension_key)][1] += l.amount_micros
    return {k: tuple(v) for k, v in g.items() if v != [0, 0]}


PARTS = ("charges_micros", "commit_true_up_micros", "discount_micros", "tax_micros", "total_micros")


@settings(max_examples=200, deadline=None)
@given(doc=plan_docs(), data=st.data())
def test_sum_of_events_equals_batch_in_any_order(doc, data):
    plan = parse_plan(doc)
    events = data.draw(events_for(sorted(known_metrics(plan))))
    shuffled = data.draw(st.permutations(events))
    totals = totals_of(plan, events)
    wallet = data.draw(st.integers(0, 50_000_000))
    batch = run_batch(plan, totals)
    for order in (events, shuffled):
        steps, cum = [], {}
        for dims, m in order:
            ctx = run_event(plan, dims, m, cum, wallet_available_micros=wallet)
            # the costs carried in ctx.cumulative_after (Cumulatives) equal a re-pricing from scratch
            fresh = run_event(plan, dims, m, dict(cum), wallet_available_micros=wallet)
            assert (fresh.lines, fresh.subtotal_before_micros, fresh.total_micros, fresh.wallet_micros) == (
                ctx.lines, ctx.subtotal_before_micros, ctx.total_micros, ctx.wallet_micros)
            steps.append(ctx)
            cum = ctx.cumulative_after
        steps.append(run_close(plan, cum, wallet_available_micros=wallet))
        assert cum == totals
        for part in PARTS:
            assert sum(getattr(s, part) for s in steps) == getattr(batch, part), part
        assert sum(s.wallet_micros + s.invoice_micros for s in steps) == batch.total_micros
        # line by line: every charge, kind, metric and usage key adds up to its batch line
        assert grouped(l for s in steps for l in s.lines) == grouped(batch.lines)
        # costs: per metric, the events' costs add up to the batch's round(C(total)) per cost key
        assert costs_by_key(l for s in steps for l in s.lines) == costs_by_key(rate_period_costs(totals))
        assert all(l.cost_micros == 0 for s in steps for l in s.lines if l.metric is None)
        for s in steps:
            assert s.wallet_micros + s.invoice_micros == s.total_micros
            for l in s.lines:
                if l.tiers:
                    assert sum(t.amount_micros for t in l.tiers) == l.amount_micros
                    assert sum(t.quantity for t in l.tiers) == l.quantity
            if s.gross_after_micros >= s.gross_before_micros:  # no volume repricing in this step
                assert 0 <= s.discount_micros <= s.gross_after_micros - s.gross_before_micros
                assert s.total_micros >= 0
    assert batch.net_after_micros >= 0 and batch.total_micros >= 0
    assert batch.commit_true_up_micros == max(0, plan.minimum_commit_micros - batch.subtotal_after_micros)


small_tiers = tier_docs(max_bound=60).map(
    lambda ts: tuple(PriceTier(t["up_to"], Decimal(t["unit_price"]), Decimal(t.get("flat_fee", "0"))) for t in ts)
)


def tier_of(tiers, unit):
    return next(i for i, t in enumerate(tiers) if t.up_to is None or unit <= t.up_to)


@settings(max_examples=200, deadline=None)
@given(tiers=small_tiers, q=st.integers(0, 150))
def test_graduated_and_volume_match_their_definition_unit_by_unit(tiers, q):
    p = Pricing(tiers=tiers)
    entered = {tier_of(tiers, u) for u in range(1, q + 1)}
    by_unit = sum((tiers[tier_of(tiers, u)].unit_price for u in range(1, q + 1)), Decimal(0))
    assert graduated.amount(p, q) == by_unit + sum((tiers[i].flat_fee for i in entered), Decimal(0))
    t = tiers[tier_of(tiers, q)] if q else None
    assert volume.amount(p, q) == (q * t.unit_price + t.flat_fee if t else 0)


@settings(max_examples=200, deadline=None)
@given(tiers=small_tiers, cuts=st.lists(st.integers(0, 150), min_size=2, max_size=6))
def test_graduated_breakdown_pieces_add_up(tiers, cuts):
    p = Pricing(tiers=tiers)
    points = sorted(cuts)
    for a, b in zip(points, points[1:]):
        lines = graduated.breakdown(p, a, b)
        assert sum(l.quantity for l in lines) == b - a
        event = to_micros(graduated.amount(p, b)) - to_micros(graduated.amount(p, a))
        assert sum(l.amount_micros for l in lines) == event
        assert all(l.quantity > 0 for l in lines)


@settings(max_examples=300, deadline=None)
@given(doc=plan_docs(), qs=st.lists(st.integers(0, 4000), min_size=2, max_size=8))
def test_each_pricer_is_its_models_definition(doc, qs):
    """The per-event form (integer ratios) against the Decimal definition, at random points and at
    every tier bound and its neighbours: micros(q) and the tier sub-lines of (a, b]."""
    plan = parse_plan(doc)
    for c in plan.charges:
        if c.model not in USAGE_MODELS:
            continue
        module = USAGE_MODELS[c.model]
        for key in ["default", *(f"override{i}" for i in range(len(c.overrides)))]:
            p = pricing_for_key(c, key)
            pricer = module.pricer(p)
            bounds = [t.up_to for t in p.tiers if t.up_to is not None] + [p.included_units]
            points = sorted({0, *qs, *(b + d for b in bounds for d in (-1, 0, 1) if b + d >= 0)})
            for q in points:
                assert pricer.micros(q) == to_micros(module.amount(p, q)), (c.model, q)
            for a, b in zip(points, points[1:]):
                fa, fb = pricer.micros(a), pricer.micros(b)
                assert pricer.breakdown(a, b, fa, fb) == module.breakdown(p, a, b), (c.model, a, b)


def carried_units(plan):
    """Units carried into a period, for any key of the plan's included charges."""
    keys = [(c.id, k) for c in plan.charges if c.model == "included" for k in keys_of(c)]
    return st.dictionaries(st.sampled_from(keys), st.integers(0, 4000), max_size=len(keys)) if keys else st.just({})


@settings(max_examples=200, deadline=None)
@given(doc=plan_docs(), data=st.data())
def test_rollover_known_late_still_equals_batch_with_the_final_allowance(doc, data):
    """Events of P+1 in any order, some rated before the close of P made its carried units known
    (with the base quota, or an earlier value), the credit, the rest after: the batch of P+1 with
    the final carried units, part by part and line by line (the credit's lines count apart)."""
    plan = parse_plan(doc)
    events = data.draw(events_for(sorted(known_metrics(plan))))
    order = data.draw(st.permutations(events))
    cut = data.draw(st.integers(0, len(order)))
    before = data.draw(st.one_of(st.just({}), carried_units(plan)))
    final = data.draw(carried_units(plan))
    wallet = data.draw(st.integers(0, 50_000_000))
    batch = run_batch(plan, totals_of(plan, events), carried_in=final)

    steps, cum = [], {}
    for dims, m in order[:cut]:
        ctx = run_event(plan, dims, m, cum, wallet_available_micros=wallet, carried_in=before)
        steps.append(ctx)
        cum = ctx.cumulative_after
    credit = run_rollover(plan, cum, before, final, wallet_available_micros=wallet)
    assert credit.cumulative_after == cum and not credit.updates
    assert credit.commit_true_up_micros == 0
    assert all(l.kind in ("rollover", "percentage") for l in credit.lines)
    steps.append(credit)
    for dims, m in order[cut:]:
        ctx = run_event(plan, dims, m, cum, wallet_available_micros=wallet, carried_in=final)
        fresh = run_event(plan, dims, m, dict(cum), wallet_available_micros=wallet, carried_in=dict(final))
        assert (fresh.lines, fresh.subtotal_before_micros, fresh.total_micros) == (
            ctx.lines, ctx.subtotal_before_micros, ctx.total_micros)
        steps.append(ctx)
        cum = ctx.cumulative_after
    steps.append(run_close(plan, cum, wallet_available_micros=wallet, carried_in=final))
    for part in PARTS:
        assert sum(getattr(s, part) for s in steps) == getattr(batch, part), part
    assert sum(s.wallet_micros + s.invoice_micros for s in steps) == batch.total_micros
    # usage lines and the credit's lines, per key, add up to the batch's usage line of the key
    merged = defaultdict(int)
    for l in (l for s in steps for l in s.lines):
        merged[(l.charge_id, "usage" if l.kind == "rollover" else l.kind, l.metric, l.dimension_key)] += l.amount_micros
    assert {k: v for k, v in merged.items() if v} == {k: v[1] for k, v in grouped(batch.lines).items() if v[1]}
    if before == final:
        assert credit.total_micros == 0 and not credit.lines


@settings(max_examples=200, deadline=None)
@given(doc=plan_docs(), data=st.data())
def test_carried_out_follows_the_rule(doc, data):
    """min(max_units, included + carried in - used), clipped at 0, for every key of a rollover
    charge, used or not; nothing for charges without rollover."""
    plan = parse_plan(doc)
    totals = totals_of(plan, data.draw(events_for(sorted(known_metrics(plan)))))
    carried = data.draw(carried_units(plan))
    out = carried_out(plan, totals, carried)
    for c in plan.charges:
        if c.model != "included":
            continue
        for k in keys_of(c):
            key = (c.id, k)
            if c.rollover_max_units is None:
                assert key not in out
                continue
            allowance = pricing_for_key(c, k).included_units + carried.get(key, 0)
            assert out.get(key, 0) == min(c.rollover_max_units, max(0, allowance - totals.get(key, 0)))
