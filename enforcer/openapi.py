"""The enforcer's HTTP contract as an OpenAPI 3.1 document, served at GET /openapi.json.

Written by hand from enforcer.validation (the bounds below are its constants) and the endpoints;
tests/openapi checks that its operations are the app's routes and runs schemathesis against a real
enforcer (no 5xx, every answer's status, content type, body and headers as documented).
"""
from __future__ import annotations

from typing import Any

from enforcer import cloudevents as ce
from enforcer.usage import MAX_MEASUREMENTS
from enforcer.validation import MAX_BODY, MAX_COUNT
from tollgate.keys import ID_PATTERN
from tollgate.openapi import ERROR_SCHEMA, OPENAPI_VERSION, error_response, header, json_content
from tollgate.plans import MAX_QUANTITY_PER_EVENT_CEILING
from tollgate.rating.sessions import BOUNDARY_TYPES

_ID = {"type": "string", "pattern": ID_PATTERN.pattern}
_REQUEST_ID = {"type": "string", "pattern": r"^[\x21-\x7e]{1,128}$",
               "description": "1-128 printable ASCII characters without spaces."}
_API_KEY = {"type": "string", "minLength": 1, "maxLength": 256}
_INT = {"type": "integer"}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field: null is taken as absent (the validators read a missing field as None)."""
    return {"anyOf": [schema, {"type": "null"}]}


_RATE_HEADERS = {
    "X-RateLimit-Limit": header("Requests per minute of the key's tier.", _INT),
    "X-RateLimit-Remaining": header("Requests left in the current window.", _INT),
    "X-RateLimit-Reset": header("Seconds until the request window is full again.", _INT),
    "X-RateLimit-Limit-Requests": header("OpenAI's name: requests per minute.", _INT),
    "X-RateLimit-Remaining-Requests": header("OpenAI's name: requests left.", _INT),
    "X-RateLimit-Reset-Requests": header("OpenAI's format, a Go duration (`0s`, `20ms`, `1.5s`, `6m0s`): until "
                                         "the requests budget is full again."),
    "X-RateLimit-Limit-Tokens": header("OpenAI's name: tokens per minute.", _INT),
    "X-RateLimit-Remaining-Tokens": header("OpenAI's name: tokens left.", _INT),
    "X-RateLimit-Reset-Tokens": header("A Go duration: until the tokens budget is full again."),
    "RateLimit-Policy": header('IETF draft-ietf-httpapi-ratelimit-headers: `"requests";q=N;w=60, '
                               '"tokens";q=N;qu="tokens";w=60` (requests is the draft\'s default unit; '
                               '`tokens` is not in its registry: clients that do not know it skip the policy).'),
    "RateLimit": header('IETF draft: `"requests";r=N;t=S, "tokens";r=N;t=S` (remaining, whole seconds).'),
    "X-Tollgate-Reason": header("The decision's reason (as in the body), or `invalid_api_key`/`overloaded`."),
    "X-Tollgate-Degraded": header("`fail-open`: decided without Redis (ALLOW, billed from the usage report)."),
    "X-Tollgate-Hold-Id": header("The hold an ALLOW placed: the usage report names it."),
    "X-Tollgate-Replayed": header("`true`: a retry of an allowed request id; nothing was held again."),
    "X-Tollgate-Level": header("On a DENY: the level of the billing hierarchy that decided (as `level` in the body)."),
}

# W3C Trace Context (tollgate.tracing): read only with TOLLGATE_TRACING on; never a reason to refuse.
_TRACE_HEADERS = [
    {"name": "traceparent", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "W3C Trace Context of the caller (a gateway's span). With tracing on (TOLLGATE_TRACING) the "
                    "enforcer's span is its child and the events this request puts on the bus carry that span's "
                    "context to the rater; a malformed value is ignored (a new trace), never refused."},
    {"name": "tracestate", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "W3C Trace Context vendor state, passed on with traceparent."},
]

_DECISION = {
    "type": "object",
    "required": ["decision", "reason", "hold_id", "retry_after_ms", "remaining", "tier"],
    "properties": {
        "decision": {"enum": ["ALLOW", "DENY"]},
        "reason": {"type": "string", "description": "ok, rate_limited_requests, rate_limited_tokens, "
                   "insufficient_balance, spend_cap, suspended (the customer is suspended or archived: checked first), "
                   "margin_guard (a Margin Guard tripped on the request's path or session: no Retry-After), "
                   "concurrency_limited (a level's max_in_flight open holds), "
                   "fail_open, ... (reasons grow with the product)."},
        "level": {"enum": ["key", "app", "agent", "team", "customer", "session"],
                  "description": "DENY only: the level of the billing hierarchy that decided (customer for the "
                                 "wallet, the customer's cap and a suspension; session for a guard on the session)."},
        "hold_id": {"type": ["string", "null"]},
        "retry_after_ms": {"type": "integer", "minimum": 0},
        "remaining": {
            "type": "object",
            "required": ["requests", "tokens", "balance", "spend_cap"],
            "properties": {
                "requests": {"type": ["integer", "null"]},
                "tokens": {"type": ["integer", "null"]},
                "balance": {"type": ["string", "null"], "description": "Currency units, a decimal string."},
                "spend_cap": {"type": ["string", "null"], "description": "Left of the cap; null: no cap."},
            },
        },
        "tier": {"type": ["string", "null"]},
    },
}

_CHECK_REQUEST = {
    "type": "object",
    "required": ["api_key", "request_id"],
    "properties": {
        "api_key": _API_KEY,
        "request_id": {**_REQUEST_ID, "description": "The gateway's request id: a retry with the same id "
                       "never places a second hold."},
        "dimensions": _or_null({"type": "object", "maxProperties": 64,
                                "additionalProperties": {"type": ["string", "number", "boolean"]},
                                "description": "What the price depends on, e.g. {\"model\": \"claude-sonnet-4-6\"}."}),
        "session_id": _or_null({**_ID, "description": "The agent session the request belongs to: a Margin Guard "
                                "tripped on it DENYs `margin_guard` (level session)."}),
        "estimate": _or_null({"type": "object", "propertyNames": _ID,
                              "additionalProperties": {"type": "integer", "minimum": 0, "maximum": MAX_COUNT},
                              "description": "Units the request is expected to use, by metric; `requests` "
                                             "defaults to 1. Counts are JSON integers: 3.0 is refused (400)."}),
    },
}

_USAGE_REQUEST = {
    "type": "object",
    "required": ["event_id", "api_key"],
    # measurements: required and non-empty, except for an agent session's start and end
    "anyOf": [{"required": ["measurements"], "properties": {"measurements": {"type": "array", "minItems": 1}}},
              {"required": ["event_type"], "properties": {"event_type": {"enum": list(BOUNDARY_TYPES)},
                                                          "measurements": {"type": ["array", "null"], "maxItems": 0}}}],
    "properties": {
        "event_id": {**_REQUEST_ID, "description": "Idempotency key: the same id is billed once."},
        "api_key": _API_KEY,
        "correlation_id": _or_null(_REQUEST_ID),
        "hold_id": _or_null(_REQUEST_ID),
        "event_type": _or_null({**_REQUEST_ID, "description": "e.g. `llm.completion`; `agent.session.start` and "
                                "`agent.session.end` mark an agent session's start and end."}),
        "session_id": _or_null({**_ID, "description": "The agent session the event belongs to (top-level on the bus "
                                "event): on a plan with `sessions`, the session's events are billed as one session "
                                "at its end (or after its idle timeout); otherwise attribution only."}),
        "timestamp": _or_null({"type": "string", "format": "date-time", "description": "RFC 3339 with an "
                               "offset; default: when the enforcer received it."}),
        "properties": _or_null({"type": "object"}),
        "measurements": {
            "type": ["array", "null"], "maxItems": MAX_MEASUREMENTS,
            "description": "Required and non-empty (400 otherwise), except for the event types "
                           "`agent.session.start` and `agent.session.end`, which may measure nothing. Each metric "
                           "at most once (400 otherwise). Values are JSON integers: 3.0 is refused.",
            "items": {"type": "object", "required": ["metric", "value"], "properties": {
                "metric": _ID,
                "value": {"type": "integer", "minimum": 0, "maximum": MAX_QUANTITY_PER_EVENT_CEILING,
                          "description": "At most the plan's limits.max_quantity_per_event (422 beyond)."},
            }},
        },
    },
}

_CLOUDEVENT = {
    "type": "object",
    "description": "A CloudEvents 1.0 event in structured mode (JSON event format) whose `data` is the usage "
                   "event: `id` is its event_id (the idempotency key), `time` its timestamp, `type` its event_type "
                   "unless `data` names one. `data` may repeat event_id or timestamp only with the same value. A bad "
                   "attribute is a 400 naming it; a bad usage field is named under `data.`.",
    "required": ["specversion", "id", "source", "type", "data"],
    "properties": {
        "specversion": {"const": ce.SPEC_VERSION},
        "id": _REQUEST_ID,
        "source": {"type": "string", "minLength": 1, "description": "URI-reference of the producer (checked, not stored)."},
        "type": {"type": "string", "minLength": 1, "description": "e.g. `llm.completion`: the event_type unless data gives one."},
        "time": _or_null({"type": "string", "format": "date-time"}),
        "datacontenttype": _or_null({"type": "string", "pattern": r"^application/([A-Za-z0-9.-]+\+)?json(\s*;.*)?$",
                                     "description": "JSON (or absent): `data_base64` is refused."}),
        "data": {**_USAGE_REQUEST, "required": ["api_key"]},
    },
}

_BAD_INPUT = {
    "400": error_response("Malformed JSON or an invalid field (`field` names it)."),
    "413": error_response(f"The body is over {MAX_BODY} bytes."),
    "415": error_response("Content-Type is not application/json (/v1/usage: nor application/cloudevents+json or "
                          "application/cloudevents-batch+json)."),
}
_UNAUTHORIZED = error_response("Unknown (or, for /v1/check, revoked) API key.",
                               {"WWW-Authenticate": header("`Bearer realm=\"tollgate\"`")})
_TRANSPORT = {
    "408": error_response("The request did not arrive within the read timeout (the connection is closed)."),
    "431": error_response("The request line and headers are over the head limit (the connection is closed)."),
}

_CHECK_RESPONSES = {
    "200": {"description": "ALLOW (also `fail_open`, flagged X-Tollgate-Degraded, when Redis gave no decision).",
            "headers": _RATE_HEADERS, "content": json_content(_DECISION)},
    "429": {"description": "DENY; Retry-After when waiting helps (rate limits, in-flight limits); none for "
            "money, a suspension, a Margin Guard or an estimate above the whole limit, which carry "
            "`X-Should-Retry: false` instead.",
            "headers": {**_RATE_HEADERS, "Retry-After": header("Seconds, >= 1.", _INT),
                        "X-Should-Retry": header("`false` when waiting cannot cure the DENY: insufficient_balance, "
                                                 "spend_cap, suspended, margin_guard, an estimate above the "
                                                 "whole limit (OpenAI's SDKs honour it before the status).",
                                                 {"type": "string", "enum": ["false"]})},
            "content": json_content(_DECISION)},
    "401": _UNAUTHORIZED,
    **_BAD_INPUT,
    "503": error_response("Overloaded: answered at once without a decision (gateways fail open).",
                          {"X-Tollgate-Reason": header("`overloaded`")}),
    **_TRANSPORT,
}

def _in_header(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A header of GET /v1/check (every one optional, an empty one counts as absent)."""
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _or_empty(schema: dict[str, Any]) -> dict[str, Any]:
    """A header the forward-auth check takes as absent when empty."""
    return {"anyOf": [schema, {"type": "string", "maxLength": 0}]}


