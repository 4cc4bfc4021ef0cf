"""Lambda@Edge viewer-request handler: the pre-flight quota check.

ALLOW: the request continues to the origin with X-Tollgate-* headers (hold id, request id,
remaining budgets, the estimate, and the rate-limit headers for the response handler).
DENY: a generated response in OpenAI's error shape (gateway_plugins/openai_errors.json): 429 with
Retry-After, or 402 (money) / 403 (suspended) / 429 with x-should-retry: false when waiting
cannot cure it; 401 for a missing or unknown key, 400 for a refused input.
Sidecar down, slower than check_timeout_ms (default 300 ms, inside the 5 s viewer limit), or
answering garbage: the request continues (fail open) flagged X-Tollgate-Degraded: fail-open,
unless the baked configuration says fault_tolerant: false (then a 503).

Handler: viewer_request.handler. Enable "Include body" on the trigger so the model and max_tokens
can be read from the request body.
"""
from __future__ import annotations

try:  # in the repository: packages; in the deployed zip: top-level modules (build.MODULES, SHARED)
    from .. import check_contract as contract
    from . import tollgate_edge as edge
except ImportError:  # pragma: no cover - exercised by the packaged (python-lambda-local) test
    import check_contract as contract
    import tollgate_edge as edge


def handle(event: dict, config: dict) -> dict:
    cf = event["Records"][0]["cf"]
    request = cf["request"]
    headers = request.setdefault("headers", {})
    for name in [h for h in headers if h.startswith("x-tollgate-")]:
        del headers[name]  # a client must not forge what the origin trusts

    api_key = edge.extract_api_key(headers, config["api_key_header"])
    if not api_key:
        return edge.error_response(401, "invalid_request_error", "invalid_api_key",
                                   "No API key found in request", "missing_api_key")

    request_id = config["request_id_prefix"] + cf["config"]["requestId"]
    raw, truncated = edge.request_body(request)
    dims, est = contract.estimate(raw, truncated, edge.get_header(headers, "content-length"), config)
    edge.set_header(headers, "X-Tollgate-Request-Id", request_id)
    edge.set_header(headers, "X-Tollgate-Estimate-Input-Tokens", est["input_tokens"])
    edge.set_header(headers, "X-Tollgate-Estimate-Output-Tokens", est["output_tokens"])
    if "model" in dims:
        edge.set_header(headers, "X-Tollgate-Model", dims["model"])

    decision = None
    try:
        status, reply_headers, body = edge.post_json(
            config["sidecar_url"], "/v1/check",
            {"api_key": api_key, "request_id": request_id, "dimensions": dims, "estimate": est},
            config["check_timeout_ms"], edge.trace_headers(headers))
        decision = contract.parse_check(status, body, reply_headers)
        error = None if decision else f"unexpected reply: HTTP {status}"
    except edge.SidecarError as e:
        error = str(e)

    if decision is None:
        if not config["fault_tolerant"]:
            edge.log("sidecar failed, denying", request_id=request_id, error=error)
            return edge.error_response(503, "server_error", "service_unavailable", "Service temporarily unavailable",
                                       "sidecar_unavailable")
        edge.log("sidecar failed, failing open", request_id=request_id, error=error)
        edge.set_header(headers, "X-Tollgate-Degraded", "fail-open")
        edge.set_header(headers, edge.H_RL_PREFIX + "x-tollgate-degraded", "fail-open")
        return request

    rate_headers = {name: reply_headers[name.lower()] for name in edge.RATE_LIMIT_HEADERS
                    if reply_headers.get(name.lower())}
    if not decision["allow"]:
        return edge.deny_response(decision, reply_headers, rate_headers)

    doc = decision["doc"]
    if decision["hold_id"]:
        edge.set_header(headers, "X-Tollgate-Hold-Id", decision["hold_id"])
    remaining = doc.get("remaining") if isinstance(doc.get("remaining"), dict) else {}
    for field, name in (("requests", "X-Tollgate-Remaining-Requests"), ("tokens", "X-Tollgate-Remaining-Tokens"),
                        ("balance", "X-Tollgate-Remaining-Balance")):
        if remaining.get(field) is not None:
            edge.set_header(headers, name, remaining[field])
    if decision["reason"] == "fail_open":
        edge.set_header(headers, "X-Tollgate-Degraded", "fail-open")
    for name, value in rate_headers.items():
        edge.set_header(headers, edge.H_RL_PREFIX + name.lower(), value)
    return request


def handler(event, context):
    return handle(event, edge.load_config())
