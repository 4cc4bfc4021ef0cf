"""The tollgate callback in the real LiteLLM proxy (litellm[proxy] from PyPI, its own virtualenv),
with the real openai SDK as the client, plain and streaming, and the real enforcer behind a
switchable address (for the enforcer down, hung and answering garbage). One proxy per module: it
takes seconds to start."""
from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.gateways.conftest import failed, provision, wait_event, wait_usage
from tests.gateways.harness import dead_url
from tests.gateways.litellm_harness import MASTER_KEY, MOCK_USAGE, LiteLLMProxy, SwitchableSidecar
from tests.tenants import stream_events

CHECK_TIMEOUT_MS = 1000  # generous: a busy 2-core machine; the hung case waits this long


@pytest.fixture(scope="module")
def sidecar(enforcer):
    s = SwitchableSidecar(enforcer.url)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def proxy_server(sidecar):
    proxy = LiteLLMProxy({"TOLLGATE_SIDECAR_URL": sidecar.url, "TOLLGATE_TIMEOUT_MS": str(CHECK_TIMEOUT_MS)})
    proxy.start()
    yield proxy
    proxy.cleanup()


@pytest.fixture
def proxy(proxy_server, sidecar, request):
    sidecar.switch("forward")
    yield proxy_server
    sidecar.switch("forward")
    if failed(request):
        print(f"--- LiteLLM proxy log ---\n{proxy_server.logs()}")


def sdk(proxy, api_key: str | None, max_retries: int = 0) -> openai.OpenAI:
    """The openai SDK on the proxy: LiteLLM's master key, the tollgate key in its own header."""
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=MASTER_KEY, max_retries=max_retries,
                         default_headers={"x-tollgate-api-key": api_key} if api_key else None)


def chat(client: openai.OpenAI, model: str = "gpt-4o", max_tokens: int = 50, **extra):
    """A raw response (status, headers) of a chat completion."""
    return client.chat.completions.with_raw_response.create(
        model=model, max_tokens=max_tokens, messages=[{"role": "user", "content": "Say hi"}], **extra)


def request_id(headers) -> str:
    return "litellm_" + headers["x-litellm-call-id"]


async def test_allow_answers_with_rate_limit_headers_and_reports_cached_tokens(proxy, redis):
    t = await provision(redis)
    raw = chat(sdk(proxy, t.api_key), max_tokens=50)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the mock"
    assert raw.headers["x-ratelimit-limit"] == "100000"
    assert 99_990 <= int(raw.headers["x-ratelimit-remaining"]) < 100_000
    assert "requests" in raw.headers["ratelimit-policy"]
    assert raw.headers["x-tollgate-reason"] == "ok"
    assert "x-tollgate-degraded" not in raw.headers

    rid = request_id(raw.headers)
    decision = await wait_event(redis, "decision", "request_id", rid)
    assert decision["decision"] == "ALLOW" and decision["hold_id"].startswith("hold_")
    assert decision["dimensions"] == {"model": "gpt-4o"}
    assert decision["estimate"]["output_tokens"] == 50 and decision["estimate"]["input_tokens"] > 0

    usage = await wait_usage(redis, rid)
    assert usage["hold_id"] == decision["hold_id"]
    assert usage["id"] == f"evt_{rid}"
    assert usage["customer_id"] == t.customer_id and usage["key_id"] == t.key_id
    assert usage["properties"]["model"] == "gpt-4o"
    assert usage["properties"]["gateway"] == "litellm"
    assert usage["properties"]["request_type"] == "standard"
    cached = MOCK_USAGE["prompt_tokens_details"]["cached_tokens"]
    assert usage["measurements"] == [
        {"metric": "input_tokens", "value": MOCK_USAGE["prompt_tokens"] - cached},
        {"metric": "output_tokens", "value": MOCK_USAGE["completion_tokens"]},
        {"metric": "cache_read_tokens", "value": cached},
    ]


async def test_a_usage_report_the_enforcer_could_not_take_is_sent_again(proxy, redis, sidecar):
    """Two 503s from the enforcer: the report (idempotent by its event id) arrives on the third try."""
    t = await provision(redis)
    before = len(sidecar.headers_of("/v1/usage"))
    sidecar.usage_failures = 2
    raw = chat(sdk(proxy, t.api_key))
    usage = await wait_usage(redis, request_id(raw.headers), timeout=30)
    assert usage["hold_id"] and usage["measurements"][0]["value"] > 0
    assert len(sidecar.headers_of("/v1/usage")) - before == 3
    assert "sending it again" in proxy.logs()


