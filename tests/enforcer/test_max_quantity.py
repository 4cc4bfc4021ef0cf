"""/v1/usage holds each measurement to its plan's `limits.max_quantity_per_event` (422 naming
`measurements[i].value`), and to the global ceiling when it cannot read the key's plan (Redis
down): the event the issue reported, 2**40 tokens, is never accepted."""
from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.servers import run_enforcer
from tests.tenants import DECISION_ENV, plan_doc, provision, stream_events, uid
from tollgate.local_services import start_redis
from tollgate.plans import DEFAULT_MAX_QUANTITY_PER_EVENT, MAX_QUANTITY_PER_EVENT_CEILING


def report(api_key: str, *measurements: tuple[str, int | float]) -> dict:
    return {"event_id": uid("evt"), "api_key": api_key,
            "measurements": [{"metric": m, "value": q} for m, q in measurements]}


async def _usage_on_bus(redis, t) -> list[dict]:
    return [e for e in await stream_events(redis, "usage") if e.get("customer_id") == t.customer_id]


def assert_too_large(r, field: str, *words: str) -> None:
    assert r.status_code == 422, r.text
    doc = r.json()
    assert (doc["error"], doc["field"]) == ("quantity_too_large", field)
    assert doc["message"].startswith(f"{field}: ") and all(w in doc["message"] for w in words), doc


async def test_the_default_maximum(enforcer, http, redis):
    t = await provision(redis)
    url = f"{enforcer.url}/v1/usage"
    r = await http.post(url, json=report(t.api_key, ("input_tokens", 2**40)))  # the event
    assert_too_large(r, "measurements[0].value", "max_quantity_per_event")
    r = await http.post(url, json=report(t.api_key, ("input_tokens", 10**9)))
    assert_too_large(r, "measurements[0].value", f"plan's maximum of {DEFAULT_MAX_QUANTITY_PER_EVENT} input_tokens")
    r = await http.post(url, json=report(t.api_key, ("input_tokens", 5), ("output_tokens", DEFAULT_MAX_QUANTITY_PER_EVENT + 1)))
    assert_too_large(r, "measurements[1].value", "output_tokens")
    assert await _usage_on_bus(redis, t) == []  # nothing refused reached the bus
    ok = report(t.api_key, ("input_tokens", DEFAULT_MAX_QUANTITY_PER_EVENT), ("output_tokens", 1))
    assert (await http.post(url, json=ok)).status_code == 202
    assert [e["id"] for e in await _usage_on_bus(redis, t)] == [ok["event_id"]]


async def test_beyond_the_ceiling_or_64_bits_is_422_before_the_key_is_looked_up(enforcer, http, redis):
    t = await provision(redis)
    url = f"{enforcer.url}/v1/usage"
    for value in (MAX_QUANTITY_PER_EVENT_CEILING + 1, 2**64, 1e30):
        r = await http.post(url, json=report("tg_unknown_key", ("input_tokens", value)))
        assert_too_large(r, "measurements[0].value", str(MAX_QUANTITY_PER_EVENT_CEILING))
    for value, why in ((2.5, "whole number"), (-1, "negative"), ("7", "whole number")):
        r = await http.post(url, json=report(t.api_key, ("input_tokens", value)))
        assert r.status_code == 400 and why in r.json()["message"], r.text


async def test_a_plan_sets_its_own_maximum_per_metric(enforcer, http, redis):
    doc = plan_doc(max_quantity_per_event={"default": 1000, "seconds": 10**10})
    t = await provision(redis, doc)
    url = f"{enforcer.url}/v1/usage"
    r = await http.post(url, json=report(t.api_key, ("input_tokens", 1001)))
    assert_too_large(r, "measurements[0].value", "maximum of 1000 input_tokens")
    assert (await http.post(url, json=report(t.api_key, ("input_tokens", 1000), ("seconds", 10**10)))).status_code == 202
    r = await http.post(url, json=report(t.api_key, ("seconds", 10**10 + 1)))
    assert_too_large(r, "measurements[0].value", "seconds")


async def test_with_redis_down_a_cached_plan_still_holds_and_an_unknown_one_gets_the_ceiling(http):
    own = start_redis()  # this test stops its Redis: not the session's
    client = aioredis.Redis.from_url(own.url)
    try:
        cached = await provision(client, plan_doc(max_quantity_per_event={"default": 1000}))
        unseen = await provision(client, plan_doc(max_quantity_per_event={"default": 1000}))
        with run_enforcer({"TOLLGATE_REDIS_URL": own.url, **DECISION_ENV, "TOLLGATE_CHECK_DEADLINE_MS": "50"}) as enf:
            url = f"{enf.url}/v1/usage"
            assert (await http.post(url, json=report(cached.api_key, ("input_tokens", 1)))).status_code == 202
            own.stop()
            # The key cache still knows `cached` and its plan: the plan's maximum holds.
            assert_too_large(await http.post(url, json=report(cached.api_key, ("input_tokens", 1001))),
                             "measurements[0].value", "maximum of 1000")
            # `unseen` cannot be resolved: the event goes on (spooled) held only to the ceiling;
            # the rater holds it to the plan (tests/rater/test_max_quantity.py).
            r = await http.post(url, json=report(unseen.api_key, ("input_tokens", MAX_QUANTITY_PER_EVENT_CEILING)))
            assert r.status_code == 202 and r.json()["spooled"] is True, r.text
            r = await http.post(url, json=report(unseen.api_key, ("input_tokens", MAX_QUANTITY_PER_EVENT_CEILING + 1)))
            assert_too_large(r, "measurements[0].value", "ceiling")
    finally:
        await client.aclose()
        own.stop()


values = st.one_of(
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(), st.text(max_size=12),
    st.sampled_from([DEFAULT_MAX_QUANTITY_PER_EVENT, DEFAULT_MAX_QUANTITY_PER_EVENT + 1, MAX_QUANTITY_PER_EVENT_CEILING,
                     MAX_QUANTITY_PER_EVENT_CEILING + 1, 2**40, 2**63, 2**64, 10**30, 1e12, 1e13]),
    st.integers(0, 3 * DEFAULT_MAX_QUANTITY_PER_EVENT),
)


@pytest.fixture(scope="module")
def tenant_box():
    return {}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values)
async def test_any_measurement_value_is_202_or_a_4xx_naming_it(enforcer, http, redis, tenant_box, value):
    if "t" not in tenant_box or not await redis.exists(f"tg:key:{tenant_box['t'].key_hash}"):
        tenant_box["t"] = await provision(redis)
    doc = report(tenant_box["t"].api_key, ("input_tokens", value))
    # stdlib json: it writes integers of any size, as a client may
    r = await http.post(f"{enforcer.url}/v1/usage", content=json.dumps(doc), headers={"content-type": "application/json"})
    count = isinstance(value, int) and not isinstance(value, bool)
    if count and 0 <= value <= DEFAULT_MAX_QUANTITY_PER_EVENT:
        assert r.status_code == 202, (value, r.text)
    elif count and value > DEFAULT_MAX_QUANTITY_PER_EVENT:
        assert_too_large(r, "measurements[0].value")
    elif isinstance(value, float) and value.is_integer() and value > MAX_QUANTITY_PER_EVENT_CEILING:
        assert_too_large(r, "measurements[0].value")  # an integer past 64 bits reads as a float
    else:  # negative, fractional or a float literal (counts are integers), not a number
        assert r.status_code == 400 and r.json()["field"] == "measurements[0].value", (value, r.text)
