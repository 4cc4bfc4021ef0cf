"""The nginx auth_request example (gateway_plugins/nginx/tollgate-auth-request.conf), as shipped
except for its three addresses, in real nginx in front of a real upstream and the real enforcer."""
from __future__ import annotations

import re
import time

import httpx
import pytest

from gateway_plugins import openai_errors
from tests.gateways.conftest import provision, wait_event
from tests.gateways.harness import ROOT, Nginx, dead_url
from tests.otlp_collector import OtlpCollector
from tests.servers import HungServer, run_enforcer
from tests.tenants import DECISION_ENV

EXAMPLE = ROOT / "gateway_plugins" / "nginx" / "tollgate-auth-request.conf"


def example_with(enforcer_url: str, upstream_url: str) -> str:
    text = EXAMPLE.read_text()
    for old, new in (("server 127.0.0.1:8080;", f"server {enforcer_url.removeprefix('http://')};"),
                     ("server 127.0.0.1:9000;", f"server {upstream_url.removeprefix('http://')};"),
                     ("listen 8000;", "listen 127.0.0.1:$PORT;")):
        assert text.count(old) == 1, f"the example no longer has {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def nginx_factory(tmp_path_factory, upstream):
    started = []

    def start(enforcer_url: str) -> Nginx:
        n = Nginx(tmp_path_factory.mktemp("authreq"), example_with(enforcer_url, upstream.url)).start()
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


@pytest.fixture(scope="module")
def proxy(nginx_factory, enforcer):
    return nginx_factory(enforcer.url)


