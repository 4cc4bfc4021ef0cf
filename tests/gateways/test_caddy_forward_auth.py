"""The Caddy example (gateway_plugins/caddy/Caddyfile), as shipped except for its three addresses,
in real Caddy in front of a real upstream and the real enforcer (GET /v1/check, the forward-auth
form of the check)."""
from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from gateway_plugins import openai_errors
from tests.gateways.conftest import provision, wait_event
from tests.gateways.harness import ROOT, Caddy, GarbageServer, dead_url
from tests.servers import HungServer, run_enforcer
from tollgate.local_services import free_port

EXAMPLE = ROOT / "gateway_plugins" / "caddy" / "Caddyfile"


def example_with(enforcer_url: str, upstream_url: str, port: int) -> str:
    text = EXAMPLE.read_text()
    for old, new in (("reverse_proxy 127.0.0.1:8080 {", f"reverse_proxy {enforcer_url.removeprefix('http://')} {{"),
                     ("reverse_proxy 127.0.0.1:9000", f"reverse_proxy {upstream_url.removeprefix('http://')}"),
                     ("http://127.0.0.1:8000 {", f"http://127.0.0.1:{port} {{")):
        assert text.count(old) == 1, f"the example no longer has {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def caddy_factory(tmp_path_factory, upstream):
    started = []

    def start(enforcer_url: str) -> Caddy:
        port = free_port()
        c = Caddy(tmp_path_factory.mktemp("caddy"), example_with(enforcer_url, upstream.url, port), port).start()
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


@pytest.fixture(scope="module")
def proxy(caddy_factory, enforcer):
    return caddy_factory(enforcer.url)


BODY = {"model": "m", "messages": [{"role": "user", "content": "x" * 3990}]}  # about 4,000 bytes


def post(caddy: Caddy, key: str | None, **headers) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(caddy.url + "/v1/chat/completions", headers=headers, json=BODY, timeout=10)


