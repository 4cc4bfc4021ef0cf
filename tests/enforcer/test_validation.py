"""Bad input gets a 4xx naming the problem, never a 500, and never consumes quota."""
from __future__ import annotations

import orjson
import pytest

from tests.tenants import check_body, provision, stream_events

JSON = {"content-type": "application/json"}


def _usage(key: str, **over) -> dict:
    doc = {"event_id": "evt_1", "api_key": key, "timestamp": "2026-11-21T10:00:00Z",
           "measurements": [{"metric": "input_tokens", "value": 10}]}
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not ...}


CHECK_CASES = [
    # (name, body bytes or a function of the tenant's key, status, error, field)
    ("malformed json", lambda k: b'{"api_key": ', 400, "invalid_json", None),
    ("not an object", lambda k: b"[1, 2]", 400, "invalid_json", None),
    ("missing api_key", lambda k: {"request_id": "r1"}, 400, "invalid_field", "api_key"),
    ("api_key not a string", lambda k: {"api_key": 42, "request_id": "r1"}, 400, "invalid_field", "api_key"),
    ("missing request_id", lambda k: {"api_key": k}, 400, "invalid_field", "request_id"),
    ("request_id with spaces", lambda k: {"api_key": k, "request_id": "a b"}, 400, "invalid_field", "request_id"),
    ("negative estimate", lambda k: {**check_body(k, input_tokens=-5)}, 400, "invalid_field", "estimate.input_tokens"),
    ("non-numeric estimate", lambda k: {**check_body(k, input_tokens="many")}, 400, "invalid_field", "estimate.input_tokens"),
    ("numeric string estimate", lambda k: {**check_body(k, output_tokens="100")}, 400, "invalid_field", "estimate.output_tokens"),
    ("fractional estimate", lambda k: {**check_body(k, requests=1.5)}, 400, "invalid_field", "estimate.requests"),
    ("boolean estimate", lambda k: {**check_body(k, requests=True)}, 400, "invalid_field", "estimate.requests"),
    ("estimate over 2**40", lambda k: {**check_body(k, input_tokens=2**41)}, 400, "invalid_field", "estimate.input_tokens"),
    ("estimate over 64 bits", lambda k: orjson.dumps(check_body(k, input_tokens=7)).replace(b":7", b":" + b"9" * 30),
     400, "invalid_field", "estimate.input_tokens"),
    ("estimate not an object", lambda k: {**check_body(k), "estimate": [1]}, 400, "invalid_field", "estimate"),
    ("dimensions not an object", lambda k: {**check_body(k), "dimensions": "gpt"}, 400, "invalid_field", "dimensions"),
    ("nested dimension", lambda k: {**check_body(k), "dimensions": {"model": {"a": 1}}}, 400, "invalid_field", "dimensions.model"),
    ("body over 64 KiB", lambda k: {**check_body(k), "dimensions": {"pad": "x" * 70_000}}, 413, "body_too_large", None),
]


@pytest.mark.parametrize("name,make,status,error,field", CHECK_CASES, ids=[c[0] for c in CHECK_CASES])
async def test_bad_checks_are_refused(enforcer, http, redis, name, make, status, error, field):
    t = await provision(redis)
    body = make(t.api_key)
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    r = await http.post(f"{enforcer.url}/v1/check", content=content, headers=JSON)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"] == error
    if field:
        assert r.json()["field"] == field and field in r.json()["message"]
    await _assert_nothing_consumed(redis, t)