def post(nginx: Nginx, key: str | None, path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {"x-api-key": key} if key is not None else {}
    return httpx.post(nginx.url + path, headers=headers, json={"model": "m", "messages": []}, timeout=10)


async def test_allow_passes_with_rate_limit_headers(proxy, upstream, redis, logs_on_failure):
    logs_on_failure.append(proxy)
    t = await provision(redis, requests_per_minute=5)
    r = post(proxy, t.api_key)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 42  # the upstream's reply
    assert r.headers["X-RateLimit-Limit"] == "5"
    assert r.headers["X-RateLimit-Remaining"] == "4"
    assert "requests" in r.headers["RateLimit-Policy"]
    assert r.headers["X-Tollgate-Reason"] == "ok" and r.headers["x-ratelimit-limit-tokens"]
    assert "X-Tollgate-Degraded" not in r.headers
    seen = upstream.received("/v1/chat/completions")[-1]["headers"]
    request_id = seen["x-tollgate-request-id"]
    assert re.fullmatch(r"ngx_[0-9a-f]{32}", request_id)
    decision = await wait_event(redis, "decision", "request_id", request_id)  # the check of this very request
    assert decision["decision"] == "ALLOW" and decision["customer_id"] == t.customer_id
    assert seen["x-tollgate-hold-id"] == decision["hold_id"]  # so the backend's usage report can settle it


async def test_deny_is_429_with_retry_after_and_never_reaches_the_upstream(proxy, upstream, redis, logs_on_failure):
    logs_on_failure.append(proxy)
    t = await provision(redis, requests_per_minute=1)
    assert post(proxy, t.api_key).status_code == 200
    n = len(upstream.received())
    r = post(proxy, t.api_key)
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert r.headers["X-RateLimit-Remaining"] == "0" and r.headers["x-ratelimit-remaining-requests"] == "0"
    assert "X-Should-Retry" not in r.headers and "X-Tollgate-Degraded" not in r.headers
    assert r.json() == {"error": {**_openai("rate_limited_requests"), "tollgate_level": "key"}}
    assert len(upstream.received()) == n


def _openai(reason: str) -> dict:
    row = openai_errors.REASONS[reason]
    return {"message": row["message"], "type": row["type"], "param": None, "code": row["code"], "tollgate_reason": reason}


async def test_money_is_402_and_suspension_403_without_retry(proxy, upstream, redis, logs_on_failure):
    logs_on_failure.append(proxy)
    # auth_request sends no body: the estimate is one request, so only a per-request price costs
    n = len(upstream.received())
    t = await provision(redis, wallet=0, request_price="0.01")
    r = post(proxy, t.api_key)
    assert r.status_code == 402, r.text
    assert r.json() == {"error": {**_openai("insufficient_balance"), "tollgate_level": "customer"}}
    assert r.headers["X-Should-Retry"] == "false" and "Retry-After" not in r.headers
    assert r.headers["Content-Type"] == "application/json"
    suspended = await provision(redis)
    await redis.hset(suspended.keys.cfg, "status", "suspended")
    r = post(proxy, suspended.api_key)
    assert r.status_code == 403 and r.json()["error"]["code"] == "account_suspended", r.text
    assert r.headers["X-Should-Retry"] == "false"
    assert len(upstream.received()) == n


def test_the_maps_mirror_the_shared_table():
    text = EXAMPLE.read_text()
    maps = {m.group(1): dict(re.findall(r'^\s*(\S+)\s+"?(.*?)"?;\s*$', m.group(2), re.M))
            for m in re.finditer(r"map \$tollgate_reason \$tollgate_error_(\w+) \{\n(.*?)\n\}", text, re.S)}
    assert set(maps) == {"status", "type", "code", "message"}
    for reason, row in openai_errors.REASONS.items():
        if reason == "invalid_api_key":  # answered by @tollgate_unauthorized
            continue
        for field, values in maps.items():
            assert values.get(reason, values["default"]) == str(row[field]), (reason, field)
    for field, values in maps.items():
        assert values["default"] == str(openai_errors.DEFAULT[field]), field


async def test_unknown_missing_and_malformed_keys_are_401(proxy, upstream, redis, logs_on_failure):
    logs_on_failure.append(proxy)
    n = len(upstream.received())
    for key, reason in (("tg_live_nobody", "invalid_api_key"), (None, "missing_api_key"),
                        ('x","api_key":"other', "missing_api_key")):
        r = post(proxy, key)
        assert r.status_code == 401, (key, r.text)
        assert r.json()["error"]["tollgate_reason"] == reason and r.json()["error"]["code"] == "invalid_api_key"
    assert len(upstream.received()) == n


async def test_sidecar_down_fails_open(nginx_factory, upstream, logs_on_failure):
    n = nginx_factory(dead_url())
    logs_on_failure.append(n)
    r = post(n, "tg_any")
    assert r.status_code == 200, r.text
    assert r.headers["X-Tollgate-Degraded"] == "fail-open"
    seen = upstream.received("/v1/chat/completions")[-1]["headers"]
    assert seen["x-tollgate-degraded"] == "fail-open"
    assert seen["x-tollgate-request-id"].startswith("ngx_")


async def test_sidecar_hung_fails_open_within_the_timeout(nginx_factory, upstream, logs_on_failure):
    hung = HungServer().start()
    try:
        n = nginx_factory(hung.url)
        logs_on_failure.append(n)
        t0 = time.monotonic()
        r = post(n, "tg_any")
        elapsed = time.monotonic() - t0
        assert r.status_code == 200, r.text
        assert r.headers["X-Tollgate-Degraded"] == "fail-open"
        assert hung.accepted >= 1
        assert 0.05 <= elapsed < 0.5, elapsed  # proxy_read_timeout 50ms, then the backend
        assert "upstream timed out" in n.log()
    finally:
        hung.stop()


async def test_the_clients_traceparent_reaches_the_check_as_it_is(nginx_factory, redis, redis_server, tmp_path,
                                                                  upstream, logs_on_failure):
    """auth_request passes the client's headers to the subrequest: with tracing on, the check's
    span is a child of the client's and its decision event carries the trace."""
    t = await provision(redis)
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with OtlpCollector() as collector, run_enforcer({
            "TOLLGATE_REDIS_URL": redis_server.url, **DECISION_ENV, "TOLLGATE_SPOOL_PATH": str(tmp_path / "spool"),
            **collector.env()}) as traced:
        proxy = nginx_factory(traced.url)
        logs_on_failure.append(proxy)
        r = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "m", "messages": []}, timeout=10,
                       headers={"x-api-key": t.api_key, "traceparent": f"00-{trace_id}-{span_id}-01"})
        assert r.status_code == 200, r.text
        check = (await collector.wait_for(["POST /v1/check"]))["POST /v1/check"]
    assert (check.trace_id, check.parent_span_id) == (trace_id, span_id)
    request_id = upstream.received("/v1/chat/completions")[-1]["headers"]["x-tollgate-request-id"]
    decision = await wait_event(redis, "decision", "request_id", request_id)
    assert decision["traceparent"] == f"00-{trace_id}-{check.span_id}-01"
