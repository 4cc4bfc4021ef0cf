"""The Kong plugin, run in real nginx + lua-nginx-module through the PDK shim, in front of a real
upstream and the real enforcer (and, for the failure cases, sidecars that are down, hung, or
answer garbage)."""
from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.gateways.conftest import failed, provision, wait_event, wait_usage
from tests.gateways.harness import (
    ANTHROPIC_USAGE,
    OPENAI_USAGE,
    GarbageServer,
    Nginx,
    RecordingSidecar,
    dead_url,
    kong_http_body,
    kong_location,
)
from tests.servers import HungServer
from tests.tenants import stream_events

HUNG_TIMEOUT_MS = 50
USAGE_DELAY_S = 1.5


# instances behind the shim's stand-in for key-auth (header `apikey`, hidden from the upstream)
KEY_AUTH = {"credential"}
# instances behind the shim's stand-in for any other auth plugin (JWT, OIDC, basic-auth...)
CONSUMER_AUTH = {"customid"}


def location(name: str, upstream_url: str) -> str:
    return kong_location(name, upstream_url, "apikey" if name in KEY_AUTH else None,
                         consumer_auth=name in CONSUMER_AUTH)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, enforcer, upstream):
    prefix = tmp_path_factory.mktemp("kong")
    hung, garbage = HungServer().start(), GarbageServer().start()
    slow = RecordingSidecar(enforcer.url, usage_delay=USAGE_DELAY_S)  # the report must not delay the client
    recording = RecordingSidecar(enforcer.url)
    configs = {
        "ok": {"sidecar_url": enforcer.url, "timeout_ms": 2000, "default_model": "claude-sonnet-4-6"},
        "bearer": {"sidecar_url": enforcer.url, "timeout_ms": 2000, "api_key_header": "Authorization"},
        "hidden": {"sidecar_url": enforcer.url, "timeout_ms": 2000, "hide_client_headers": True},
        "credential": {"sidecar_url": enforcer.url, "timeout_ms": 2000, "api_key_source": "credential"},
        "customid": {"sidecar_url": enforcer.url, "timeout_ms": 2000, "api_key_source": "consumer_custom_id"},
        "down": {"sidecar_url": dead_url()},
        "hung": {"sidecar_url": hung.url, "timeout_ms": HUNG_TIMEOUT_MS},
        "garbage": {"sidecar_url": garbage.url},
        "strict": {"sidecar_url": dead_url(), "fault_tolerant": False},
        "slowusage": {"sidecar_url": slow.url, "timeout_ms": 2000, "usage_timeout_ms": 5000},
        # one plain report per request: it carries that request's trace context
        "recorded": {"sidecar_url": recording.url, "timeout_ms": 2000, "usage_batch_size": 1},
    }
    http_body = kong_http_body(prefix, configs, "".join(location(name, upstream.url) for name in configs))
    nginx = Nginx(prefix, http_body, lua=True).start()
    nginx.recording = recording
    yield nginx
    nginx.stop()
    for s in (hung, garbage, slow, recording):
        s.stop()


@pytest.fixture
def kong(gateway, request):
    yield gateway
    if failed(request):
        print(f"--- nginx error.log ---\n{gateway.log()[-20000:]}")


def chat(t_or_key, max_tokens: int = 50, **extra) -> dict:
    key = t_or_key if isinstance(t_or_key, str) else t_or_key.api_key
    return {"headers": {"x-api-key": key, **extra.pop("headers", {})},
            "json": {"model": "gpt-4o", "max_tokens": max_tokens,
                     "messages": [{"role": "user", "content": "Say hi"}], **extra}}


def last_upstream(upstream, suffix: str) -> dict:
    got = upstream.received(suffix)
    assert got, f"the upstream never got {suffix}"
    return got[-1]