_DIGITS = _or_empty({"type": "string", "pattern": r"^[0-9]{1,15}$"})
_FORWARD_AUTH_HEADERS = [
    _in_header("X-Api-Key", "The API key (else `Authorization: Bearer <key>`); one of the two is required."),
    _in_header("Authorization", "`Bearer <key>`, when X-Api-Key is absent."),
    _in_header("X-Tollgate-Request-Id", "The gateway's request id (else X-Request-Id); one of the two is required.",
               _or_empty(_REQUEST_ID)),
    _in_header("X-Request-Id", "The request id when X-Tollgate-Request-Id is absent.", _or_empty(_REQUEST_ID)),
    _in_header("X-Tollgate-Model", "dimensions.model."),
    _in_header("X-Tollgate-Session-Id", "session_id.", _or_empty(_ID)),
    _in_header("X-Tollgate-Estimate-Input-Tokens", "estimate.input_tokens.", _DIGITS),
    _in_header("X-Tollgate-Estimate-Output-Tokens", "estimate.output_tokens.", _DIGITS),
    _in_header("X-Tollgate-Content-Length", "The client body's bytes: input_tokens = bytes / 4 (rounded up) "
               "when X-Tollgate-Estimate-Input-Tokens is absent.", _DIGITS),
]


SPEC: dict[str, Any] = {
    "openapi": OPENAPI_VERSION,
    "info": {"title": "tollgate enforcer", "version": "1",
             "description": "Pre-flight quota checks and usage reports at the gateway edge."},
    "paths": {
        "/v1/check": {
            "post": {
                "operationId": "check",
                "parameters": _TRACE_HEADERS,
                "summary": "Decide whether a request may go ahead; ALLOW places a hold on its estimated cost.",
                "requestBody": {"required": True, "content": json_content(_CHECK_REQUEST)},
                "responses": _CHECK_RESPONSES,
            },
            "get": {
                "operationId": "checkForwardAuth",
                "summary": "The same check as forward-auth proxies send it (Caddy forward_auth, Traefik ForwardAuth): "
                           "the fields in headers, no body (a missing or bad header is a 400 naming it).",
                "parameters": _FORWARD_AUTH_HEADERS + _TRACE_HEADERS,
                "responses": _CHECK_RESPONSES,
            },
        },
        "/v1/usage": {"post": {
            "operationId": "reportUsage",
            "parameters": _TRACE_HEADERS,
            "summary": "Report what a call consumed; 202 once the event is durable.",
            "requestBody": {"required": True, "content": {
                **json_content(_USAGE_REQUEST),
                ce.CLOUDEVENT.decode(): {"schema": _CLOUDEVENT},
                ce.CLOUDEVENT_BATCH.decode(): {"schema": {
                    "type": "array", "minItems": 1, "maxItems": ce.MAX_BATCH, "items": _CLOUDEVENT,
                    "description": "Accepted or refused whole: a refusal names the event (`[i].`)."}},
            }},
            "responses": {
                "202": {"description": "Accepted: on the bus, or (`spooled`) in the local write-ahead spool. "
                                       "A CloudEvents batch answers `event_ids` (in order) instead of `event_id`.",
                        "headers": {"X-Tollgate-Degraded": header("`spooled`: the bus was unreachable.")},
                        "content": json_content({
                            "type": "object", "required": ["status", "spooled"],
                            "anyOf": [{"required": ["event_id"]}, {"required": ["event_ids"]}],
                            "properties": {"status": {"const": "accepted"}, "event_id": {"type": "string"},
                                           "event_ids": {"type": "array", "items": {"type": "string"}},
                                           "spooled": {"type": "boolean"}}})},
                "401": _UNAUTHORIZED,
                **_BAD_INPUT,
                "422": error_response("A measurement is over the plan's (or the global) maximum per event."),
                "503": error_response("Neither the bus nor the spool could store it: retry (idempotent by event_id).",
                                      {"Retry-After": header("Seconds.", _INT)}),
                **_TRANSPORT,
            },
        }},
        "/healthz": {"get": {
            "operationId": "healthz", "summary": "The process serves.",
            "responses": {"200": {"description": "Serving.", "content": json_content(
                {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}})}},
        }},
        "/readyz": {"get": {
            "operationId": "readyz", "summary": "Redis answers (past the breaker).",
            "responses": {s: {"description": d, "content": json_content({"$ref": "#/components/schemas/Readiness"})}
                          for s, d in (("200", "Ready."), ("503", "Redis unreachable."))},
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics.",
            "responses": {"200": {"description": "The text exposition format.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document.",
            "responses": {"200": {"description": "OpenAPI 3.1.", "content": json_content({"type": "object"})}},
        }},
    },
    "components": {"schemas": {
        "Error": ERROR_SCHEMA,
        "Readiness": {"type": "object", "required": ["status", "breaker_open", "spool_depth"], "properties": {
            "status": {"enum": ["ready", "redis_unreachable"]}, "breaker_open": {"type": "boolean"},
            "spool_depth": {"type": "integer", "minimum": 0}}},
    }},
}
