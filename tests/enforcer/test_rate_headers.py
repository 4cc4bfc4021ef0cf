"""The rate-limit headers of /v1/check as clients read them: the IETF draft's RateLimit-Policy and
RateLimit parsed as RFC 9651 Structured Fields (http_sf, as a compliant client would), OpenAI's
x-ratelimit-*-{requests,tokens} with Go-style durations, and x-should-retry on every DENY that
waiting cannot cure."""
from __future__ import annotations

import http_sf
import pytest

from enforcer.rate_headers import go_duration, rate_headers
from tests.tenants import check_body, plan_doc, provision


@pytest.mark.parametrize("ms, text", [
    (0, "0s"), (-5, "0s"), (1, "1ms"), (20, "20ms"), (999, "999ms"), (1000, "1s"), (1500, "1.5s"),
    (1050, "1.05s"), (13_800, "13.8s"), (59_999, "59.999s"), (60_000, "1m0s"), (360_000, "6m0s"),
    (61_250, "1m1.25s"), (3_600_000, "1h0m0s"), (3_723_004, "1h2m3.004s"),
])
def test_durations_are_printed_as_go_and_openai_print_them(ms, text):
    assert go_duration(ms) == text.encode()


def parsed(headers: list[tuple[bytes, bytes]]) -> dict[str, dict]:
    h = dict(headers)
    policy = {name: params for name, params in http_sf.parse(h[b"ratelimit-policy"], tltype="list")}
    state = {name: params for name, params in http_sf.parse(h[b"ratelimit"], tltype="list")}
    return {"policy": policy, "state": state, "raw": {k.decode(): v.decode() for k, v in h.items()}}


def test_a_compliant_client_reads_a_tokens_quota_as_tokens_and_a_requests_quota_as_requests():
    p = parsed(rate_headers(600, 412, 17_350, 150_000, 98_765))
    # "requests" leaves the unit to the draft's default (requests); "tokens" says its own
    assert p["policy"] == {"requests": {"q": 600, "w": 60}, "tokens": {"q": 150_000, "qu": "tokens", "w": 60}}
    assert p["policy"]["requests"].get("qu", "requests") == "requests"
    # remaining and whole seconds until more quota (t is delay-seconds: rounded up)
    assert p["state"] == {"requests": {"r": 412, "t": 18}, "tokens": {"r": 98_765, "t": 21}}
    raw = p["raw"]
    assert (raw["x-ratelimit-limit"], raw["x-ratelimit-remaining"], raw["x-ratelimit-reset"]) == ("600", "412", "18")
    assert (raw["x-ratelimit-limit-requests"], raw["x-ratelimit-remaining-requests"],
            raw["x-ratelimit-reset-requests"]) == ("600", "412", "17.35s")
    # 51,235 tokens used of 150,000/min come back in 20.494 s
    assert (raw["x-ratelimit-limit-tokens"], raw["x-ratelimit-remaining-tokens"],
            raw["x-ratelimit-reset-tokens"]) == ("150000", "98765", "20.494s")


def test_full_and_empty_buckets():
    full = parsed(rate_headers(60, 60, 0, 1000, 1000))
    assert full["state"] == {"requests": {"r": 60, "t": 0}, "tokens": {"r": 1000, "t": 0}}
    assert full["raw"]["x-ratelimit-reset-requests"] == full["raw"]["x-ratelimit-reset-tokens"] == "0s"
    empty = parsed(rate_headers(60, 0, 60_000, 1000, 0))
    assert empty["state"] == {"requests": {"r": 0, "t": 60}, "tokens": {"r": 0, "t": 60}}
    assert empty["raw"]["x-ratelimit-reset-requests"] == empty["raw"]["x-ratelimit-reset-tokens"] == "1m0s"
    # a suspension or guard stops before the limits are read: zero limits, still well-formed
    none = parsed(rate_headers(0, 0, 0, 0, 0))
    assert none["policy"] == {"requests": {"q": 0, "w": 60}, "tokens": {"q": 0, "qu": "tokens", "w": 60}}


async def test_every_deny_waiting_cannot_cure_says_x_should_retry_false(enforcer, http, redis):
    url = f"{enforcer.url}/v1/check"
    broke = await provision(redis, wallet=0)
    suspended = await provision(redis)
    await redis.hset(suspended.keys.cfg, "status", "suspended")  # as `customer suspend` projects it
    guarded = await provision(redis)
    await redis.hset(guarded.keys.guard, f"key:{guarded.key_id}", "rule_margin_80")
    capped = await provision(redis, plan_doc(monthly_spend_cap="0.001"))
    for t, reason in ((broke, "insufficient_balance"), (suspended, "suspended"), (guarded, "margin_guard"),
                      (capped, "spend_cap")):
        r = await http.post(url, json=check_body(t))
        assert (r.status_code, r.json()["reason"]) == (429, reason), r.text
        assert r.headers["x-should-retry"] == "false" and "retry-after" not in r.headers, reason
        assert http_sf.parse(r.headers["ratelimit-policy"].encode(), tltype="list")  # well-formed on a DENY too
    # waiting helps a rate limit: no x-should-retry, a Retry-After instead
    limited = await provision(redis, requests_per_minute=1)
    assert (await http.post(url, json=check_body(limited))).status_code == 200
    r = await http.post(url, json=check_body(limited))
    assert r.json()["reason"] == "rate_limited_requests"
    assert "x-should-retry" not in r.headers and int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")