async def test_the_clients_trace_context_reaches_the_enforcer(proxy, redis, sidecar):
    """W3C traceparent (and tracestate) of the client's request go on to /v1/check and /v1/usage;
    a malformed one does not."""
    t = await provision(redis)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    checks, usages = len(sidecar.headers_of("/v1/check")), len(sidecar.headers_of("/v1/usage"))
    raw = chat(sdk(proxy, t.api_key), extra_headers={"traceparent": traceparent, "tracestate": "vendor=1"})
    await wait_usage(redis, request_id(raw.headers))
    check, usage = sidecar.headers_of("/v1/check")[checks], sidecar.headers_of("/v1/usage")[usages]
    for sent in (check, usage):
        assert sent.get("traceparent") == traceparent and sent.get("tracestate") == "vendor=1", sent
    raw = chat(sdk(proxy, t.api_key), extra_headers={"traceparent": "00-not-a-trace-01"})
    await wait_usage(redis, request_id(raw.headers))
    assert "traceparent" not in sidecar.headers_of("/v1/check")[-1]


async def test_a_stream_reports_its_final_usage(proxy, redis):
    t = await provision(redis)
    raw = sdk(proxy, t.api_key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=64, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Say hi"}])
    assert raw.headers["x-tollgate-reason"] == "ok"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the stream mock"
    final = [c.usage for c in chunks if c.usage]
    assert final, "the stream carried no usage"
    rid = request_id(raw.headers)
    usage = await wait_usage(redis, rid)
    assert usage["properties"]["request_type"] == "stream"
    assert usage["hold_id"] == (await wait_event(redis, "decision", "request_id", rid))["hold_id"]
    assert {m["metric"]: m["value"] for m in usage["measurements"]} == {
        "input_tokens": final[-1].prompt_tokens, "output_tokens": final[-1].completion_tokens}
    assert final[-1].completion_tokens > 0


async def test_a_stream_without_usage_for_the_client_is_still_reported_with_tokens(proxy, redis):
    """No stream_options.include_usage: the client gets no usage, LiteLLM still counts it."""
    t = await provision(redis)
    raw = sdk(proxy, t.api_key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=64, stream=True, messages=[{"role": "user", "content": "Say hi"}])
    chunks = list(raw.parse())
    assert not [c for c in chunks if c.usage]
    usage = await wait_usage(redis, request_id(raw.headers))
    counts = {m["metric"]: m["value"] for m in usage["measurements"]}
    assert usage["properties"]["usage_source"] == "response"
    assert counts["input_tokens"] > 0 and counts["output_tokens"] > 0


async def test_the_estimate_sent_is_taken_from_the_request(proxy, redis):
    # tpm 300: a request (~30 input tokens) with max_tokens 200 passes, a second one does not fit,
    # one with max_tokens 1 still does
    t = await provision(redis, tokens_per_minute=300)
    client = sdk(proxy, t.api_key)
    assert chat(client, max_tokens=200).http_response.status_code == 200
    with pytest.raises(openai.RateLimitError) as denied:
        chat(client, max_tokens=200)
    assert denied.value.body["type"] == "tokens"
    assert denied.value.body["tollgate_reason"] == "rate_limited_tokens"
    assert chat(client, max_tokens=1).http_response.status_code == 200


async def test_deny_rate_limited_is_openais_429_with_retry_after(proxy, redis, sidecar):
    t = await provision(redis, requests_per_minute=1)
    client = sdk(proxy, t.api_key)
    chat(client)
    with pytest.raises(openai.RateLimitError) as denied:
        chat(client)
    e = denied.value
    assert e.status_code == 429
    assert e.body["type"] == "requests" and e.body["code"] == "rate_limit_exceeded"
    assert e.body["message"].startswith("Rate limit reached for requests per minute")
    assert 1 <= int(e.response.headers["retry-after"]) <= 60
    assert e.response.headers["x-ratelimit-remaining"] == "0"
    assert e.response.headers["x-tollgate-reason"] == "rate_limited_requests"
    assert "x-should-retry" not in e.response.headers
    # refused before the model: LiteLLM logged no call, so no usage report either
    assert len(sidecar.checks_of(lambda c: c["api_key"] == t.api_key)) == 2


async def test_deny_insufficient_balance_is_a_402_not_to_retry(proxy, redis):
    t = await provision(redis, wallet=0)
    with pytest.raises(openai.APIStatusError) as denied:
        chat(sdk(proxy, t.api_key))
    e = denied.value
    assert e.status_code == 402
    assert e.body["type"] == "insufficient_quota" and e.body["code"] == "insufficient_quota"
    assert e.body["tollgate_reason"] == "insufficient_balance"
    assert e.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in e.response.headers


async def test_unknown_and_missing_keys_get_401(proxy, redis, sidecar):
    with pytest.raises(openai.AuthenticationError) as unknown:
        chat(sdk(proxy, "tg_live_nobody"))
    assert unknown.value.body["code"] == "invalid_api_key"
    assert unknown.value.body["type"] == "invalid_request_error"
    assert unknown.value.response.headers["x-should-retry"] == "false"
    n = len(sidecar.checks)
    with pytest.raises(openai.AuthenticationError) as missing:
        chat(sdk(proxy, None))
    assert missing.value.body["code"] == missing.value.body["tollgate_reason"] == "missing_api_key"
    assert "x-tollgate-api-key" in missing.value.body["message"]
    assert len(sidecar.checks) == n  # no key, no check


async def _assert_failed_open(proxy, redis, t, reported: bool = True) -> tuple[str, float]:
    """The call went through, flagged; its usage report (when the enforcer can take it) says so."""
    t0 = time.monotonic()
    raw = chat(sdk(proxy, t.api_key))
    elapsed = time.monotonic() - t0
    assert raw.parse().choices[0].message.content == "Hello from the mock"
    assert raw.headers["x-tollgate-degraded"] == "fail-open"
    rid = request_id(raw.headers)
    if reported:
        usage = await wait_usage(redis, rid)
        assert usage["properties"]["fail_open"] == "true"
        assert usage.get("hold_id") is None
        assert {m["metric"] for m in usage["measurements"]} == {"input_tokens", "output_tokens", "cache_read_tokens"}
    return rid, elapsed


async def test_enforcer_down_fails_open(proxy, redis, sidecar):
    t = await provision(redis)
    sidecar.switch("down")
    rid, elapsed = await _assert_failed_open(proxy, redis, t, reported=False)
    assert elapsed < CHECK_TIMEOUT_MS / 1000
    assert f"letting the request {rid} through: connect: " in proxy.logs()


async def test_enforcer_answering_garbage_fails_open(proxy, redis, sidecar):
    t = await provision(redis)
    sidecar.switch("garbage")
    rid, elapsed = await _assert_failed_open(proxy, redis, t)
    assert f"letting the request {rid} through: unexpected reply: HTTP 200" in proxy.logs()


async def test_enforcer_hung_fails_open_within_the_timeout(proxy, redis, sidecar):
    t = await provision(redis)
    sidecar.switch("hung")
    rid, elapsed = await _assert_failed_open(proxy, redis, t)
    # waited for the check (>= the timeout), then gave up on it: not the enforcer's pace
    assert CHECK_TIMEOUT_MS / 1000 <= elapsed < CHECK_TIMEOUT_MS / 1000 + 2, elapsed
    assert f"letting the request {rid} through: timeout" in proxy.logs()


async def test_an_enforcer_fail_open_is_flagged_and_reported(proxy, redis):
    """The enforcer itself fails open (the key resolves, its customer has no cfg in Redis)."""
    t = await provision(redis)
    await redis.delete(t.keys.cfg)
    await _assert_failed_open(proxy, redis, t)


# ---------------------------------------------------------------- the openai SDK's retries


async def _refuse(redis, t, reason: str) -> None:
    """Suspend the customer or trip a margin guard the way the control plane projects them
    (an empty wallet is provisioned as such)."""
    if reason == "suspended":
        await redis.hset(t.keys.cfg, "status", "suspended")
    elif reason == "margin_guard":
        await redis.hset(t.keys.guard, "customer", "rule_margin_80")


@pytest.mark.parametrize("reason,status", [("insufficient_balance", 402), ("suspended", 403), ("margin_guard", 429)])
async def test_the_sdk_does_not_retry_a_denial_that_waiting_cannot_cure(proxy, redis, sidecar, reason, status):
    """max_retries=3, and the SDK asks once: 402 and 403 it never retries; the margin guard's 429
    it would, but `x-should-retry: false` comes first."""
    t = await provision(redis, wallet=0 if reason == "insufficient_balance" else 100_000_000)
    await _refuse(redis, t, reason)
    with pytest.raises(openai.APIStatusError) as denied:
        chat(sdk(proxy, t.api_key, max_retries=3))
    assert denied.value.status_code == status
    assert denied.value.body["tollgate_reason"] == reason
    assert denied.value.response.headers["x-should-retry"] == "false"
    assert len(sidecar.checks_of(lambda c: c["api_key"] == t.api_key)) == 1
    decisions = [e for e in await _decisions(redis, t) if e["decision"] == "DENY"]
    assert [e["reason"] for e in decisions] == [reason]


async def _decisions(redis, t) -> list[dict]:
    await wait_event(redis, "decision", "customer_id", t.customer_id)
    return [e for e in await stream_events(redis, "decision") if e["customer_id"] == t.customer_id]


async def test_the_sdk_retries_a_rate_limit_after_retry_after(proxy, redis, sidecar, enforcer):
    """20 requests/min: one every 3 s once the burst is spent. The SDK's first try is refused with
    Retry-After; it waits that long and its retry is allowed."""
    t = await provision(redis, requests_per_minute=20)
    async with httpx.AsyncClient(base_url=enforcer.url) as direct:  # spend the burst, not through LiteLLM
        for i in range(40):
            r = await direct.post("/v1/check", json={"api_key": t.api_key, "request_id": f"drain_{i}_{t.key_id}",
                                                     "dimensions": {"model": "gpt-4o"}, "estimate": {"requests": 1}})
            if r.status_code == 429:
                break
        assert r.status_code == 429, "the burst was never spent"
    raw = chat(sdk(proxy, t.api_key, max_retries=2))
    assert raw.http_response.status_code == 200
    assert raw.retries_taken == 1
    checks = sidecar.checks_of(lambda c: c["api_key"] == t.api_key)
    assert len(checks) == 2  # the refused try and the retry, each its own request id
    assert checks[0]["request_id"] != checks[1]["request_id"]
    first = await wait_event(redis, "decision", "request_id", checks[0]["request_id"])
    retry = await wait_event(redis, "decision", "request_id", checks[1]["request_id"])
    assert (first["decision"], first["reason"]) == ("DENY", "rate_limited_requests")
    assert retry["decision"] == "ALLOW"
    # it waited as told, not its own short backoff (<= 0.5 s for a first retry)
    told = int(checks[0]["_retry_after"])
    assert 1 <= told <= 3
    assert checks[1]["_at"] - checks[0]["_at"] >= told - 0.1


@pytest.mark.parametrize("model,user", [("broken", None), ("no-such-model", None), ("gpt-4o", "refuse-me")])
async def test_a_failed_call_releases_its_hold(proxy, redis, model, user):
    """After the check allowed it: the upstream fails, or the request fails before any model call:
    no model of that name (the router refuses), a later guardrail refuses it. LiteLLM logs them all
    as failures (the last two as its "proxy-only errors"): zero tokens, the hold released."""
    t = await provision(redis)
    with pytest.raises(openai.BadRequestError) as failed_call:
        chat(sdk(proxy, t.api_key), model=model, **({"user": user} if user else {}))
    rid = request_id(failed_call.value.response.headers)
    decision = await wait_event(redis, "decision", "request_id", rid)
    assert decision["decision"] == "ALLOW"
    usage = await wait_usage(redis, rid)
    assert usage["hold_id"] == decision["hold_id"]
    assert usage["properties"]["status"] == "400"
    assert usage["properties"]["usage_source"] == "none"
    assert all(m["value"] == 0 for m in usage["measurements"])


async def test_the_tollgate_key_can_come_from_the_virtual_keys_metadata(proxy, redis):
    """The caller authenticates with its LiteLLM virtual key only; the key's metadata names its
    tollgate key (the header is not needed)."""
    t = await provision(redis)
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=f"vk_{t.api_key}", max_retries=0)
    raw = chat(client)
    assert raw.headers["x-tollgate-reason"] == "ok"
    decision = await wait_event(redis, "decision", "request_id", request_id(raw.headers))
    assert decision["key_id"] == t.key_id and decision["decision"] == "ALLOW"
    with pytest.raises(openai.AuthenticationError):  # LiteLLM's own auth still decides first
        chat(openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=t.api_key, max_retries=0))


