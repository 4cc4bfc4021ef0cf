"""GET /v1/check: the check as forward-auth proxies send it (Caddy `forward_auth`, Traefik
ForwardAuth, Envoy ext_authz over HTTP): a copy of the client's request headers and no body.

The check's fields come from headers instead, then go through the POST endpoint unchanged (same
validation, decision, answer and headers):

    api_key     X-Api-Key, else `Authorization: Bearer <key>` (what OpenAI clients send)
    request_id  X-Tollgate-Request-Id, else X-Request-Id (required: the gateway's request id)
    model       X-Tollgate-Model (optional: dimensions.model)
    session_id  X-Tollgate-Session-Id (optional)
    estimate    X-Tollgate-Estimate-Input-Tokens / -Output-Tokens (optional whole numbers);
                without an input estimate, X-Tollgate-Content-Length (the client body's size, which
                the proxy can copy) gives one token per 4 bytes, as the Lambda@Edge and APIM plugins
                estimate. `requests` is 1.

An empty header counts as absent (a proxy copying a header the client did not send). A missing or
malformed header is a 400 naming it; an unknown key is 401, as for POST.
"""
from __future__ import annotations

import orjson

from enforcer import metrics
from enforcer import validation as v
from enforcer.responses import send_error

_ESTIMATES = ((b"x-tollgate-estimate-input-tokens", "input_tokens", "X-Tollgate-Estimate-Input-Tokens"),
              (b"x-tollgate-estimate-output-tokens", "output_tokens", "X-Tollgate-Estimate-Output-Tokens"))
_POST_JSON = [(b"content-type", b"application/json")]


async def not_post(check, scope: dict, send) -> None:
    """/v1/check by any method but POST (enforcer.checks.CheckEndpoint sends them here, so a POST
    pays for no second method test): GET through the headers above, as a POST to `check`; 405 else."""
    if scope["method"] != "GET":
        return await send_error(send, v.BadRequest(405, "method_not_allowed", "use POST (or GET, the check in headers)"),
                                ((b"allow", b"GET, POST"),))
    try:
        body = orjson.dumps(check_doc(dict(scope["headers"])))
    except v.BadRequest as e:
        metrics.BAD_REQUESTS.labels(str(e.status)).inc()
        return await send_error(send, e)

    async def receive_doc():
        return {"type": "http.request", "body": body, "more_body": False}

    await check({**scope, "method": "POST", "headers": _POST_JSON}, receive_doc, send)


def check_doc(headers: dict[bytes, bytes]) -> dict:
    """The POST body a forward-auth request's headers stand for (BadRequest naming the header)."""
    key = _text(headers, b"x-api-key")
    if key is None:
        auth = _text(headers, b"authorization") or ""
        scheme, _, token = auth.partition(" ")
        key = token.strip() if scheme.lower() == "bearer" and token.strip() else None
    if key is None:
        raise v.invalid("X-Api-Key", "required (or Authorization: Bearer <key>)")
    shown = "X-Tollgate-Request-Id" if headers.get(b"x-tollgate-request-id") else "X-Request-Id"
    request_id = _text(headers, shown.lower().encode())
    if request_id is None:
        raise v.invalid("X-Tollgate-Request-Id", "required (or X-Request-Id): the gateway's id of the request")
    _as_header(v.req_str, {"request_id": request_id}, "request_id", shown)
    doc: dict = {"api_key": key, "request_id": request_id, "estimate": {"requests": 1}}
    model = _text(headers, b"x-tollgate-model")
    if model:
        doc["dimensions"] = {"model": model}
    session = _text(headers, b"x-tollgate-session-id")
    if session:
        doc["session_id"] = _as_header(v.session_id, {"session_id": session}, None, "X-Tollgate-Session-Id")
    for name, metric, shown in _ESTIMATES:
        value = _count(headers, name, shown)
        if value is not None:
            doc["estimate"][metric] = value
    size = _count(headers, b"x-tollgate-content-length", "X-Tollgate-Content-Length")  # checked even when unused
    if size and "input_tokens" not in doc["estimate"]:
        doc["estimate"]["input_tokens"] = (size + 3) // 4
    return doc


def _as_header(validate, doc: dict, field: str | None, shown: str):
    """A body validator's verdict on a header's value, naming the header."""
    try:
        return validate(doc, field) if field else validate(doc)
    except v.BadRequest as e:
        raise v.invalid(shown, e.message.split(": ", 1)[-1]) from None


def _text(headers: dict[bytes, bytes], name: bytes) -> str | None:
    raw = headers.get(name)
    if not raw:  # absent or empty (a proxy copying a header the client did not send)
        return None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise v.invalid(name.decode(), "must be ASCII") from None


def _count(headers: dict[bytes, bytes], name: bytes, shown: str) -> int | None:
    text = _text(headers, name)
    if text is None:
        return None
    if not text.isdigit() or len(text) > 15:  # past 15 digits it is over the count's maximum anyway
        raise v.invalid(shown, "must be a whole number")
    return v.count(int(text), shown)
