import asyncio

import orjson
import pytest
import yaml

from control.accounts import customers, plans
from control.errors import Conflict, InvalidInput, NotFound
from tests.control.conftest import SAMPLE_PLAN, plan_text, uid
from tollgate.keys import INVALIDATION_CHANNEL, CustomerKeys, plan_record
from tollgate.plans import load_plan_text


def test_sample_plan_loads_and_uses_every_feature():
    plan = load_plan_text(SAMPLE_PLAN.read_text())
    assert {c.model for c in plan.charges} == {"per_unit", "graduated", "volume", "included", "flat", "percentage", "composite"}
    assert [(t.name, t.threshold_micros, int(t.multiplier)) for t in plan.tiers] == [
        ("free", 0, 1), ("build", 5_000_000, 2), ("scale", 50_000_000, 10)]
    assert plan.charges[0].overrides and plan.spend_cap_micros and plan.minimum_commit_micros and plan.discounts
    assert plan.tax_percent == 0
    assert (plan.max_quantity("input_tokens"), plan.max_quantity("cache_read_tokens")) == (100_000_000, 400_000_000)


def test_rollover_is_read_from_an_included_charge():
    plan = load_plan_text(SAMPLE_PLAN.read_text().replace(
        "included_units: 1000\n", "included_units: 1000\n    rollover: {max_units: 500}\n"))
    assert plan.has_rollover and plan.charges[3].rollover_max_units == 500
    assert not load_plan_text(SAMPLE_PLAN.read_text()).has_rollover


def test_max_quantity_per_event_defaults_to_ten_to_the_eighth_for_every_metric():
    from tollgate.plans import DEFAULT_MAX_QUANTITY_PER_EVENT, parse_plan

    doc = yaml.safe_load(SAMPLE_PLAN.read_text())
    del doc["limits"]["max_quantity_per_event"]
    plan = parse_plan(doc)
    assert DEFAULT_MAX_QUANTITY_PER_EVENT == 10**8
    assert plan.max_quantity("input_tokens") == plan.max_quantity("anything") == 10**8


def test_the_hold_estimate_is_each_charges_highest_price_for_the_matching_override():
    """Plan.estimate_micros (precomputed per plan) against its definition, on the sample plan:
    every usage charge's pricing_for(dimensions).max_unit_price() times the estimate, ceiled."""
    import itertools
    from decimal import Decimal

    from tollgate.money import to_micros_ceil

    plan = load_plan_text(SAMPLE_PLAN.read_text())
    models = ("per_unit", "graduated", "volume", "included")
    metrics = sorted({c.metric for c in plan.charges if c.model in models})
    values = sorted({v for c in plan.charges for o in c.overrides for m in o.match.values() for v in (m, m + "x")})
    fields = sorted({f for c in plan.charges for o in c.overrides for f in o.match})
    assert values and fields  # the sample plan has overrides to match
    for dims in [{}, *({f: v} for f in fields for v in values)]:
        for n in itertools.product((0, 1, 999_999), repeat=len(metrics)):
            est = dict(zip(metrics, n))
            want = to_micros_ceil(sum((c.pricing_for(dims).max_unit_price() * est[c.metric]
                                       for c in plan.charges if c.model in models and c.metric in est), Decimal(0)))
            assert plan.estimate_micros(dims, est) == want, (dims, est)