async def test_the_responses_api_is_checked_and_reported(proxy, redis):
    t = await provision(redis)
    raw = sdk(proxy, t.api_key).responses.with_raw_response.create(
        model="gpt-4o-mini", input="Say hi", max_output_tokens=30)
    assert raw.headers["x-tollgate-reason"] == "ok"
    answer = raw.parse()
    rid = request_id(raw.headers)
    decision = await wait_event(redis, "decision", "request_id", rid)
    assert decision["estimate"]["output_tokens"] == 30
    usage = await wait_usage(redis, rid)
    assert {m["metric"]: m["value"] for m in usage["measurements"]} == {
        "input_tokens": answer.usage.input_tokens, "output_tokens": answer.usage.output_tokens}
    assert answer.usage.output_tokens > 0


async def test_fault_tolerant_off_refuses_when_the_enforcer_fails(redis):
    """TOLLGATE_FAULT_TOLERANT=false: no check, no call (a proxy of its own, its enforcer down)."""
    t = await provision(redis)
    strict = LiteLLMProxy({"TOLLGATE_SIDECAR_URL": dead_url(), "TOLLGATE_FAULT_TOLERANT": "false"}).start()
    try:
        with pytest.raises(openai.APIStatusError) as refused:
            chat(sdk(strict, t.api_key))
        assert refused.value.status_code == 503
        assert refused.value.body["code"] == "tollgate_unavailable"
        assert "refusing the request" in strict.logs()
    finally:
        strict.cleanup()