async def test_allow_forwards_with_rate_limit_headers_and_reports_usage(kong, upstream, redis):
    t = await provision(redis)
    before = len(upstream.received())
    r = httpx.post(f"{kong.url}/ok/v1/chat/completions", **chat(t, 50))
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == OPENAI_USAGE  # the upstream's answer, untouched
    # the check's rate-limit headers reached the client, Kong style too
    assert r.headers["X-RateLimit-Limit"] == "100000"
    assert 99_990 <= int(r.headers["X-RateLimit-Remaining"]) < 100_000
    assert r.headers["RateLimit-Limit"] == "100000"
    assert r.headers["RateLimit-Remaining"] == r.headers["X-RateLimit-Remaining"]
    assert "requests" in r.headers["RateLimit-Policy"]
    assert r.headers["X-Tollgate-Reason"] == "ok"
    assert "X-Tollgate-Degraded" not in r.headers

    assert len(upstream.received()) == before + 1
    seen = last_upstream(upstream, "/v1/chat/completions")
    hold_id, request_id = seen["headers"]["x-tollgate-hold-id"], seen["headers"]["x-tollgate-request-id"]
    assert hold_id.startswith("hold_") and request_id.startswith("kong_")
    assert await redis.hget(t.keys.holds, hold_id) is not None  # the check placed that hold

    usage = await wait_usage(redis, request_id)
    assert usage["hold_id"] == hold_id
    assert usage["id"] == f"evt_{request_id}"
    assert usage["customer_id"] == t.customer_id and usage["key_id"] == t.key_id
    assert usage["event_type"] == "llm.completion"
    assert usage["properties"]["model"] == "gpt-4o"
    assert usage["properties"]["usage_source"] == "response"
    cached = OPENAI_USAGE["prompt_tokens_details"]["cached_tokens"]
    assert usage["measurements"] == [
        {"metric": "input_tokens", "value": OPENAI_USAGE["prompt_tokens"] - cached},
        {"metric": "output_tokens", "value": OPENAI_USAGE["completion_tokens"]},
        {"metric": "cache_read_tokens", "value": cached},
    ]


async def test_the_estimate_sent_is_taken_from_the_request(kong, upstream, redis):
    # tpm 200: a request of ~85 bytes (~22 input tokens) and max_tokens 100 passes, a second
    # one does not fit, one with max_tokens 1 still does
    t = await provision(redis, tokens_per_minute=200)
    ok = httpx.post(f"{kong.url}/ok/v1/chat/completions", **chat(t, 100))
    assert ok.status_code == 200, ok.text
    denied = httpx.post(f"{kong.url}/ok/v1/chat/completions", **chat(t, 100))
    assert denied.status_code == 429
    assert denied.json()["error"]["tollgate_reason"] == "rate_limited_tokens"
    assert denied.json()["error"]["type"] == "tokens"
    small = httpx.post(f"{kong.url}/ok/v1/chat/completions", **chat(t, 1))
    assert small.status_code == 200, small.text


async def test_deny_rate_limited_answers_429_with_retry_after(kong, upstream, redis):
    t = await provision(redis, requests_per_minute=1)
    first = httpx.post(f"{kong.url}/ok/v1/chat/completions", **chat(t))
    assert first.status_code == 200, first.text
    n = len(upstream.received())
    r = httpx.post(f"{kong.url}/ok/v1/chat/completions", **chat(t))
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert r.headers["Content-Type"].startswith("application/json")
    error = r.json()["error"]  # OpenAI's shape (gateway_plugins/openai_errors.json)
    assert error["tollgate_reason"] == "rate_limited_requests" and error["tollgate_level"] == "key"
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
    assert "x-should-retry" not in r.headers
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert r.headers["RateLimit-Remaining"] == "0"
    assert len(upstream.received()) == n  # never reached the upstream


async def test_deny_insufficient_balance(kong, upstream, redis):
    t = await provision(redis, wallet=0)
    n = len(upstream.received())
    r = httpx.post(f"{kong.url}/ok/v1/chat/completions", **chat(t))
    assert r.status_code == 402, r.text  # OpenAI's status for money
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert error["tollgate_reason"] == "insufficient_balance" and error["tollgate_level"] == "customer"
    # waiting does not refill a wallet: no Retry-After, and OpenAI's SDKs are told not to retry
    assert "Retry-After" not in r.headers
    assert r.headers["x-should-retry"] == "false"
    assert len(upstream.received()) == n


async def test_identity_from_the_key_auth_credential(kong, upstream, redis):
    """api_key_source=credential: the key key-auth authenticated is the tollgate key, even with the
    header hidden from everything after key-auth; a tollgate key in the plugin's own header is ignored."""
    t, other = await provision(redis, requests_per_minute=1), await provision(redis)
    r = httpx.post(f"{kong.url}/credential/v1/chat/completions",
                   **chat(other, headers={"apikey": t.api_key}))  # x-api-key names another tenant
    assert r.status_code == 200, r.text
    sent = last_upstream(upstream, "/v1/chat/completions")["headers"]
    assert "apikey" not in sent  # hide_credentials
    usage = await wait_usage(redis, sent["x-tollgate-request-id"])
    assert usage["customer_id"] == t.customer_id  # billed to the authenticated consumer's key
    assert r.headers["X-RateLimit-Limit"] == "1"  # t's limits, not other's
    denied = httpx.post(f"{kong.url}/credential/v1/chat/completions", **chat(other, headers={"apikey": t.api_key}))
    assert denied.status_code == 429 and denied.json()["error"]["tollgate_reason"] == "rate_limited_requests"
    anonymous = httpx.post(f"{kong.url}/credential/v1/chat/completions", **chat(other))
    assert anonymous.status_code == 401, anonymous.text  # no credential: no fallback to the header
    assert anonymous.json()["error"]["code"] == "missing_api_key"


