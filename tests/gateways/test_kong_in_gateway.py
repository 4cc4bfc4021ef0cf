"""The Kong plugin's in-gateway mode (mode = "redis"): real nginx + lua-nginx-module through the PDK
shim runs the enforcer's check.lua on a real Redis (Debian's lua-nginx-redis), with tenants and
their plans' estimate hashes projected by the control plane's code (tests/tenants.py). The usage
report still goes to the real enforcer. Faults are real: Redis SIGSTOPped and SIGKILLed."""
from __future__ import annotations

import json
import math
import os
import signal
import time

import httpx
import pytest
import redis.asyncio as aioredis

from tests.gateways.conftest import failed, provision, wait_usage
from tests.gateways.harness import KONG_PLUGIN_DIR, Nginx, dead_url, kong_http_body, kong_location
from tests.tenants import mark_projected, plan_doc
from tests.tenants import provision as provision_doc
from tollgate.local_services import start_redis

FAULT_TIMEOUT_MS = 100
PLUGIN_CHECK = KONG_PLUGIN_DIR / "kong" / "plugins" / "tollgate" / "check.lua"


@pytest.fixture(scope="module")
def fault_redis():
    server = start_redis()  # of this module alone: stopped and killed by the fault tests
    yield server
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, redis_server, fault_redis, enforcer, upstream):
    prefix = tmp_path_factory.mktemp("kong_redis")
    configs = {
        # a generous timeout: decisions under test must be real on a busy 2-core machine
        "redis": {"mode": "redis", "redis_port": redis_server.port, "sidecar_url": enforcer.url,
                  "timeout_ms": 2000, "key_cache_ttl_s": 0, "negative_cache_ttl_s": 0},
        "sidecar": {"sidecar_url": enforcer.url, "timeout_ms": 2000},
        # no sidecar for the check at all: only the usage reports reach an enforcer (usage_url)
        "nosidecar": {"mode": "redis", "redis_port": redis_server.port, "sidecar_url": dead_url(),
                      "usage_url": enforcer.url, "timeout_ms": 2000},
        "fault": {"mode": "redis", "redis_port": fault_redis.port, "sidecar_url": enforcer.url,
                  "timeout_ms": FAULT_TIMEOUT_MS, "redis_clock_skew_ms": 0},
        "strict": {"mode": "redis", "redis_port": fault_redis.port, "sidecar_url": enforcer.url,
                   "timeout_ms": FAULT_TIMEOUT_MS, "redis_clock_skew_ms": 0, "fault_tolerant": False},
    }
    http_body = kong_http_body(prefix, configs, "".join(kong_location(name, upstream.url) for name in configs))
    nginx = Nginx(prefix, http_body, lua=True).start()
    yield nginx
    nginx.stop()


@pytest.fixture
def kong(gateway, request):
    yield gateway
    if failed(request):
        print(f"--- nginx error.log ---\n{gateway.log()[-20000:]}")