async def test_every_x_ratelimit_header_of_the_check_is_passed_on(proxy, redis, sidecar):
    """OpenAI's x-ratelimit-*-requests/-tokens, when the enforcer sends them, reach the client
    on answers and refusals alike."""
    openai_style = {"x-ratelimit-limit-requests": "7", "x-ratelimit-remaining-tokens": "1234",
                    "x-ratelimit-reset-requests": "1s"}
    sidecar.extra_headers = dict(openai_style)
    t = await provision(redis, requests_per_minute=1)
    raw = chat(sdk(proxy, t.api_key))
    assert {k: raw.headers.get(k) for k in openai_style} == openai_style
    with pytest.raises(openai.RateLimitError) as denied:
        chat(sdk(proxy, t.api_key))
    assert {k: denied.value.response.headers.get(k) for k in openai_style} == openai_style
    assert "x-tollgate-hold-id" not in raw.headers  # the hold is the plugin's business, not the client's


async def test_concurrent_calls_each_report_their_own_hold(proxy, redis):
    t = await provision(redis)
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=MASTER_KEY, max_retries=0,
                                default_headers={"x-tollgate-api-key": t.api_key})
    raws = await asyncio.gather(*[client.chat.completions.with_raw_response.create(
        model="gpt-4o", max_tokens=10 + i, messages=[{"role": "user", "content": "Say hi"}]) for i in range(20)])
    await client.close()
    holds = set()
    for raw in raws:
        rid = request_id(raw.headers)
        decision = await wait_event(redis, "decision", "request_id", rid)
        usage = await wait_usage(redis, rid)
        assert usage["hold_id"] == decision["hold_id"]
        holds.add(usage["hold_id"])
    assert len(holds) == 20