async def test_identity_from_the_authenticated_consumers_custom_id(kong, upstream, redis):
    """api_key_source=consumer_custom_id: whatever auth plugin authenticated the consumer, its
    custom_id is the tollgate key; a tollgate key in the plugin's own header is ignored."""
    t, other = await provision(redis, requests_per_minute=1), await provision(redis)
    consumer = {"x-test-consumer": "alice", "x-test-custom-id": t.api_key}
    r = httpx.post(f"{kong.url}/customid/v1/chat/completions", **chat(other, headers=consumer))
    assert r.status_code == 200, r.text
    assert r.headers["X-RateLimit-Limit"] == "1"  # t's limits, not other's
    sent = last_upstream(upstream, "/v1/chat/completions")["headers"]
    usage = await wait_usage(redis, sent["x-tollgate-request-id"])
    assert usage["customer_id"] == t.customer_id  # billed to the consumer's custom_id
    denied = httpx.post(f"{kong.url}/customid/v1/chat/completions", **chat(other, headers=consumer))
    assert denied.status_code == 429 and denied.json()["error"]["tollgate_reason"] == "rate_limited_requests"
    n = len(upstream.received())
    for headers in ({"x-test-consumer": "bob"}, {}):  # a consumer without custom_id; no consumer
        r = httpx.post(f"{kong.url}/customid/v1/chat/completions", **chat(other, headers=headers))
        assert r.status_code == 401, r.text  # no fallback to the header
        assert r.json()["error"] == {"message": "No API key found in request", "type": "invalid_request_error",
                                     "param": None, "code": "missing_api_key", "tollgate_reason": "missing_api_key"}
    assert len(upstream.received()) == n


