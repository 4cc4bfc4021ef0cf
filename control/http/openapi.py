"""The admin API as an OpenAPI 3.1 document, served at GET /openapi.json (no token needed: it
says what the API is, nothing about the data behind it).

Written by hand from control.http.app (imported by it when the app is made: it reads its constants) and the control services' validators (control.fields);
tests/openapi checks that its operations are the app's routes and runs schemathesis against a
real admin API on PostgreSQL and Redis (no 5xx, every answer as documented).
"""
from __future__ import annotations

from typing import Any

from control.http.app import MAX_BODY, YAML_TYPES
from control.credit_grants import KINDS as GRANT_KINDS, MAX_PRIORITY
from control.customers import MAX_PAGE
from control.fields import MAX_AMOUNT
from tollgate.keys import ID_PATTERN
from tollgate.openapi import ERROR_SCHEMA, OPENAPI_VERSION, error_response, header, json_content
from tollgate.plans import BILLING_MODES

_ID = {"type": "string", "pattern": ID_PATTERN.pattern}
_TIME = {"type": "string", "format": "date-time"}
_MONEY_OUT = {"type": "string", "description": "Currency units, a decimal string with up to 6 decimals."}
_MONEY_IN = {"type": ["string", "integer"], "description": f"Currency units: a decimal string (\"10.50\", at most "
             f"6 decimals) or an integer, at most {MAX_AMOUNT}. Floats are refused."}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field: null is taken as absent (the services read a missing field as None)."""
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


_SCHEMAS: dict[str, Any] = {
    "Error": ERROR_SCHEMA,
    "PlanApplied": _obj(["id", "name", "version", "changed", "customers_reprojected"], id=_ID, name={"type": "string"},
                        version={"type": "integer"}, changed={"type": "boolean"},
                        customers_reprojected={"type": "integer"}),
    "PlanSummary": _obj(["id", "name", "version", "customers", "updated_at"], id=_ID, name={"type": "string"},
                        version={"type": "integer"}, customers={"type": "integer"}, updated_at=_TIME),
    "Plan": _obj(["id", "name", "version", "currency", "billing_mode", "tiers", "updated_at", "document"],
                 id=_ID, name={"type": "string"}, version={"type": "integer"}, currency={"type": "string"},
                 billing_mode={"enum": list(BILLING_MODES)}, tiers={"type": "array", "items": {"type": "string"}},
                 updated_at=_TIME, document={"type": "object", "description": "The plan document as applied."}),
    "Wallet": _obj(["currency", "balance", "held", "available", "topups_total", "topups"],
                   currency={"type": "string"}, balance=_MONEY_OUT, held=_MONEY_OUT, available=_MONEY_OUT,
                   topups_total=_MONEY_OUT, topups={"type": "integer"}),
    "Customer": _obj(["id", "name", "plan_id", "billing_mode", "tier", "spend_cap", "created_at"],
                     id=_ID, name={"type": "string"}, plan_id=_ID, billing_mode={"enum": list(BILLING_MODES)},
                     tier={"type": "string"}, spend_cap={"type": ["string", "null"]}, created_at=_TIME,
                     api_keys=_obj(["active", "total"], active={"type": "integer"}, total={"type": "integer"}),
                     wallet=_ref("Wallet")),
    "ApiKey": _obj(["id", "customer_id", "prefix", "status", "created_at", "revoked_at"],
                   id=_ID, customer_id=_ID, prefix={"type": "string"}, status={"enum": ["active", "revoked"]},
                   created_at=_TIME, revoked_at={"type": ["string", "null"], "format": "date-time"}),
    "Topup": _obj(["id", "customer_id", "amount", "credited", "balance", "created_at"],
                  id=_ID, customer_id=_ID, amount=_MONEY_OUT, credited={"type": "boolean"}, balance=_MONEY_OUT,
                  created_at=_TIME),
    "Adjustment": _obj(["id", "customer_id", "amount", "reason", "created_at"],
                       id=_ID, customer_id=_ID, amount={**_MONEY_OUT, "description": "Negative for a debit."},
                       reason={"type": "string"}, applied={"type": "boolean"}, balance=_MONEY_OUT, created_at=_TIME),
    "CreditGrant": _obj(["id", "customer_id", "kind", "priority", "amount", "remaining", "expires_at", "status",
                         "expired_amount", "expired_at", "note", "created_at"],
                        id=_ID, customer_id=_ID, kind={"enum": list(GRANT_KINDS)},
                        priority={"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY},
                        amount=_MONEY_OUT, remaining=_MONEY_OUT, expires_at={"type": ["string", "null"], "format": "date-time"},
                        status={"enum": ["active", "used", "expired"]}, expired_amount={"type": ["string", "null"]},
                        expired_at={"type": ["string", "null"], "format": "date-time"}, note={"type": ["string", "null"]},
                        created_at=_TIME, credited={"type": "boolean"}, balance=_MONEY_OUT),
    "AutoRecharge": _obj(["customer_id", "enabled", "threshold", "amount", "armed", "requests", "updated_at"],
                         customer_id=_ID, enabled={"type": "boolean"}, threshold={"type": ["string", "null"]},
                         amount={"type": ["string", "null"]}, armed={"type": ["boolean", "null"]},
                         requests={"type": "integer"}, updated_at={"type": ["string", "null"], "format": "date-time"}),
}
_SCHEMAS["NewApiKey"] = {"allOf": [_ref("ApiKey"), _obj(["api_key"], api_key={
    "type": "string", "description": "The key itself: shown this once, only its hash is stored."})]}
_SCHEMAS["CustomerWallet"] = {"allOf": [_obj(["customer_id"], customer_id=_ID), _ref("Wallet")]}
_SCHEMAS["CustomerWallet"]["allOf"].append(_obj(["credit_grants"], credit_grants={  # credits: the live grants
    "type": "array", "items": _ref("CreditGrant"), "description": "Grants with credit left, in spending order."}))

_NEW_CUSTOMER = {"type": "object", "required": ["name", "plan_id"], "additionalProperties": False, "properties": {
    "id": _or_null({**_ID, "description": "Default: cus_<random>."}),
    "name": {"type": "string", "minLength": 1, "maxLength": 200},
    "plan_id": _ID,
    "billing_mode": _or_null({"enum": list(BILLING_MODES), "description": "Default: the plan's."}),
    "spend_cap": _or_null({**_MONEY_IN, "description": "Overrides the plan's monthly cap. " + _MONEY_IN["description"]}),
}}
_NEW_TOPUP = {"type": "object", "required": ["amount"], "additionalProperties": False, "properties": {
    "amount": {**_MONEY_IN, "description": "Greater than 0. " + _MONEY_IN["description"]},
    "id": _or_null({**_ID, "description": "Idempotency key: the same id credits once (default: top_<random>)."}),
    "note": _or_null({"type": "string", "minLength": 1, "maxLength": 500}),
}}
_NEW_ADJUSTMENT = {"type": "object", "required": ["amount", "reason"], "additionalProperties": False, "properties": {
    "amount": {"type": ["string", "integer"], "description": "Currency units, non-zero; a leading '-' is a debit "
               f"(\"-2.50\"). At most 6 decimals and {MAX_AMOUNT} either way. Floats are refused."},
    "reason": {"type": "string", "minLength": 1, "maxLength": 500},
    "id": _or_null({**_ID, "description": "Idempotency key: the same id with the same content applies once "
                               "(default: adj_<random>)."}),
    "allow_negative": _or_null({"type": "boolean", "description": "Let a debit take the balance below zero "
                                "(default false: 409)."}),
}}
_NEW_GRANT = {"type": "object", "required": ["amount"], "additionalProperties": False, "properties": {
    "amount": {**_MONEY_IN, "description": "Greater than 0. " + _MONEY_IN["description"]},
    "kind": _or_null({"enum": list(GRANT_KINDS), "description": "Default promotional."}),
    "priority": _or_null({"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY,
                          "description": "Lower is spent first (default: promotional 10, purchased 50)."}),
    "expires_at": _or_null({**_TIME, "description": "RFC 3339 with a time zone, in the future; none = never."}),
    "id": _or_null({**_ID, "description": "Idempotency key (default: gr_<random>)."}),
    "note": _or_null({"type": "string", "minLength": 1, "maxLength": 500}),
}}
_AUTO_RECHARGE = {"type": "object", "required": ["threshold", "amount"], "additionalProperties": False, "properties": {
    "threshold": {**_MONEY_IN, "description": "Below this balance a recharge is requested. " + _MONEY_IN["description"]},
    "amount": {**_MONEY_IN, "description": "What to top up. " + _MONEY_IN["description"]},
    "enabled": _or_null({"type": "boolean", "description": "Default true."}),
}}
_PLAN_DOCUMENT = {"type": "object", "description": "A plan document (see examples/plans/): id, charges, limits, "
                  "tiers, billing mode, ...; validated in full by the server (422 naming the field)."}

_OK_SCHEMAS = {  # (method, path) -> {status: schema}
    ("POST", "/admin/plans"): {"200": _ref("PlanApplied"), "201": _ref("PlanApplied")},
    ("GET", "/admin/plans"): {"200": _obj(["plans"], plans={"type": "array", "items": _ref("PlanSummary")})},
    ("GET", "/admin/plans/{id}"): {"200": _ref("Plan")},
    ("POST", "/admin/customers"): {"201": _ref("Customer")},
    ("GET", "/admin/customers"): {"200": _obj(["customers", "next_after"], customers={
        "type": "array", "items": _ref("Customer")}, next_after={"type": ["string", "null"]})},
    ("GET", "/admin/customers/{id}"): {"200": _ref("Customer")},
    ("POST", "/admin/customers/{id}/keys"): {"201": _ref("NewApiKey")},
    ("GET", "/admin/customers/{id}/keys"): {"200": _obj(["api_keys"], api_keys={"type": "array", "items": _ref("ApiKey")})},
    ("POST", "/admin/keys/{id}/revoke"): {"200": _ref("ApiKey")},
    ("POST", "/admin/customers/{id}/wallet/topups"): {"200": _ref("Topup"), "201": _ref("Topup")},
    ("GET", "/admin/customers/{id}/wallet"): {"200": _ref("CustomerWallet")},
    ("POST", "/admin/customers/{id}/wallet/adjustments"): {"200": _ref("Adjustment"), "201": _ref("Adjustment")},
    ("GET", "/admin/customers/{id}/wallet/adjustments"): {"200": _obj(["adjustments"], adjustments={
        "type": "array", "items": _ref("Adjustment")})},
    ("POST", "/admin/customers/{id}/credit-grants"): {"200": _ref("CreditGrant"), "201": _ref("CreditGrant")},
    ("GET", "/admin/customers/{id}/credit-grants"): {"200": _obj(["credit_grants"], credit_grants={
        "type": "array", "items": _ref("CreditGrant")})},
    ("PUT", "/admin/customers/{id}/wallet/auto-recharge"): {"200": _ref("AutoRecharge")},
    ("GET", "/admin/customers/{id}/wallet/auto-recharge"): {"200": _ref("AutoRecharge")},
}
_OK_TEXT = {"200": "Done (for an apply: unchanged or a new version; for a top-up: a retry, credited before).",
            "201": "Created."}
_SUMMARY = {  # (method, path) -> (operationId, summary)
    ("POST", "/admin/plans"): ("applyPlan", "Create or update a plan (JSON or YAML); its version goes up only when it changed."),
    ("GET", "/admin/plans"): ("listPlans", "List plans."),
    ("GET", "/admin/plans/{id}"): ("getPlan", "A plan with its document."),
    ("POST", "/admin/customers"): ("createCustomer", "Create a customer (projected to Redis before it commits)."),
    ("GET", "/admin/customers"): ("listCustomers", "List customers by id; page with `after`."),
    ("GET", "/admin/customers/{id}"): ("getCustomer", "A customer with key counts and wallet."),
    ("POST", "/admin/customers/{id}/keys"): ("createKey", "Create an API key (returned once)."),
    ("GET", "/admin/customers/{id}/keys"): ("listKeys", "A customer's API keys (never the key itself)."),
    ("POST", "/admin/keys/{id}/revoke"): ("revokeKey", "Revoke an API key (idempotent)."),
    ("POST", "/admin/customers/{id}/wallet/topups"): ("topup", "Credit the prepaid wallet (idempotent by id)."),
    ("GET", "/admin/customers/{id}/wallet"): ("getWallet", "Balance, held and available amounts."),
    ("POST", "/admin/customers/{id}/wallet/adjustments"): (
        "adjustWallet", "Credit or debit the wallet with a reason (idempotent by id; a debit below zero needs "
                        "allow_negative, else 409)."),
    ("GET", "/admin/customers/{id}/wallet/adjustments"): ("listAdjustments", "A customer's wallet adjustments."),
    ("POST", "/admin/customers/{id}/credit-grants"): (
        "createCreditGrant", "Give credit that is spent first by priority and leaves the balance at expiry "
                             "(idempotent by id)."),
    ("GET", "/admin/customers/{id}/credit-grants"): ("listCreditGrants", "A customer's credit grants, in spending order."),
    ("PUT", "/admin/customers/{id}/wallet/auto-recharge"): (
        "putAutoRecharge", "Set low-balance auto-recharge (raises wallet.recharge_requested for the payment system)."),
    ("GET", "/admin/customers/{id}/wallet/auto-recharge"): ("getAutoRecharge", "The auto-recharge settings."),
}
_BODIES = {
    ("POST", "/admin/plans"): {"application/json": {"schema": _PLAN_DOCUMENT},
                               **{t: {"schema": {"type": "string"}} for t in YAML_TYPES}},
    ("POST", "/admin/customers"): json_content(_NEW_CUSTOMER),
    ("POST", "/admin/customers/{id}/wallet/topups"): json_content(_NEW_TOPUP),
    ("POST", "/admin/customers/{id}/wallet/adjustments"): json_content(_NEW_ADJUSTMENT),
    ("POST", "/admin/customers/{id}/credit-grants"): json_content(_NEW_GRANT),
    ("PUT", "/admin/customers/{id}/wallet/auto-recharge"): json_content(_AUTO_RECHARGE),
}
_QUERY = {("GET", "/admin/customers"): [
    {"name": "plan_id", "in": "query", "schema": _ID},
    {"name": "after", "in": "query", "schema": _ID, "description": "The last id of the previous page."},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100}},
]}


def _operation(method: str, path: str) -> dict[str, Any]:
    op_id, summary = _SUMMARY[(method, path)]
    op: dict[str, Any] = {"operationId": op_id, "summary": summary,
                          "security": [{"bearer": []}]}
    params = list(_QUERY.get((method, path), []))
    if "{id}" in path:
        params.insert(0, {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}})
    if params:
        op["parameters"] = params
    responses: dict[str, Any] = {s: {"description": _OK_TEXT[s], "content": json_content(schema)}
                                 for s, schema in _OK_SCHEMAS[(method, path)].items()}
    body = _BODIES.get((method, path))
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    responses["400"] = error_response("Malformed body, or a value PostgreSQL refuses.")
    responses["401"] = error_response("Missing or wrong admin token.",
                                      {"WWW-Authenticate": header('`Bearer realm="tollgate-admin"`')})
    if "{id}" in path:
        responses["404"] = error_response("No such id.")
    if method == "POST":
        responses["409"] = error_response("Conflict (an id already used, a plan change that cannot apply).")
    if body is not None:
        responses["413"] = error_response(f"Body over {MAX_BODY} bytes.")
        responses["415"] = error_response("Unsupported Content-Type.")
    responses["422"] = error_response("Invalid input: `field` names it.")
    responses["503"] = error_response("Admin API disabled (no TOLLGATE_ADMIN_TOKEN), no schema, or a backend unreachable.")
    op["responses"] = responses
    return op


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path in _SUMMARY:
        paths.setdefault(path, {})[method.lower()] = _operation(method, path)
    paths["/openapi.json"] = {"get": {"operationId": "openapi", "summary": "This document (no token needed).",
                                      "security": [], "responses": {"200": {"description": "OpenAPI 3.1.",
                                                                            "content": json_content({"type": "object"})}}}}
    return paths


SPEC: dict[str, Any] = {
    "openapi": OPENAPI_VERSION,
    "info": {"title": "tollgate admin API", "version": "1",
             "description": "Plans, customers, API keys and prepaid wallets. Every operation but this document "
                            "needs `Authorization: Bearer $TOLLGATE_ADMIN_TOKEN`."},
    "security": [{"bearer": []}],
    "paths": _paths(),
    "components": {"schemas": _SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
}
