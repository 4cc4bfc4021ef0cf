"""Lambda@Edge response handler (viewer-response or origin-response trigger): the rate-limit
headers of the check reach the client, and the usage is reported to POST /v1/usage.

It reads what viewer_request.handler added to the request (X-Tollgate-Request-Id, -Hold-Id, the
estimate and the X-Tollgate-Rl-* copies of the rate-limit headers). Token counts come from the
origin's response headers (config `usage_headers`, default X-Usage-Input-Tokens,
X-Usage-Output-Tokens, X-Usage-Cache-Read-Tokens, X-Usage-Cache-Write-Tokens): Lambda@Edge
never sees the response body. Without them the report carries zero tokens (the hold is
released), or the estimate with bill_estimate_without_usage.

Lambda@Edge cannot work after returning, so the report is sent before the response leaves,
bounded by usage_timeout_ms; a failed report is logged and the response is not held back.
origin-response is the recommended trigger for uncacheable API traffic: it runs once per origin
fetch, sees the request exactly as viewer_request forwarded it, and adds no latency for cache hits.

Handler: viewer_response.handler.
"""
from __future__ import annotations

try:  # in the repository: packages; in the deployed zip: top-level modules (build.MODULES, SHARED)
    from .. import check_contract as contract
    from . import tollgate_edge as edge
except ImportError:  # pragma: no cover - exercised by the packaged (python-lambda-local) test
    import check_contract as contract
    import tollgate_edge as edge


def _int_header(headers: dict, name: str) -> int | None:
    v = edge.get_header(headers, name)
    if v is None:
        return None
    try:
        n = int(v.strip())
    except ValueError:
        return None
    return n if 0 <= n <= contract.MAX_TOKENS else None


def usage_event(request: dict, response: dict, config: dict, api_key: str) -> dict:
    rh, sh = request.get("headers", {}), response.get("headers", {})
    request_id = edge.get_header(rh, edge.H_REQUEST)
    measurements = []
    for metric, header in config["usage_headers"].items():
        n = _int_header(sh, header)
        if n is not None:
            measurements.append({"metric": metric, "value": n})
    status = int(response.get("status") or 0)
    source = "response"
    if not measurements:
        if 200 <= status < 300 and config["bill_estimate_without_usage"]:
            source = "estimate"
            measurements = [{"metric": "input_tokens", "value": _int_header(rh, edge.H_ESTIMATE_INPUT) or 0},
                            {"metric": "output_tokens", "value": _int_header(rh, edge.H_ESTIMATE_OUTPUT) or 0}]
        else:
            source = "none"
            measurements = [{"metric": "input_tokens", "value": 0}, {"metric": "output_tokens", "value": 0}]
    properties = {"request_type": "standard", "status": str(status), "usage_source": source,
                  "gateway": "lambda_edge"}
    model = edge.get_header(rh, edge.H_MODEL)
    if model:
        properties["model"] = model
    if edge.get_header(rh, edge.H_DEGRADED):
        properties["fail_open"] = "true"
    doc = {
        "event_id": "evt_" + request_id,
        "api_key": api_key,
        "correlation_id": request_id,
        "event_type": config["event_type"],
        "timestamp": edge.utc_now(),
        "properties": properties,
        "measurements": measurements,
    }
    hold = edge.get_header(rh, edge.H_HOLD)
    if hold:
        doc["hold_id"] = hold
    return doc


def handle(event: dict, config: dict) -> dict:
    cf = event["Records"][0]["cf"]
    request, response = cf["request"], cf["response"]
    rh = request.get("headers", {})
    request_id = edge.get_header(rh, edge.H_REQUEST)
    if not request_id:
        return response  # not a request the viewer-request handler let through
    sh = response.setdefault("headers", {})
    for name in edge.RATE_LIMIT_HEADERS:
        value = edge.get_header(rh, edge.H_RL_PREFIX + name.lower())
        if value is not None:
            edge.set_header(sh, name, value)
    for suffix in ("Limit", "Remaining", "Reset"):  # Kong-style RateLimit-* siblings
        value = edge.get_header(sh, "X-RateLimit-" + suffix)
        if value is not None and edge.get_header(sh, "RateLimit-" + suffix) is None:
            edge.set_header(sh, "RateLimit-" + suffix, value)

    api_key = edge.extract_api_key(rh, config["api_key_header"])
    if not api_key:
        return response
    doc = usage_event(request, response, config, api_key)
    try:
        status, _, body = edge.post_json(config["sidecar_url"], "/v1/usage", doc, config["usage_timeout_ms"],
                                         edge.trace_headers(rh))
        if status not in (200, 202):
            edge.log("usage report refused", request_id=request_id, status=status, body=body[:512].decode("utf-8", "replace"))
    except edge.SidecarError as e:
        edge.log("usage report failed", request_id=request_id, error=str(e))
    return response


def handler(event, context):
    return handle(event, edge.load_config())