async def test_wrong_or_missing_content_type_is_415(enforcer, http, redis):
    t = await provision(redis)
    content = orjson.dumps(check_body(t))
    for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {}):
        r = await http.post(f"{enforcer.url}/v1/check", content=content, headers=headers)
        assert r.status_code == 415, (headers, r.text)
        assert r.json()["error"] == "unsupported_media_type"
    ok = await http.post(f"{enforcer.url}/v1/check", content=content, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200
    assert await redis.hlen(t.keys.holds) == 1


async def test_an_oversized_body_is_413_even_without_content_length(enforcer, http, redis):
    t = await provision(redis)

    async def chunks():
        yield b'{"api_key": "' + t.api_key.encode() + b'", "request_id": "r1", "dimensions": {"pad": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}}'

    r = await http.post(f"{enforcer.url}/v1/check", content=chunks(), headers=JSON)  # chunked transfer
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    await _assert_nothing_consumed(redis, t)


async def test_wrong_method_and_path(enforcer, http):
    r = await http.put(f"{enforcer.url}/v1/check")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed" and r.headers["allow"] == "GET, POST"
    r = await http.get(f"{enforcer.url}/v1/check")  # the forward-auth form: its fields in headers
    assert (r.status_code, r.json()["field"]) == (400, "X-Api-Key")
    r = await http.post(f"{enforcer.url}/v1/nothing", json={})
    assert r.status_code == 404 and r.json()["error"] == "not_found"


USAGE_CASES = [
    ("missing event_id", dict(event_id=...), "event_id"),
    ("event_id not a string", dict(event_id=7), "event_id"),
    ("missing api_key", dict(api_key=...), "api_key"),
    ("missing measurements", dict(measurements=...), "measurements"),
    ("empty measurements", dict(measurements=[]), "measurements"),
    ("negative value", dict(measurements=[{"metric": "input_tokens", "value": -1}]), "measurements[0].value"),
    ("non-numeric value", dict(measurements=[{"metric": "input_tokens", "value": "ten"}]), "measurements[0].value"),
    ("missing value", dict(measurements=[{"metric": "input_tokens"}]), "measurements[0].value"),
    ("bad metric", dict(measurements=[{"metric": "", "value": 1}]), "measurements[0].metric"),
    ("metric twice", dict(measurements=[{"metric": "a", "value": 1}, {"metric": "a", "value": 2}]), "measurements[1].metric"),
    ("bad timestamp", dict(timestamp="yesterday"), "timestamp"),
    ("timestamp without offset", dict(timestamp="2026-11-21T10:00:00"), "timestamp"),
    ("timestamp before year 1 in UTC", dict(timestamp="0001-01-01T00:00:00+01:00"), "timestamp"),
    ("timestamp after year 9999 in UTC", dict(timestamp="9999-12-31T23:59:59-01:00"), "timestamp"),
    ("timestamp not RFC 3339", dict(timestamp="2026-11-21T10:00:00+0100"), "timestamp"),
    ("timestamp a number", dict(timestamp=1700000000), "timestamp"),
    ("properties not an object", dict(properties=["x"]), "properties"),
]


@pytest.mark.parametrize("name,over,field", USAGE_CASES, ids=[c[0] for c in USAGE_CASES])
async def test_bad_usage_reports_are_refused(enforcer, http, redis, name, over, field):
    t = await provision(redis)
    r = await http.post(f"{enforcer.url}/v1/usage", json=_usage(t.api_key, **over))
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_field" and r.json()["field"] == field
    assert [e for e in await stream_events(redis, "usage") if e.get("customer_id") == t.customer_id] == []


async def test_bad_usage_transport(enforcer, http, redis):
    t = await provision(redis)
    r = await http.post(f"{enforcer.url}/v1/usage", content=b"{nope", headers=JSON)
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    r = await http.post(f"{enforcer.url}/v1/usage", content=orjson.dumps(_usage(t.api_key)), headers={"content-type": "text/csv"})
    assert r.status_code == 415
    big = _usage(t.api_key, properties={"pad": "x" * 70_000})
    r = await http.post(f"{enforcer.url}/v1/usage", json=big)
    assert r.status_code == 413


async def _assert_nothing_consumed(redis, t) -> None:
    k = t.keys
    assert await redis.exists(k.held, k.holds, *(k.rate_requests(t.key_id), k.rate_tokens(t.key_id))) == 0