async def test_apply_round_trip_and_versions(pg, redis):
    pid = uid("plan")
    text = plan_text(pid)
    first = await plans.apply_plan(pg, redis, text)
    assert first == {"id": pid, "name": "LLM Standard", "version": 1, "changed": True, "customers_reprojected": 0}

    got = await plans.get_plan(pg, pid)
    assert got["document"] == yaml.safe_load(text)
    assert got["tiers"] == ["free", "build", "scale"]
    assert orjson.loads(await redis.get(plan_record(pid))) == yaml.safe_load(text)

    again = await plans.apply_plan(pg, redis, text)  # same document: no new version
    assert (again["version"], again["changed"]) == (1, False)

    changed = await plans.apply_plan(pg, redis, plan_text(pid, {"requests_per_minute: 60": "requests_per_minute: 30"}))
    assert (changed["version"], changed["changed"]) == (2, True)
    assert await pg.fetchval("SELECT version FROM plans WHERE id = $1", pid) == 2
    stored = orjson.loads(await redis.get(plan_record(pid)))
    assert stored["limits"]["requests_per_minute"] == 30

    listed = {p["id"]: p for p in await plans.list_plans(pg)}
    assert listed[pid]["version"] == 2 and listed[pid]["customers"] == 0


async def test_the_anchor_day_of_a_plan_with_customers_cannot_change(pg, redis):
    pid = uid("plan")
    await plans.apply_plan(pg, redis, plan_text(pid))
    mid_month = plan_text(pid, {"anchor_day: 1 ": "anchor_day: 15 "})
    assert (await plans.apply_plan(pg, redis, mid_month))["version"] == 2  # no customers yet: allowed
    await customers.create_customer(pg, redis, name="Acme", plan_id=pid)

    with pytest.raises(Conflict) as e:
        await plans.apply_plan(pg, redis, plan_text(pid))  # back to 1
    assert e.value.status == 409 and e.value.field == "billing_period.anchor_day" and "1 customer(s)" in str(e.value)
    assert await pg.fetchval("SELECT version FROM plans WHERE id = $1", pid) == 2  # nothing written
    assert orjson.loads(await redis.get(plan_record(pid)))["billing_period"]["anchor_day"] == 15

    other = plan_text(pid, {"anchor_day: 1 ": "anchor_day: 15 ", "requests_per_minute: 60": "requests_per_minute: 30"})
    assert (await plans.apply_plan(pg, redis, other))["version"] == 3  # other changes still apply


async def test_customer_cfg_has_the_limits_of_every_tier(pg, redis, plan_id):
    c = await customers.create_customer(pg, redis, name="Acme", plan_id=plan_id)
    cfg = {k.decode(): v.decode() for k, v in (await redis.hgetall(CustomerKeys(c["id"]).cfg)).items()}
    assert cfg == {
        "plan": plan_id, "mode": "prepaid", "status": "active", "tier": "free",
        "tiers": '[["free",0],["build",5000000],["scale",50000000]]',
        "rpm.free": "60", "tpm.free": "100000", "cap.free": "200000000",
        "rpm.build": "120", "tpm.build": "200000", "cap.build": "400000000",
        "rpm.scale": "600", "tpm.scale": "1000000", "cap.scale": "2000000000",
    }


async def test_apply_reprojects_customers_and_keeps_a_live_promotion(pg, redis, plan_id):
    a = (await customers.create_customer(pg, redis, name="A", plan_id=plan_id))["id"]
    b = (await customers.create_customer(pg, redis, name="B", plan_id=plan_id))["id"]
    await redis.hset(CustomerKeys(b).cfg, "tier", "build")  # settle.lua promoted b

    pubsub = redis.pubsub()
    await pubsub.subscribe(INVALIDATION_CHANNEL)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    result = await plans.apply_plan(pg, redis, plan_text(plan_id, {"requests_per_minute: 60": "requests_per_minute: 30"}))
    assert result["customers_reprojected"] == 2

    assert await redis.hget(CustomerKeys(a).cfg, "rpm.free") == b"30"
    assert await redis.hget(CustomerKeys(b).cfg, "rpm.build") == b"60"
    assert await redis.hget(CustomerKeys(a).cfg, "tier") == b"free"
    assert await redis.hget(CustomerKeys(b).cfg, "tier") == b"build"

    seen = set()
    for _ in range(3):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        if msg:
            seen.add(msg["data"].decode())
    await pubsub.aclose()
    assert seen == {f"plan:{plan_id}", f"customer:{a}", f"customer:{b}"}