def chat(key: str, max_tokens: int = 50, model: str = "gpt-4o") -> tuple[dict, dict]:
    """The request, and the estimate the plugin makes of it (body bytes / 4 in, max_tokens out)."""
    body = json.dumps({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Say hi"}]})
    est = {"requests": 1, "input_tokens": math.ceil(len(body) / 4), "output_tokens": max_tokens}
    return {"headers": {"x-api-key": key, "content-type": "application/json"}, "content": body}, est


def priced_plan(**limits) -> dict:
    """Tokens and requests priced, gpt-4o's output tokens at a price of its own (an override)."""
    doc = plan_doc("0.01", **limits)
    doc["charges"][1]["overrides"] = [{"match": {"model": "gpt-4o"}, "unit_price": "0.0000105"}]
    return doc


def test_plugin_ships_the_enforcers_check_lua():
    """One source of truth: the script beside the plugin is a symlink to lua/check.lua."""
    assert PLUGIN_CHECK.is_symlink()
    assert PLUGIN_CHECK.resolve() == (KONG_PLUGIN_DIR.parents[1] / "lua" / "check.lua").resolve()


async def test_allow_places_the_hold_the_sidecar_would(kong, upstream, redis):
    t = await provision_doc(redis, priced_plan())
    req, est = chat(t.api_key)
    r = httpx.post(f"{kong.url}/redis/v1/chat/completions", **req)
    assert r.status_code == 200, r.text
    assert r.headers["X-RateLimit-Limit"] == "100000" and r.headers["RateLimit-Limit"] == "100000"
    assert 99_990 <= int(r.headers["X-RateLimit-Remaining"]) < 100_000
    assert r.headers["RateLimit-Policy"] == '"requests";q=100000;w=60, "tokens";q=100000000;qu="tokens";w=60'
    assert r.headers["x-ratelimit-limit-tokens"] == "100000000" and r.headers["x-ratelimit-reset-requests"]
    assert r.headers["X-Tollgate-Reason"] == "ok" and "X-Tollgate-Degraded" not in r.headers
    sent = upstream.received("/v1/chat/completions")[-1]["headers"]
    hold_id, request_id = sent["x-tollgate-hold-id"], sent["x-tollgate-request-id"]
    # the hold check.lua placed: the plan's estimate (the override's price), tokens, key
    cost = t.plan.estimate_micros({"model": "gpt-4o"}, est)
    tokens = est["input_tokens"] + est["output_tokens"]
    assert (await redis.hget(t.keys.holds, hold_id)).decode() == f"{cost}:{tokens}:{t.key_id}"
    assert int(await redis.get(t.keys.held)) == cost
    assert (await redis.get(t.keys.request(request_id))).decode() == hold_id  # idempotency record
    assert await redis.zscore(t.keys.hold_expiry, hold_id) is not None
    # the usage report still goes to the sidecar, naming the hold
    usage = await wait_usage(redis, request_id)
    assert usage["hold_id"] == hold_id and usage["customer_id"] == t.customer_id

    # the sidecar path, for a twin tenant and the same request: the same hold value and state
    twin = await provision_doc(redis, priced_plan())
    req, _ = chat(twin.api_key)
    s = httpx.post(f"{kong.url}/sidecar/v1/chat/completions", **req)
    assert s.status_code == 200, s.text
    twin_hold = upstream.received("/v1/chat/completions")[-1]["headers"]["x-tollgate-hold-id"]
    assert (await redis.hget(twin.keys.holds, twin_hold)).decode() == f"{cost}:{tokens}:{twin.key_id}"
    for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "RateLimit-Policy", "RateLimit",
                 "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-limit-tokens",
                 "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"):
        assert s.headers[name] == r.headers[name], name


async def test_without_a_sidecar_for_checks_usage_goes_to_usage_url(kong, upstream, redis):
    t = await provision(redis)
    req, _ = chat(t.api_key)
    r = httpx.post(f"{kong.url}/nosidecar/v1/chat/completions", **req)
    assert r.status_code == 200 and "X-Tollgate-Degraded" not in r.headers, r.text
    sent = upstream.received("/v1/chat/completions")[-1]["headers"]
    usage = await wait_usage(redis, sent["x-tollgate-request-id"])
    assert usage["hold_id"] == sent["x-tollgate-hold-id"] and usage["customer_id"] == t.customer_id


async def test_a_model_without_an_override_holds_the_default_price(kong, upstream, redis):
    t = await provision_doc(redis, priced_plan())
    req, est = chat(t.api_key, model="claude-sonnet-4-6")
    r = httpx.post(f"{kong.url}/redis/v1/chat/completions", **req)
    assert r.status_code == 200, r.text
    hold_id = upstream.received("/v1/chat/completions")[-1]["headers"]["x-tollgate-hold-id"]
    cost = t.plan.estimate_micros({"model": "claude-sonnet-4-6"}, est)
    assert cost != t.plan.estimate_micros({"model": "gpt-4o"}, est)
    assert (await redis.hget(t.keys.holds, hold_id)).decode().split(":")[0] == str(cost)


async def test_deny_rate_limited_with_level_and_retry_after(kong, upstream, redis):
    t = await provision(redis, requests_per_minute=1)
    req, _ = chat(t.api_key)
    assert httpx.post(f"{kong.url}/redis/v1/chat/completions", **req).status_code == 200
    n = len(upstream.received())
    r = httpx.post(f"{kong.url}/redis/v1/chat/completions", **req)
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["tollgate_reason"] == "rate_limited_requests" and error["tollgate_level"] == "key"
    assert error["code"] == "rate_limit_exceeded"
    assert int(r.headers["Retry-After"]) >= 1 and r.headers["X-Tollgate-Level"] == "key"
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert len(upstream.received()) == n
    assert await redis.hlen(t.keys.holds) == 1  # the DENY placed nothing


async def test_deny_insufficient_balance_is_402_without_retry(kong, upstream, redis):
    t = await provision(redis, wallet=0)
    req, _ = chat(t.api_key)
    r = httpx.post(f"{kong.url}/redis/v1/chat/completions", **req)
    assert r.status_code == 402, r.text
    assert r.json()["error"]["tollgate_level"] == "customer"
    assert r.headers["x-should-retry"] == "false" and "Retry-After" not in r.headers
    assert await redis.hlen(t.keys.holds) == 0


async def test_unknown_key_is_401_and_revoked_too(kong, upstream, redis):
    req, _ = chat("tg_live_nobody")
    r = httpx.post(f"{kong.url}/redis/v1/chat/completions", **req)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    t = await provision(redis)
    await redis.hset(f"tg:key:{t.key_hash}", "status", "revoked")
    req, _ = chat(t.api_key)
    assert httpx.post(f"{kong.url}/redis/v1/chat/completions", **req).status_code == 401


async def test_not_projected_fails_open(kong, upstream, redis):
    """No key record and no projection marker: Redis lost its data, so never 401."""
    await redis.delete("tg:{@projection}")
    req, _ = chat("tg_live_someone")
    r = httpx.post(f"{kong.url}/redis/v1/chat/completions", **req)
    assert r.status_code == 200, r.text
    assert r.headers["X-Tollgate-Degraded"] == "fail-open"


async def test_redis_stopped_or_killed_fails_open_and_a_late_run_places_nothing(kong, upstream, fault_redis):
    client = aioredis.Redis.from_url(fault_redis.url)
    try:
        t = await provision(client)
        await mark_projected(client)
        req, _ = chat(t.api_key)
        ok = httpx.post(f"{kong.url}/fault/v1/chat/completions", **req)
        assert ok.status_code == 200 and "X-Tollgate-Degraded" not in ok.headers, ok.text
        assert await client.hlen(t.keys.holds) == 1

        os.kill(fault_redis.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            r = httpx.post(f"{kong.url}/fault/v1/chat/completions", **req)
            took = time.monotonic() - t0
            assert r.status_code == 200, r.text
            assert r.headers["X-Tollgate-Degraded"] == "fail-open"
            assert upstream.received("/v1/chat/completions")[-1]["headers"]["x-tollgate-degraded"] == "fail-open"
            assert took < 5, took  # bounded by timeout_ms, not by Redis
            strict = httpx.post(f"{kong.url}/strict/v1/chat/completions", **req)
            assert strict.status_code == 500
            time.sleep(FAULT_TIMEOUT_MS / 1000 + 0.2)  # past the deadline the plugin gave Redis
        finally:
            os.kill(fault_redis.proc.pid, signal.SIGCONT)
        # the check Redis ran late (after SIGCONT) found its deadline passed: no hold without an owner
        assert await client.hlen(t.keys.holds) == 1
    finally:
        await client.aclose()

    fault_redis.proc.kill()
    fault_redis.proc.wait()
    r = httpx.post(f"{kong.url}/fault/v1/chat/completions", **req)
    assert r.status_code == 200 and r.headers["X-Tollgate-Degraded"] == "fail-open", r.text


async def test_suspended_is_403_without_rate_limit_headers(kong, upstream, redis):
    t = await provision(redis)
    await redis.hset(t.keys.cfg, "status", "suspended")  # the customer's (cfg), not the key's
    req, _ = chat(t.api_key)
    r = httpx.post(f"{kong.url}/redis/v1/chat/completions", **req)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "account_suspended" and r.json()["error"]["tollgate_level"] == "customer"
    assert r.headers["x-should-retry"] == "false"
    assert "X-RateLimit-Limit" not in r.headers  # check.lua stopped before reading the limits


async def test_a_script_error_fails_open(kong, upstream, redis):
    t = await provision(redis)
    await redis.set(t.keys.wallet, "not a number")  # check.lua's arithmetic on it raises
    req, _ = chat(t.api_key)
    r = httpx.post(f"{kong.url}/redis/v1/chat/completions", **req)
    assert r.status_code == 200, r.text
    assert r.headers["X-Tollgate-Degraded"] == "fail-open"
    assert await redis.hlen(t.keys.holds) == 0
    assert "tollgate check failed (redis), letting the request through: check.lua: " in kong.log()
