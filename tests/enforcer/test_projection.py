"""The projection marker in the enforcer: a key Redis does not know is unknown (401) only when Redis
holds a complete projection; without the marker (Redis restarted empty, rebuild not done) the
enforcer fails open (`not_projected`) and accepts usage, never 401."""
from __future__ import annotations

import re

from tests.tenants import check_body, mark_projected, provision, stream_events, uid
from tollgate.keys import PROJECTION_MARKER, api_key_hash


def usage_body(api_key: str) -> dict:
    return {"event_id": uid("evt"), "api_key": api_key, "measurements": [{"metric": "input_tokens", "value": 7}]}


def not_projected_count(text: str) -> float:
    m = re.search(r'^tollgate_fail_open_total\{cause="not_projected"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_without_the_marker_a_key_redis_does_not_know_fails_open_instead_of_401(enforcer, redis, http):
    t = await provision(redis)
    stranger = "tg_test_" + uid("stranger")
    before = not_projected_count((await http.get(f"{enforcer.url}/metrics")).text)
    await redis.delete(PROJECTION_MARKER)

    # A key whose record is there (the control plane wrote it, or the rebuild already did) is decided.
    r = await http.post(f"{enforcer.url}/v1/check", json=check_body(t))
    assert r.status_code == 200 and r.json()["reason"] == "ok" and r.json()["hold_id"], r.text

    # A key Redis does not know: it may be a paying one whose record is not rebuilt yet.
    body = check_body(stranger)
    r = await http.post(f"{enforcer.url}/v1/check", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["reason"] == "fail_open" and r.headers["x-tollgate-degraded"] == "fail-open"
    u = await http.post(f"{enforcer.url}/v1/usage", json=(usage := usage_body(stranger)))
    assert u.status_code == 202, u.text
    assert not_projected_count((await http.get(f"{enforcer.url}/metrics")).text) == before + 1

    # Both are on the bus for the rater to resolve from PostgreSQL by the key's hash.
    events = {e["id"]: e for e in await stream_events(redis)}
    fo = events[f"fo_{body['request_id']}"]
    assert fo["kind"] == "fail_open" and fo["cause"] == "not_projected"
    assert fo["api_key_hash"] == api_key_hash(stranger) and "customer_id" not in fo
    ev = events[usage["event_id"]]
    assert ev["api_key_hash"] == api_key_hash(stranger) and "customer_id" not in ev

    # Projected again: the same key is unknown at once (nothing was negative-cached meanwhile).
    await mark_projected(redis)
    r = await http.post(f"{enforcer.url}/v1/check", json=check_body(stranger))
    assert r.status_code == 401 and r.json()["error"] == "invalid_api_key", r.text
    assert (await http.post(f"{enforcer.url}/v1/usage", json=usage_body(stranger))).status_code == 401


async def test_a_redis_emptied_under_a_cached_key_fails_open_never_401(enforcer, redis, http):
    t = await provision(redis)
    assert (await http.post(f"{enforcer.url}/v1/check", json=check_body(t))).json()["reason"] == "ok"
    await redis.flushall()  # what a Redis restarted without persistence looks like
    for _ in range(3):
        r = await http.post(f"{enforcer.url}/v1/check", json=check_body(t))
        assert r.status_code == 200 and r.json()["reason"] == "fail_open", r.text
        assert (await http.post(f"{enforcer.url}/v1/usage", json=usage_body(t.api_key))).status_code == 202
