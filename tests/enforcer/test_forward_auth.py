"""GET /v1/check: the check as forward-auth proxies send it (headers, no body), against a real
enforcer: the same decision and answer as POST, and a 400 naming the header that is missing or bad."""
from __future__ import annotations

import asyncio

import pytest

from tests.tenants import plan_doc, provision, stream_events, uid


async def decision_of(redis, request_id: str) -> dict:
    for _ in range(100):
        found = [e for e in await stream_events(redis, "decision") if e["request_id"] == request_id]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no decision for {request_id}")


async def test_headers_carry_the_check(enforcer, http, redis):
    t = await provision(redis, plan_doc(requests_per_minute=2, tokens_per_minute=100_000))
    rid = uid("req")
    r = await http.get(f"{enforcer.url}/v1/check", headers={
        "Authorization": f"Bearer {t.api_key}", "X-Request-Id": rid, "X-Tollgate-Model": "big",
        "X-Tollgate-Content-Length": "4001", "X-Tollgate-Estimate-Output-Tokens": "24",
        "X-Forwarded-Uri": "/v1/chat/completions"})
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == "ALLOW" and r.headers["x-tollgate-hold-id"] == r.json()["hold_id"]
    assert r.headers["x-ratelimit-remaining-tokens"] == str(100_000 - 1001 - 24)
    d = await decision_of(redis, rid)
    assert d["dimensions"] == {"model": "big"}
    assert d["estimate"] == {"requests": 1, "input_tokens": 1001, "output_tokens": 24}
    # X-Api-Key first, an explicit input estimate over the body's size; the same id is a replay
    headers = {"X-Api-Key": t.api_key, "Authorization": "Bearer other", "X-Tollgate-Request-Id": rid,
               "X-Tollgate-Estimate-Input-Tokens": "5", "X-Tollgate-Content-Length": "99999"}
    again = await http.get(f"{enforcer.url}/v1/check", headers=headers)
    assert again.status_code == 200 and again.headers["x-tollgate-replayed"] == "true"
    second = await http.get(f"{enforcer.url}/v1/check", headers={**headers, "X-Tollgate-Request-Id": uid("req")})
    denied = await http.get(f"{enforcer.url}/v1/check", headers={**headers, "X-Tollgate-Request-Id": uid("req")})
    assert second.status_code == 200 and denied.status_code == 429
    assert denied.json()["reason"] == "rate_limited_requests" and int(denied.headers["retry-after"]) >= 1
    unknown = await http.get(f"{enforcer.url}/v1/check", headers={"X-Api-Key": "tg_nobody", "X-Request-Id": "r1"})
    assert unknown.status_code == 401


@pytest.mark.parametrize("headers, field", [
    ({"X-Request-Id": "r1"}, "X-Api-Key"),
    ({"Authorization": "Basic abc", "X-Request-Id": "r1"}, "X-Api-Key"),
    ({"X-Api-Key": "k"}, "X-Tollgate-Request-Id"),
    ({"X-Api-Key": "k", "X-Request-Id": "has space"}, "X-Request-Id"),
    ({"X-Api-Key": "k", "X-Request-Id": "r1", "X-Tollgate-Estimate-Output-Tokens": "-1"},
     "X-Tollgate-Estimate-Output-Tokens"),
    ({"X-Api-Key": "k", "X-Request-Id": "r1", "X-Tollgate-Estimate-Input-Tokens": "9" * 40},
     "X-Tollgate-Estimate-Input-Tokens"),
    ({"X-Api-Key": "k", "X-Request-Id": "r1", "X-Tollgate-Content-Length": "1.5"}, "X-Tollgate-Content-Length"),
    ({"X-Api-Key": "k", "X-Request-Id": "r1", "X-Tollgate-Session-Id": "bad id!"}, "X-Tollgate-Session-Id"),
])
async def test_a_missing_or_bad_header_is_a_400_naming_it(enforcer, http, redis, headers, field):
    r = await http.get(f"{enforcer.url}/v1/check", headers=headers)
    assert (r.status_code, r.json()["field"]) == (400, field), r.text