async def test_unknown_and_missing_keys_get_401(kong, upstream, redis):
    n = len(upstream.received())
    r = httpx.post(f"{kong.url}/ok/v1/chat/completions", **chat("tg_live_nobody"))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(f"{kong.url}/ok/v1/chat/completions", json={"model": "m"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_api_key"
    assert len(upstream.received()) == n


async def test_authorization_bearer_key_and_forged_headers_are_stripped(kong, upstream, redis):
    t = await provision(redis)
    r = httpx.post(f"{kong.url}/bearer/v1/messages",
                   headers={"Authorization": f"Bearer {t.api_key}", "X-Tollgate-Hold-Id": "forged",
                            "X-Tollgate-Degraded": "fail-open"},
                   json={"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": []})
    assert r.status_code == 200, r.text
    seen = last_upstream(upstream, "/v1/messages")
    assert seen["headers"]["x-tollgate-hold-id"].startswith("hold_")
    assert "x-tollgate-degraded" not in seen["headers"]
    usage = await wait_usage(redis, seen["headers"]["x-tollgate-request-id"])
    assert {m["metric"]: m["value"] for m in usage["measurements"]} == {
        "input_tokens": ANTHROPIC_USAGE["input_tokens"], "output_tokens": ANTHROPIC_USAGE["output_tokens"],
        "cache_read_tokens": ANTHROPIC_USAGE["cache_read_input_tokens"]}


async def test_usage_of_a_stream_comes_from_its_events(kong, upstream, redis):
    t = await provision(redis)
    with httpx.stream("POST", f"{kong.url}/ok/v1/messages", headers={"x-api-key": t.api_key},
                      json={"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True, "messages": []}) as r:
        assert r.status_code == 200
        text = r.read().decode()
    assert "message_stop" in text
    seen = last_upstream(upstream, "/v1/messages")
    usage = await wait_usage(redis, seen["headers"]["x-tollgate-request-id"])
    assert usage["properties"]["request_type"] == "stream"
    assert {m["metric"]: m["value"] for m in usage["measurements"]} == {
        "input_tokens": ANTHROPIC_USAGE["input_tokens"], "output_tokens": ANTHROPIC_USAGE["output_tokens"]}


async def test_response_without_usage_releases_the_hold_with_zero_tokens(kong, upstream, redis):
    t = await provision(redis)
    r = httpx.post(f"{kong.url}/ok/fail", **chat(t))
    assert r.status_code == 503  # the upstream's own error reaches the client
    seen = last_upstream(upstream, "/fail")
    usage = await wait_usage(redis, seen["headers"]["x-tollgate-request-id"])
    assert usage["hold_id"] == seen["headers"]["x-tollgate-hold-id"]
    assert usage["properties"]["status"] == "503"
    assert usage["properties"]["usage_source"] == "none"
    assert all(m["value"] == 0 for m in usage["measurements"])


async def test_hide_client_headers(kong, redis):
    t = await provision(redis)
    r = httpx.post(f"{kong.url}/hidden/v1/chat/completions", **chat(t))
    assert r.status_code == 200
    assert not [h for h in r.headers if "ratelimit" in h.lower() or h.lower().startswith("x-tollgate")]


async def test_usage_report_does_not_delay_the_client(kong, upstream, redis):
    t = await provision(redis)
    t0 = time.monotonic()
    r = httpx.post(f"{kong.url}/slowusage/v1/chat/completions", **chat(t))
    elapsed = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert elapsed < USAGE_DELAY_S / 2, f"the client waited {elapsed:.3f} s for the usage report"
    seen = last_upstream(upstream, "/v1/chat/completions")
    usage = await wait_usage(redis, seen["headers"]["x-tollgate-request-id"], timeout=USAGE_DELAY_S + 5)
    assert usage["hold_id"] == seen["headers"]["x-tollgate-hold-id"]


def _assert_failed_open(r, upstream, suffix="/v1/chat/completions"):
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == OPENAI_USAGE
    assert r.headers["X-Tollgate-Degraded"] == "fail-open"
    seen = last_upstream(upstream, suffix)
    assert seen["headers"]["x-tollgate-degraded"] == "fail-open"
    assert "x-tollgate-hold-id" not in seen["headers"]


async def test_sidecar_down_fails_open(kong, upstream, redis):
    t = await provision(redis)
    t0 = time.monotonic()
    r = httpx.post(f"{kong.url}/down/v1/chat/completions", **chat(t))
    elapsed = time.monotonic() - t0
    _assert_failed_open(r, upstream)
    assert elapsed < 1.0
    assert "tollgate check failed (sidecar), letting the request through: connect" in kong.log()


async def test_sidecar_hung_fails_open_within_the_timeout(kong, upstream, redis):
    t = await provision(redis)
    for _ in range(3):
        t0 = time.monotonic()
        r = httpx.post(f"{kong.url}/hung/v1/chat/completions", **chat(t))
        elapsed = time.monotonic() - t0
        _assert_failed_open(r, upstream)
        # waited for the check (>= timeout_ms), then gave up on it: not the sidecar's pace
        assert HUNG_TIMEOUT_MS / 1000 <= elapsed < HUNG_TIMEOUT_MS / 1000 + 0.5, elapsed
    assert "letting the request through: receive: timeout" in kong.log()


async def test_sidecar_garbage_fails_open(kong, upstream, redis):
    t = await provision(redis)
    r = httpx.post(f"{kong.url}/garbage/v1/chat/completions", **chat(t))
    _assert_failed_open(r, upstream)
    assert "invalid ALLOW reply from the sidecar" in kong.log()


async def test_fault_tolerant_off_fails_closed(kong, upstream, redis):
    t = await provision(redis)
    n = len(upstream.received())
    r = httpx.post(f"{kong.url}/strict/v1/chat/completions", **chat(t))
    assert r.status_code == 500
    assert r.json() == {"message": "An unexpected error occurred"}
    assert len(upstream.received()) == n


async def test_an_enforcer_fail_open_is_forwarded_flagged_and_reported(kong, upstream, redis):
    """The enforcer itself fails open (the key resolves, its customer has no cfg in Redis): the
    plugin forwards, flags it, and the usage report says so (it is billed from that report)."""
    t = await provision(redis)
    await redis.delete(t.keys.cfg)
    r = httpx.post(f"{kong.url}/ok/v1/chat/completions", **chat(t))
    assert r.status_code == 200, r.text
    assert r.headers["X-Tollgate-Degraded"] == "fail-open"
    assert r.headers["X-Tollgate-Reason"] == "fail_open"
    seen = last_upstream(upstream, "/v1/chat/completions")
    assert seen["headers"]["x-tollgate-degraded"] == "fail-open"
    assert "x-tollgate-hold-id" not in seen["headers"]
    usage = await wait_usage(redis, seen["headers"]["x-tollgate-request-id"])
    assert usage["properties"]["fail_open"] == "true"
    assert usage.get("hold_id") is None


async def test_the_clients_trace_context_reaches_the_check_and_the_usage_report(kong, upstream, redis):
    t = await provision(redis)
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = httpx.post(f"{kong.url}/recorded/v1/chat/completions",
                   **chat(t, 50, headers={"traceparent": tp, "tracestate": "gw=1"}))
    assert r.status_code == 200, r.text
    request_id = last_upstream(upstream, "/v1/chat/completions")["headers"]["x-tollgate-request-id"]
    await wait_usage(redis, request_id)
    calls = {path: headers for path, headers in kong.recording.seen}
    for path in ("/v1/check", "/v1/usage"):
        assert calls[path]["traceparent"] == tp and calls[path]["tracestate"] == "gw=1", (path, calls[path])
    # a malformed traceparent is not passed on
    kong.recording.seen.clear()
    r = httpx.post(f"{kong.url}/recorded/v1/chat/completions", **chat(t, 50, headers={"traceparent": "00-zz-01"}))
    assert r.status_code == 200, r.text
    assert "traceparent" not in dict(kong.recording.seen)["/v1/check"]


def openai_sdk(kong, t, max_retries: int) -> openai.OpenAI:
    """The real openai SDK pointed at the Kong route, the tollgate key in its own header."""
    return openai.OpenAI(base_url=f"{kong.url}/ok/v1", api_key="sk-upstream-unused", max_retries=max_retries,
                         default_headers={"x-api-key": t.api_key})


async def _decisions_of(redis, t) -> list[dict]:
    await wait_event(redis, "decision", "customer_id", t.customer_id)
    return [e for e in await stream_events(redis, "decision") if e["customer_id"] == t.customer_id]


async def test_the_openai_sdk_does_not_retry_a_balance_denial(kong, upstream, redis):
    """max_retries=3, one check: the 402 in OpenAI's shape is an APIStatusError the SDK never retries."""
    t = await provision(redis, wallet=0)
    n = len(upstream.received())
    with pytest.raises(openai.APIStatusError) as denied:
        openai_sdk(kong, t, 3).chat.completions.create(
            model="gpt-4o", max_tokens=50, messages=[{"role": "user", "content": "Say hi"}])
    assert denied.value.status_code == 402 and denied.value.code == "insufficient_quota"
    assert denied.value.body["tollgate_reason"] == "insufficient_balance"
    await asyncio.sleep(0.5)  # a retry, had there been one, would be decided by now
    assert [(e["decision"], e["reason"]) for e in await _decisions_of(redis, t)] == [("DENY", "insufficient_balance")]
    assert len(upstream.received()) == n


async def test_the_openai_sdk_retries_a_rate_limit_after_retry_after(kong, upstream, enforcer, redis):
    """20 requests/min, the burst spent: the SDK's first try gets 429 with Retry-After, waits that
    long (not its own sub-second backoff), and its retry passes Kong to the upstream."""
    t = await provision(redis, requests_per_minute=20)
    async with httpx.AsyncClient(base_url=enforcer.url) as direct:
        for i in range(40):
            r = await direct.post("/v1/check", json={"api_key": t.api_key, "request_id": f"drain_{i}_{t.key_id}",
                                                     "estimate": {"requests": 1}})
            if r.status_code == 429:
                break
        assert r.status_code == 429, "the burst was never spent"
    started = time.monotonic()
    raw = openai_sdk(kong, t, 2).chat.completions.with_raw_response.create(
        model="gpt-4o", max_tokens=50, messages=[{"role": "user", "content": "Say hi"}])
    waited = time.monotonic() - started
    assert raw.http_response.status_code == 200 and raw.retries_taken == 1
    deadline, through_kong = time.monotonic() + 10, []
    while len(through_kong) < 2 and time.monotonic() < deadline:  # decision events reach the bus in batches
        await asyncio.sleep(0.1)
        through_kong = [e for e in await _decisions_of(redis, t) if not e["request_id"].startswith("drain_")]
    assert [(e["decision"], e["reason"]) for e in through_kong] == [("DENY", "rate_limited_requests"), ("ALLOW", "ok")]
    assert waited >= 1.0  # at least the Retry-After's one second, well over the SDK's own first backoff
