"""The enforcer's contract as the Python gateway plugins speak it (Lambda@Edge, the LiteLLM callback):
the estimate a check carries, and reading a /v1/check reply. Standard library only: the
Lambda@Edge package ships this module as is (build.SHARED).
"""
from __future__ import annotations

import json
import math
import re

MAX_TOKENS = 100_000_000  # the largest token count a plugin sends (the enforcer's ceiling)
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def _count(v) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (math.inf, -math.inf) or v < 0:
        return None
    return min(int(v), MAX_TOKENS)


def estimate(raw: bytes | None, truncated: bool, content_length: str | None, cfg: dict) -> tuple[dict, dict]:
    """(dimensions, estimate) of a request: model and output cap from the JSON body (a truncated
    body is searched for them), input tokens as body bytes / bytes_per_token rounded up."""
    model = max_out = None
    if raw:
        doc = None
        if not truncated:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
        if isinstance(doc, dict):
            if isinstance(doc.get("model"), str) and doc["model"]:
                model = doc["model"]
            for k in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
                max_out = _count(doc.get(k))
                if max_out is not None:
                    break
            if max_out is None and isinstance(doc.get("generationConfig"), dict):
                max_out = _count(doc["generationConfig"].get("maxOutputTokens"))
        elif truncated:
            text = raw.decode("utf-8", "replace")
            m = re.search(r'"model"\s*:\s*"([^"\\]{1,128})"', text)
            model = m.group(1) if m else None
            m = re.search(r'"(?:max_tokens|max_completion_tokens|max_output_tokens)"\s*:\s*(\d{1,12})\b', text)
            max_out = _count(int(m.group(1))) if m else None
    size = len(raw) if raw and not truncated else None
    if size is None:
        try:
            size = max(int(content_length or 0), len(raw or b""))
        except ValueError:
            size = len(raw or b"")
    dims = {}
    model = model or cfg.get("default_model")
    if model:
        dims["model"] = model
    est = {
        "requests": 1,
        "input_tokens": min(math.ceil(size / cfg["bytes_per_token"]), MAX_TOKENS),
        "output_tokens": cfg["default_max_tokens"] if max_out is None else max_out,
    }
    return dims, est


def parse_check(status: int, body: bytes, headers: dict) -> dict | None:
    """The decision of a /v1/check reply, or None for anything the contract does not promise
    (5xx, garbage): the caller fails open or closed. 4xx are decisions (see the Kong plugin)."""
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        doc = None
    reason = doc.get("reason") if doc and isinstance(doc.get("reason"), str) else None
    if status == 200:
        if not doc or doc.get("decision") != "ALLOW":
            return None
        hold = doc.get("hold_id")
        if hold is not None and not isinstance(hold, str):
            return None
        return {"allow": True, "hold_id": hold or None, "reason": reason or "ok", "doc": doc}
    if status == 429:
        return {"allow": False, "status": 429, "reason": reason or "rate_limited",
                "retry_after": retry_after(headers, doc), "doc": doc}
    if status in (401, 403):
        return {"allow": False, "status": status, "reason": reason or "invalid_api_key", "doc": doc}
    if status in (400, 413, 415, 422):
        return {"allow": False, "status": 400, "reason": reason or "bad_request", "doc": doc}
    return None


def retry_after(headers: dict, doc: dict | None) -> int | None:
    try:
        v = float(headers.get("retry-after", ""))
        if v >= 0 and math.isfinite(v):
            return max(1, math.ceil(v))
    except ValueError:
        pass
    if doc:
        ms = doc.get("retry_after_ms")
        if isinstance(ms, (int, float)) and not isinstance(ms, bool) and 0 < ms < math.inf:
            return max(1, math.ceil(ms / 1000))
    return None


def trace_context(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """The client's W3C Trace Context as headers for /v1/check and /v1/usage (so the enforcer's
    spans join the client's trace: docs/ARCHITECTURE.md, "Tracing"); {} without a well-formed
    traceparent, and a tracestate only when it is short printable text (never a header injection)."""
    if not traceparent or not _TRACEPARENT.match(traceparent):
        return {}
    out = {"traceparent": traceparent}
    if tracestate and len(tracestate) <= 512 and tracestate.isprintable():
        out["tracestate"] = tracestate
    return out
