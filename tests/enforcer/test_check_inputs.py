"""Property: whatever a client puts in a /v1/check body, the real enforcer decides it against Redis
(200/429, not degraded) or refuses it with a 400 naming the field; never a 500, and never the
ALLOW `fail_open` that an exception inside the decision turns into (input must not open the gate).
"""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.tenants import plan_doc, provision

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)
metrics = st.sampled_from(["requests", "input_tokens", "output_tokens", "cache_read_tokens"]) | st.text(max_size=70)
counts = st.integers(-5, 2**41) | st.sampled_from([0, 1, 2**40, 2**40 + 1, 2**63, 2**64, 2**70]) | json_values
bodies = st.fixed_dictionaries(
    {},
    optional={
        "request_id": st.text(max_size=140) | json_values,
        "dimensions": st.dictionaries(st.text(max_size=20), scalars, max_size=5) | json_values,
        "estimate": st.dictionaries(metrics, counts, max_size=5) | json_values,
        "extra": json_values,
    },
)


@pytest.fixture(scope="module")
def tenant_box():
    return {}


async def _tenant(redis, box):
    if "t" not in box or not await redis.exists(f"tg:key:{box['t'].key_hash}"):
        doc = plan_doc()
        doc["charges"][0]["overrides"] = [{"match": {"model": "1.5"}, "unit_price": "0.5"}]
        box["t"] = await provision(redis, doc, wallet=10**15)
    return box["t"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, with_key=st.booleans())
@example(body={"request_id": "r1", "estimate": {"input_tokens": 2**40}, "dimensions": {"model": 1.5}}, with_key=True)
@example(body={"request_id": "r1", "dimensions": {"model": 10**30}}, with_key=True)
async def test_any_check_body_is_decided_or_refused_naming_the_field(enforcer, http, redis, tenant_box, body, with_key):
    t = await _tenant(redis, tenant_box)
    body = {**body, "api_key": t.api_key} if with_key else body
    # stdlib json: it writes integers of any size, as a client may
    r = await http.post(f"{enforcer.url}/v1/check", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code < 500, (body, r.status_code, r.text)
    if r.status_code in (200, 429):
        assert "x-tollgate-degraded" not in r.headers, (body, r.text)
    else:
        doc = r.json()
        assert (r.status_code, doc["error"]) == (400, "invalid_field"), (body, doc)
        assert doc["field"].split(".")[0] in ("api_key", "request_id", "dimensions", "estimate"), doc