def test_a_bad_setting_stops_the_proxy_at_start_up():
    bad = LiteLLMProxy({"TOLLGATE_TIMEOUT_MS": "0"})
    try:
        with pytest.raises(RuntimeError, match="exited") as stopped:
            bad.start()
        assert "TOLLGATE_TIMEOUT_MS: >= 1, got 0" in str(stopped.value)
    finally:
        bad.cleanup()


async def test_anthropics_messages_route_is_checked_and_reported(proxy, redis):
    """LiteLLM's /v1/messages, Anthropic's shape: the check's estimate and the answer's usage."""
    t = await provision(redis)
    r = httpx.post(f"{proxy.url}/v1/messages", timeout=30,
                   headers={"x-api-key": MASTER_KEY, "x-tollgate-api-key": t.api_key, "anthropic-version": "2023-06-01"},
                   json={"model": "claude-mock", "max_tokens": 40, "messages": [{"role": "user", "content": "Say hi"}]})
    assert r.status_code == 200, r.text
    got = r.json()["usage"]
    assert r.headers["x-tollgate-reason"] == "ok"
    rid = request_id(r.headers)
    assert (await wait_event(redis, "decision", "request_id", rid))["estimate"]["output_tokens"] == 40
    usage = await wait_usage(redis, rid)
    assert {m["metric"]: m["value"] for m in usage["measurements"]} == {
        "input_tokens": got["input_tokens"], "output_tokens": got["output_tokens"]}
    assert got["output_tokens"] > 0