async def test_allow_passes_with_the_hold_request_id_and_rate_limit_headers(proxy, upstream, redis, logs_on_failure):
    logs_on_failure.append(proxy)
    t = await provision(redis, requests_per_minute=5, tokens_per_minute=100_000)
    r = post(proxy, t.api_key, **{"X-Model": "claude-sonnet-4-6", "X-Tollgate-Hold-Id": "forged"})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 42  # the upstream's reply
    h = r.headers
    assert (h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"]) == ("5", "4")
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("5", "4")
    assert h["x-ratelimit-limit-tokens"] == "100000"
    assert 'qu="tokens"' in h["RateLimit-Policy"] and h["RateLimit"].startswith('"requests";r=4;')
    assert h["X-Tollgate-Reason"] == "ok" and "X-Tollgate-Degraded" not in h
    seen = upstream.received("/v1/chat/completions")[-1]
    assert json.loads(seen["body"])["messages"][0]["content"] == "x" * 3990  # the check took no body from the backend
    request_id = seen["headers"]["x-tollgate-request-id"]
    assert re.fullmatch(r"caddy_[0-9a-f-]{36}", request_id)
    decision = await wait_event(redis, "decision", "request_id", request_id)  # the check of this very request
    assert decision["decision"] == "ALLOW" and decision["customer_id"] == t.customer_id
    assert seen["headers"]["x-tollgate-hold-id"] == decision["hold_id"] != "forged"
    # the estimate: one request, the body's bytes / 4 in, the example's 1,024 out, the client's model
    assert decision["dimensions"] == {"model": "claude-sonnet-4-6"}
    length = int(seen["headers"]["content-length"])
    assert decision["estimate"] == {"requests": 1, "input_tokens": (length + 3) // 4, "output_tokens": 1024}
    used = 100_000 - int(h["x-ratelimit-remaining-tokens"])
    assert used - 1 <= (length + 3) // 4 + 1024 <= used  # GCRA at 0.6 ms a token rounds the remainder down


def _openai(reason: str, level: str) -> dict:
    row = openai_errors.REASONS[reason]
    return {"error": {"message": row["message"], "type": row["type"], "param": None, "code": row["code"],
                      "tollgate_reason": reason, "tollgate_level": level}}


async def test_deny_answers_in_openai_s_shape_and_never_reaches_the_upstream(proxy, upstream, redis, logs_on_failure):
    logs_on_failure.append(proxy)
    t = await provision(redis, requests_per_minute=1)
    assert post(proxy, t.api_key).status_code == 200
    n = len(upstream.received())
    r = post(proxy, t.api_key)
    assert r.status_code == 429, r.text
    assert r.json() == _openai("rate_limited_requests", "key")
    assert r.headers["Content-Type"] == "application/json"
    assert int(r.headers["Retry-After"]) >= 1 and "x-should-retry" not in r.headers
    assert r.headers["X-RateLimit-Remaining"] == "0" and r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["X-Tollgate-Reason"] == "rate_limited_requests"
    broke = await provision(redis, wallet=0, request_price="0.01")
    r = post(proxy, broke.api_key)
    assert r.status_code == 402 and r.json() == _openai("insufficient_balance", "customer"), r.text
    assert r.headers["x-should-retry"] == "false" and "Retry-After" not in r.headers
    suspended = await provision(redis)
    await redis.hset(suspended.keys.cfg, "status", "suspended")
    r = post(proxy, suspended.api_key)
    assert r.status_code == 403 and r.json() == _openai("suspended", "customer"), r.text
    assert r.headers["x-should-retry"] == "false"
    assert len(upstream.received()) == n


def test_the_map_mirrors_the_shared_table():
    text = EXAMPLE.read_text()
    block = re.search(r"map \{http\.reverse_proxy\.header\.X-Tollgate-Reason\} [^\n]*\{\n(.*?)\n\t*\}", text, re.S).group(1)
    rows = {m[0]: {"status": int(m[1]), "type": m[2], "code": m[3], "message": m[4]}
            for m in re.findall(r'^\s*(\w+) (\d+) (\S+) (\S+) "([^"]*)"$', block, re.M)}
    assert rows.pop("default") == {k: v for k, v in openai_errors.DEFAULT.items() if k != "retry"}
    assert rows == {reason: {k: v for k, v in row.items() if k != "retry"}
                    for reason, row in openai_errors.REASONS.items() if reason != "invalid_api_key"}


async def test_unknown_and_missing_keys_are_refused(proxy, upstream, redis, logs_on_failure):
    logs_on_failure.append(proxy)
    n = len(upstream.received())
    r = post(proxy, "tg_live_nobody")
    assert r.status_code == 401 and r.headers["X-Tollgate-Reason"] == "invalid_api_key", r.text
    r = post(proxy, None)
    assert (r.status_code, r.json()["field"]) == (400, "X-Api-Key"), r.text
    assert len(upstream.received()) == n


@pytest.mark.parametrize("sidecar", ["down", "hung", "5xx"])
async def test_enforcer_down_hung_or_failing_fails_open(caddy_factory, upstream, logs_on_failure, sidecar):
    server = {"down": None, "hung": HungServer, "5xx": lambda: GarbageServer(b"oops", status=503)}[sidecar]
    server = server().start() if server else None
    try:
        c = caddy_factory(server.url if server else dead_url())
        logs_on_failure.append(c)
        t0 = time.monotonic()
        r = post(c, "tg_any")
        elapsed = time.monotonic() - t0
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == 42
        assert r.headers["X-Tollgate-Degraded"] == "fail-open"
        seen = upstream.received("/v1/chat/completions")[-1]["headers"]
        assert seen["x-tollgate-degraded"] == "fail-open"
        assert seen["x-tollgate-request-id"].startswith("caddy_")
        if sidecar == "hung":
            assert server.accepted >= 1
            assert 0.05 <= elapsed < 1.0, elapsed  # response_header_timeout 50ms, then the backend
    finally:
        if server:
            server.stop()


async def test_a_failing_backend_is_not_mistaken_for_a_failed_check(tmp_path, enforcer, redis):
    t = await provision(redis)
    port = free_port()
    c = Caddy(tmp_path, example_with(enforcer.url, dead_url(), port), port).start()
    try:
        r = post(c, t.api_key)
        assert r.status_code == 502, r.text  # the backend's failure, not a fail-open retry of it
        assert r.json()["error"]["type"] == "server_error" and r.headers["Content-Type"] == "application/json"
        assert "X-Tollgate-Degraded" not in r.headers
    finally:
        c.stop()


async def test_a_fail_open_allow_of_the_enforcer_is_flagged_to_the_backend_and_the_client(caddy_factory, upstream,
                                                                                           logs_on_failure):
    hole = HungServer(scheme="redis").start()  # the enforcer's Redis accepts and never answers
    env = {"TOLLGATE_REDIS_URL": hole.url, "TOLLGATE_CHECK_DEADLINE_MS": "3", "TOLLGATE_BUS": "redis"}
    try:
        with run_enforcer(env) as enf:
            c = caddy_factory(enf.url)
            logs_on_failure.append(c)
            for _ in range(10):  # the enforcer's own answer, not Caddy's 50 ms timeout on a busy box
                r = post(c, "tg_any")
                if r.headers.get("X-Tollgate-Reason") == "fail_open":
                    break
            assert r.status_code == 200 and r.headers["X-Tollgate-Reason"] == "fail_open", r.headers
            assert r.headers["X-Tollgate-Degraded"] == "fail-open"
            seen = upstream.received("/v1/chat/completions")[-1]["headers"]
            assert seen["x-tollgate-degraded"] == "fail-open" and not seen.get("x-tollgate-hold-id")
    finally:
        hole.stop()