async def test_concurrent_applies_all_count(pg, redis):
    pid = uid("plan")
    texts = [plan_text(pid, {"requests_per_minute: 60": f"requests_per_minute: {n}"}) for n in range(10, 15)]
    await asyncio.gather(*(plans.apply_plan(pg, redis, t) for t in texts))
    assert await pg.fetchval("SELECT version FROM plans WHERE id = $1", pid) == 5


@pytest.mark.parametrize(("replace", "field"), [
    ({'unit_price: "0.000003"': "unit_price: 0.000003"}, "charges[0].unit_price"),
    ({"requests_per_minute: 60": "requests_per_minute: -1"}, "limits.requests_per_minute"),
    ({"default: 100000000 ": "default: 0 "}, "limits.max_quantity_per_event.default"),
    ({"cache_read_tokens: 400000000": "cache_read_tokens: 1000000000001"}, "limits.max_quantity_per_event.cache_read_tokens"),
    ({"cache_read_tokens: 400000000": "cache_read_tokens: many"}, "limits.max_quantity_per_event.cache_read_tokens"),
    ({"cache_read_tokens: 400000000": "cache read: 4"}, "limits.max_quantity_per_event"),
    ({"    default: 100000000 ": "    - 100000000 ", "    cache_read_tokens: 400000000": ""}, "limits.max_quantity_per_event"),
    ({'threshold: "5.00"': 'threshold: "0"'}, "tiers[1].threshold"),
    ({"base_charges: [input_tokens,": "base_charges: [nope,"}, "charges[5].base_charges[0]"),
    ({"model: graduated": "model: banded"}, "charges[1].model"),
    ({"billing_mode: prepaid ": "billing_mode: monthly "}, "billing_mode"),
    ({"\ntiers:": "\ntiers: &t", "\ncharges:": "\nagain: *t\ncharges:"}, "document"),
    ({"id: plan": "id: [plan"}, "document"),
    ({"included_units: 1000\n": "included_units: 1000\n    rollover: {max_units: 0}\n"}, "charges[3].rollover.max_units"),
    ({"included_units: 1000\n": "included_units: 1000\n    rollover: {max_units: \"5\"}\n"}, "charges[3].rollover.max_units"),
    ({"included_units: 1000\n": "included_units: 1000\n    rollover: {}\n"}, "charges[3].rollover.max_units"),
    ({"included_units: 1000\n": "included_units: 1000\n    rollover: 500\n"}, "charges[3].rollover"),
    ({"included_units: 1000\n": "included_units: 1000\n    rollover: {max_units: 5, every: 2}\n"},
     "charges[3].rollover.every"),
    ({"unit_price: \"0.000003\" ": "rollover: {max_units: 5}\n    unit_price: \"0.000003\" "}, "charges[0].rollover"),
    ({"included_units: 1000\n": "included_units: 1000\n    overrides: [{match: {model: x}, rollover: {max_units: 5}}]\n"},
     "charges[3].overrides[0].rollover"),
])
async def test_bad_plans_name_the_field_and_store_nothing(pg, redis, replace, field):
    pid = uid("plan")
    with pytest.raises(InvalidInput) as err:
        await plans.apply_plan(pg, redis, plan_text(pid, replace))
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    assert await pg.fetchval("SELECT count(*) FROM plans WHERE id = $1", pid) == 0
    assert await redis.exists(plan_record(pid)) == 0


async def test_plan_document_must_be_a_mapping(pg, redis):
    for doc in ("- a\n- b\n", "42", {"id": "x"}):
        with pytest.raises(InvalidInput) as err:
            await plans.apply_plan(pg, redis, doc)
        assert err.value.field in ("document", "tiers", "charges", "limits.requests_per_minute")


async def test_get_unknown_plan_is_not_found(pg):
    with pytest.raises(NotFound) as err:
        await plans.get_plan(pg, "no_such_plan")
    assert err.value.field == "plan_id" and err.value.status == 404
