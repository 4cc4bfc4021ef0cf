"""Lambda@Edge handlers driven with CloudFront events of the documented shape against the real
enforcer; the built package checked for CloudFront's limits and run once through
python-lambda-local."""
from __future__ import annotations

import ast
import base64
import copy
import json
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from gateway_plugins import openai_errors
from gateway_plugins.lambda_edge import build, tollgate_edge, viewer_request, viewer_response
from tests.gateways.conftest import provision, wait_event, wait_usage
from tests.gateways.harness import GarbageServer, dead_url
from tests.otlp_collector import OtlpCollector
from tests.servers import HungServer, run_enforcer
from tests.tenants import DECISION_ENV

FIXTURES = Path(__file__).parent / "fixtures" / "cloudfront"
LIMIT_40KB = 40 * 1024


def config(sidecar_url: str, **over) -> dict:
    return tollgate_edge.validate_config({"sidecar_url": sidecar_url, **over})


def viewer_event(api_key: str | None, body: dict | None = None, headers: dict | None = None) -> dict:
    event = json.loads((FIXTURES / "viewer-request.json").read_text())
    cf = event["Records"][0]["cf"]
    cf["config"]["requestId"] = base64.b64encode(uuid.uuid4().bytes).decode()  # unique per request
    req = cf["request"]
    raw = json.dumps(body if body is not None else {
        "model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req["body"]["data"] = base64.b64encode(raw).decode()
    req["headers"]["content-length"] = [{"key": "Content-Length", "value": str(len(raw))}]
    if api_key is None:
        del req["headers"]["x-api-key"]
    else:
        req["headers"]["x-api-key"] = [{"key": "X-Api-Key", "value": api_key}]
    for k, v in (headers or {}).items():
        req["headers"][k.lower()] = [{"key": k, "value": v}]
    return event


def origin_response_event(forwarded_request: dict, usage_headers: bool = True, status: str = "200") -> dict:
    event = json.loads((FIXTURES / "origin-response.json").read_text())
    cf = event["Records"][0]["cf"]
    cf["request"] = copy.deepcopy(forwarded_request)
    cf["request"].pop("body", None)  # response events carry no request body
    cf["response"]["status"] = status
    if not usage_headers:
        for k in [k for k in cf["response"]["headers"] if k.startswith("x-usage-")]:
            del cf["response"]["headers"][k]
    return event


def header(headers: dict, name: str) -> str | None:
    return tollgate_edge.get_header(headers, name)


def assert_generated(resp: dict, status: int) -> dict:
    assert resp["status"] == str(status), resp
    assert tollgate_edge.response_size(resp) < LIMIT_40KB
    assert len(json.dumps(resp).encode()) < LIMIT_40KB
    for name, values in resp["headers"].items():  # CloudFront's shape: lower-case keys, [{key, value}]
        assert name == name.lower() and values[0]["key"].lower() == name
    return json.loads(resp["body"])


async def test_allow_continues_with_hold_headers_then_response_reports_usage(enforcer, redis):
    t = await provision(redis)
    cfg = config(enforcer.url, check_timeout_ms=2000)
    event = viewer_event(t.api_key, headers={"X-Tollgate-Hold-Id": "forged"})
    request_id = "cf_" + event["Records"][0]["cf"]["config"]["requestId"]

    out = viewer_request.handle(event, cfg)
    assert "status" not in out, out  # a request, not a generated response: CloudFront continues
    h = out["headers"]
    hold_id = header(h, "x-tollgate-hold-id")
    assert hold_id.startswith("hold_") and hold_id != "forged"
    assert await redis.hget(t.keys.holds, hold_id) is not None
    assert header(h, "x-tollgate-request-id") == request_id
    assert int(header(h, "x-tollgate-remaining-requests")) > 0
    assert header(h, "x-tollgate-estimate-output-tokens") == "64"
    assert header(h, "x-tollgate-model") == "claude-sonnet-4-6"
    assert header(h, "x-tollgate-rl-x-ratelimit-limit") == "100000"

    resp_event = origin_response_event(out)
    resp = viewer_response.handle(resp_event, cfg)
    rh = resp["headers"]
    assert header(rh, "X-RateLimit-Limit") == "100000"
    assert header(rh, "RateLimit-Limit") == "100000"
    assert header(rh, "X-Tollgate-Reason") == "ok"
    assert rh["x-ratelimit-limit"][0]["key"] == "X-RateLimit-Limit"

    usage = await wait_usage(redis, request_id)
    assert usage["hold_id"] == hold_id
    assert usage["id"] == f"evt_{request_id}"
    assert usage["customer_id"] == t.customer_id
    assert usage["properties"]["gateway"] == "lambda_edge"
    assert usage["properties"]["model"] == "claude-sonnet-4-6"
    assert usage["measurements"] == [{"metric": "input_tokens", "value": 120}, {"metric": "output_tokens", "value": 45},
                                     {"metric": "cache_read_tokens", "value": 7}]


async def test_response_without_usage_headers_reports_zero_or_the_estimate(enforcer, redis):
    t = await provision(redis)
    for bill, expected in ((False, [0, 0]), (True, None)):
        cfg = config(enforcer.url, check_timeout_ms=2000, bill_estimate_without_usage=bill)
        event = viewer_event(t.api_key)
        out = viewer_request.handle(event, cfg)
        viewer_response.handle(origin_response_event(out, usage_headers=False), cfg)
        usage = await wait_usage(redis, header(out["headers"], "x-tollgate-request-id"))
        values = [m["value"] for m in usage["measurements"]]
        if expected is None:
            assert usage["properties"]["usage_source"] == "estimate"
            assert values == [int(header(out["headers"], "x-tollgate-estimate-input-tokens")), 64]
        else:
            assert usage["properties"]["usage_source"] == "none"
            assert values == expected


async def test_deny_rate_limited_is_a_generated_429_with_retry_after(enforcer, redis):
    t = await provision(redis, requests_per_minute=1)
    cfg = config(enforcer.url, check_timeout_ms=2000)
    assert "status" not in viewer_request.handle(viewer_event(t.api_key), cfg)
    resp = viewer_request.handle(viewer_event(t.api_key), cfg)
    body = assert_generated(resp, 429)
    assert body == {"error": {"message": openai_errors.REASONS["rate_limited_requests"]["message"], "type": "requests",
                              "param": None, "code": "rate_limit_exceeded", "tollgate_reason": "rate_limited_requests",
                              "tollgate_level": "key"}}  # OpenAI's shape (gateway_plugins/openai_errors.json)
    assert int(header(resp["headers"], "retry-after")) >= 1 and header(resp["headers"], "x-should-retry") is None
    assert header(resp["headers"], "x-ratelimit-remaining") == "0"
    assert resp["statusDescription"] == "Too Many Requests"


async def test_deny_out_of_balance_and_bad_keys(enforcer, redis):
    broke = await provision(redis, wallet=0)
    cfg = config(enforcer.url, check_timeout_ms=2000)
    resp = viewer_request.handle(viewer_event(broke.api_key), cfg)
    body = assert_generated(resp, 402)  # money: OpenAI's insufficient_quota, and no retry
    assert (body["error"]["type"], body["error"]["code"]) == ("insufficient_quota", "insufficient_quota")
    assert body["error"]["tollgate_reason"] == "insufficient_balance" and body["error"]["tollgate_level"] == "customer"
    assert header(resp["headers"], "x-should-retry") == "false" and header(resp["headers"], "retry-after") is None
    assert resp["statusDescription"] == "Payment Required"
    suspended = await provision(redis)
    await redis.hset(suspended.keys.cfg, "status", "suspended")
    resp = viewer_request.handle(viewer_event(suspended.api_key), cfg)
    body = assert_generated(resp, 403)
    assert (body["error"]["code"], body["error"]["tollgate_reason"]) == ("account_suspended", "suspended")
    assert header(resp["headers"], "x-should-retry") == "false"
    body = assert_generated(viewer_request.handle(viewer_event("tg_live_nobody"), cfg), 401)
    assert (body["error"]["code"], body["error"]["tollgate_reason"]) == ("invalid_api_key", "invalid_api_key")
    body = assert_generated(viewer_request.handle(viewer_event(None), cfg), 401)
    assert (body["error"]["code"], body["error"]["tollgate_reason"]) == ("invalid_api_key", "missing_api_key")


async def test_bearer_key_and_a_truncated_body(enforcer, redis):
    t = await provision(redis, tokens_per_minute=1000)
    cfg = config(enforcer.url, check_timeout_ms=2000, api_key_header="authorization")
    event = viewer_event(None, headers={"Authorization": f"Bearer {t.api_key}"})
    req = event["Records"][0]["cf"]["request"]
    raw = b'{"model": "claude-haiku", "max_tokens": 900, "messages": [{"role": "user", "content": "' + b"x" * 100
    req["body"] = {"inputTruncated": True, "action": "read-only", "encoding": "base64",
                   "data": base64.b64encode(raw).decode()}
    req["headers"]["content-length"] = [{"key": "Content-Length", "value": "400"}]
    out = viewer_request.handle(event, cfg)
    assert "status" not in out, out
    assert header(out["headers"], "x-tollgate-model") == "claude-haiku"
    assert header(out["headers"], "x-tollgate-estimate-output-tokens") == "900"
    assert header(out["headers"], "x-tollgate-estimate-input-tokens") == "100"  # Content-Length / 4
    # 900 + 100 of 1000 tokens/min used: the next one is denied on tokens
    event2 = viewer_event(None, headers={"Authorization": f"Bearer {t.api_key}"})
    body = assert_generated(viewer_request.handle(event2, cfg), 429)
    assert body["error"]["tollgate_reason"] == "rate_limited_tokens" and body["error"]["type"] == "tokens"


def _assert_failed_open(out):
    assert "status" not in out, out
    assert header(out["headers"], "x-tollgate-degraded") == "fail-open"
    assert header(out["headers"], "x-tollgate-hold-id") is None


async def test_sidecar_down_fails_open():
    out = viewer_request.handle(viewer_event("tg_any"), config(dead_url()))
    _assert_failed_open(out)
    resp = viewer_response.handle(origin_response_event(out), config(dead_url()))
    assert header(resp["headers"], "X-Tollgate-Degraded") == "fail-open"  # the client sees it too


async def test_sidecar_hung_fails_open_within_the_timeout():
    hung = HungServer().start()
    try:
        cfg = config(hung.url)  # the default 300 ms
        assert cfg["check_timeout_ms"] == 300
        t0 = time.monotonic()
        out = viewer_request.handle(viewer_event("tg_any"), cfg)
        elapsed = time.monotonic() - t0
        _assert_failed_open(out)
        assert hung.accepted >= 1
        assert 0.3 <= elapsed < 0.3 + 0.3, elapsed
    finally:
        hung.stop()


async def test_sidecar_garbage_fails_open_or_closed_by_config():
    garbage = GarbageServer().start()
    try:
        _assert_failed_open(viewer_request.handle(viewer_event("tg_any"), config(garbage.url)))
        body = assert_generated(viewer_request.handle(viewer_event("tg_any"), config(garbage.url, fault_tolerant=False)), 503)
        assert (body["error"]["type"], body["error"]["tollgate_reason"]) == ("server_error", "sidecar_unavailable")
    finally:
        garbage.stop()


def test_generated_responses_are_refused_past_40kb():
    small = tollgate_edge.generated_response(429, {"message": "x"}, {"Retry-After": "1"})
    assert tollgate_edge.response_size(small) < LIMIT_40KB
    with pytest.raises(ValueError, match="40 KB"):
        tollgate_edge.generated_response(429, {"message": "x" * LIMIT_40KB}, {})


def test_config_validation():
    with pytest.raises(tollgate_edge.ConfigError, match="sidecar_url"):
        tollgate_edge.validate_config({})
    with pytest.raises(tollgate_edge.ConfigError, match="check_timeout_ms"):
        tollgate_edge.validate_config({"sidecar_url": "http://x", "check_timeout_ms": 5000})
    with pytest.raises(tollgate_edge.ConfigError, match="unknown"):
        tollgate_edge.validate_config({"sidecar_url": "http://x", "timeout": 1})
    cfg = tollgate_edge.validate_config({"sidecar_url": "https://tollgate.example.com"})
    assert cfg["check_timeout_ms"] == 300 and cfg["fault_tolerant"] is True


def test_build_bakes_the_config_and_stays_under_1mb(tmp_path):
    out = build.build({"sidecar_url": "https://tollgate.example.com", "check_timeout_ms": 250}, tmp_path / "edge.zip")
    assert out.stat().st_size < 1024 * 1024
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == sorted([*build.MODULES, *build.SHARED, tollgate_edge.CONFIG_FILE])
        baked = json.loads(z.read(tollgate_edge.CONFIG_FILE))
    assert baked["sidecar_url"] == "https://tollgate.example.com" and baked["check_timeout_ms"] == 250
    with pytest.raises(ValueError, match="1 MB"):
        build.build({"sidecar_url": "https://x.example.com"}, tmp_path / "big.zip", max_bytes=1000)
    assert not (tmp_path / "big.zip").exists()
    r = subprocess.run([sys.executable, "-m", "gateway_plugins.lambda_edge.build", "--out", str(tmp_path / "x.zip")],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 2 and "sidecar_url" in r.stderr


def _lambda_local(tmp_path: Path, package: Path, handler_file: str, event: dict) -> dict:
    run_dir = tmp_path / f"run_{uuid.uuid4().hex[:6]}"
    with zipfile.ZipFile(package) as z:
        z.extractall(run_dir)
    (run_dir / "event.json").write_text(json.dumps(event))
    exe = shutil.which("python-lambda-local", path=str(Path(sys.executable).parent)) or "python-lambda-local"
    r = subprocess.run([exe, "-f", "handler", "-t", "5", str(run_dir / handler_file), str(run_dir / "event.json")],
                       capture_output=True, text=True, timeout=60, cwd=run_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT:" in r.stdout, r.stdout
    return ast.literal_eval(r.stdout.split("RESULT:\n", 1)[1].strip())


async def test_the_built_package_through_python_lambda_local(enforcer, redis, tmp_path):
    t = await provision(redis, requests_per_minute=1)
    package = build.build({"sidecar_url": enforcer.url, "check_timeout_ms": 2000}, tmp_path / "edge.zip")
    event = viewer_event(t.api_key)
    out = _lambda_local(tmp_path, package, "viewer_request.py", event)
    hold_id = header(out["headers"], "x-tollgate-hold-id")
    assert hold_id and await redis.hget(t.keys.holds, hold_id) is not None

    resp = _lambda_local(tmp_path, package, "viewer_response.py", origin_response_event(out))
    assert header(resp["headers"], "x-ratelimit-limit") == "1"
    usage = await wait_usage(redis, header(out["headers"], "x-tollgate-request-id"))
    assert usage["hold_id"] == hold_id

    denied = _lambda_local(tmp_path, package, "viewer_request.py", viewer_event(t.api_key))
    body = assert_generated(denied, 429)
    assert int(header(denied["headers"], "retry-after")) >= 1
    assert body["error"]["code"] == "rate_limit_exceeded"  # openai_errors shipped in the zip


async def test_an_estimate_above_the_whole_limit_is_429_without_retry(enforcer, redis):
    t = await provision(redis, tokens_per_minute=1000)
    cfg = config(enforcer.url, check_timeout_ms=2000)
    resp = viewer_request.handle(viewer_event(t.api_key, {"model": "m", "max_tokens": 5000, "messages": []}), cfg)
    body = assert_generated(resp, 429)  # the table's row (waiting helps a tokens limit) ...
    assert body["error"]["tollgate_reason"] == "rate_limited_tokens"
    # ... but the enforcer said waiting cannot cure this one: OpenAI's SDKs must not retry it
    assert header(resp["headers"], "x-should-retry") == "false" and header(resp["headers"], "retry-after") is None


async def test_the_viewers_trace_context_reaches_the_enforcer_and_its_events(redis, redis_server, tmp_path):
    """Through an enforcer with tracing on: its spans are children of the viewer's, and the events
    on the bus carry the trace on to the rater."""
    t = await provision(redis)
    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    with OtlpCollector() as collector, run_enforcer({
            "TOLLGATE_REDIS_URL": redis_server.url, **DECISION_ENV, "TOLLGATE_SPOOL_PATH": str(tmp_path / "spool"),
            **collector.env()}) as traced:
        cfg = config(traced.url, check_timeout_ms=2000)
        event = viewer_event(t.api_key, headers={"traceparent": f"00-{trace_id}-{span_id}-01", "tracestate": "cf=1"})
        request_id = "cf_" + event["Records"][0]["cf"]["config"]["requestId"]
        out = viewer_request.handle(event, cfg)
        assert "status" not in out, out
        viewer_response.handle(origin_response_event(out), cfg)
        spans = await collector.wait_for(["POST /v1/check", "POST /v1/usage"])
    assert {spans[n].trace_id for n in spans} == {trace_id}
    assert spans["POST /v1/check"].parent_span_id == spans["POST /v1/usage"].parent_span_id == span_id
    usage = await wait_usage(redis, request_id)
    decision = await wait_event(redis, "decision", "request_id", request_id)
    assert usage["traceparent"] == f"00-{trace_id}-{spans['POST /v1/usage'].span_id}-01"
    assert decision["traceparent"] == f"00-{trace_id}-{spans['POST /v1/check'].span_id}-01"
    assert usage["tracestate"] == "cf=1"
    # a malformed traceparent is not passed on (and a control character never)
    assert tollgate_edge.trace_headers({"traceparent": [{"value": "00-zz-01"}]}) == {}
    assert tollgate_edge.trace_headers({"traceparent": [{"value": f"00-{trace_id}-{span_id}-01"}],
                                        "tracestate": [{"value": "a=b\r\nx: 1"}]}) == {
        "traceparent": f"00-{trace_id}-{span_id}-01"}
