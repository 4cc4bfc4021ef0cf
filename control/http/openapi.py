"""The admin API as an OpenAPI 3.1 document, served at GET /openapi.json (no token needed: it
says what the API is, nothing about the data behind it).

Written by hand from control.http.app (imported by it when the app is made: it reads its constants) and the control services' validators (control.fields);
tests/openapi checks that its operations are the app's routes and runs schemathesis against a
real admin API on PostgreSQL and Redis (no 5xx, every answer as documented).
"""
from __future__ import annotations

import re
from typing import Any

from control.http.messages import MAX_BODY, YAML_TYPES
from control.credits.grants import KINDS as GRANT_KINDS, MAX_PRIORITY
from control.accounts.customers import MAX_PAGE
from control.fields import MAX_AMOUNT
from tollgate.keys import ID_PATTERN
from tollgate.limits import MAX_RATE
from control.accounts.hierarchy import KINDS as APP_KINDS
from tollgate.openapi import ERROR_SCHEMA, OPENAPI_VERSION, error_response, header, json_content
from tollgate.alert_rules import KINDS as ALERT_KINDS
from tollgate.plans import BILLING_MODES
from control.alerts.manage import MAX_PAGE as ALERTS_PAGE
from control.alerts.manage import MAX_URL, STATUSES as DELIVERY_STATUSES

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
                     status={"enum": ["active", "suspended", "archived"]},
                     version={"type": "integer", "description": "Also the ETag: a change names it (If-Match)."},
                     pending_plan_change={"anyOf": [_obj(["plan_id", "from_period"], plan_id=_ID,
                                                         from_period={"type": "string"}), {"type": "null"}]},
                     prices={"type": "array", "items": {"type": "object"}}, updated_at=_TIME,
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
_ALERT_SETTINGS = _obj(["spend_cap_percents", "balance_below", "tier_promoted", "commit_at_risk", "usage_spike"],
                       spend_cap_percents={"type": "array", "items": {"type": "integer"}},
                       balance_below={"type": ["string", "null"]}, tier_promoted={"type": "boolean"},
                       commit_at_risk={"anyOf": [_obj(["after_percent"], after_percent={"type": "integer"}), {"type": "null"}]},
                       usage_spike={"anyOf": [_obj(["factor", "min_amount"], factor={"type": "string"},
                                                   min_amount={"type": "string"}), {"type": "null"}]})
_SCHEMAS.update({
    "Webhook": _obj(["id", "customer_id", "url", "kinds", "description", "enabled", "created_at"],
                    id=_ID, customer_id={"type": ["string", "null"]}, url={"type": "string"},
                    kinds={"type": "array", "items": {"enum": list(ALERT_KINDS)}},
                    description={"type": ["string", "null"]}, enabled={"type": "boolean"}, created_at=_TIME),
    "AlertSettings": _ALERT_SETTINGS,
    "CustomerAlertSettings": _obj(["customer_id", "plan_id", "overrides", "plan_defaults", "effective"],
                                  customer_id=_ID, plan_id=_ID, overrides={"type": "object"},
                                  plan_defaults=_ref("AlertSettings"), effective=_ref("AlertSettings")),
    "Alert": _obj(["id", "type", "customer_id", "threshold", "period", "raised_at", "data", "source_event_id"],
                  id={"type": "string"}, type={"type": "string"}, customer_id=_ID, threshold={"type": "string"},
                  period={"type": "string"}, raised_at=_TIME, data={"type": "object"},
                  source_event_id={"type": ["string", "null"]}),
    "Delivery": _obj(["id", "alert_id", "endpoint_id", "customer_id", "status", "attempts", "next_attempt_at",
                      "give_up_at", "last_status_code", "last_error", "created_at", "delivered_at"],
                     id={"type": "string"}, alert_id={"type": "string"}, endpoint_id={"type": "string"},
                     customer_id=_ID, status={"enum": list(DELIVERY_STATUSES)}, attempts={"type": "integer"},
                     next_attempt_at={"type": ["string", "null"], "format": "date-time"}, give_up_at=_TIME,
                     last_status_code={"type": ["integer", "null"]}, last_error={"type": ["string", "null"]},
                     created_at=_TIME, delivered_at={"type": ["string", "null"], "format": "date-time"}),
})
_SCHEMAS["NewWebhook"] = {"allOf": [_ref("Webhook"), _obj(["secret"], secret={
    "type": "string", "description": "The signing secret: shown this once (HMAC-SHA256 of `<t>.<body>`)."})]}
_SCHEMAS["DeliveryLog"] = {"allOf": [_ref("Delivery"), _obj(["attempt_log"], attempt_log={"type": "array", "items": _obj(
    ["attempt", "at", "status_code", "error", "duration_ms"], attempt={"type": "integer"}, at=_TIME,
    status_code={"type": ["integer", "null"]}, error={"type": ["string", "null"]}, duration_ms={"type": "integer"})})]}
_SCHEMAS["AuditEntry"] = _obj(["id", "customer_id", "at", "actor", "action", "version", "period", "before", "after"],
                              id={"type": "integer"}, customer_id=_ID, at=_TIME,
                              actor={"type": "string", "description": "admin:<sha256 of the token, 8 hex>, cli:<user>,"
                                     " rater:period_close"},
                              action={"type": "string"}, version={"type": "integer"}, period={"type": "string"},
                              before={"type": "object"}, after={"type": "object"})
_SCHEMAS["NegotiatedPrice"] = {
    "type": "object", "required": ["charge_id"], "additionalProperties": False,
    "description": "A customer's own price for a usage charge of its plan, for the events whose dimensions match "
                   "(all of them without `match`); before the plan's overrides. Priced like the charge's model: "
                   "`unit_price`, or `tiers` (graduated, volume), `included_units` (included).",
    "properties": {"charge_id": _ID, "match": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
                   "unit_price": _MONEY_IN, "tiers": {"type": "array", "items": {"type": "object"}},
                   "included_units": {"type": "integer", "minimum": 0}}}
_SCHEMAS["NewApiKey"] = {"allOf": [_ref("ApiKey"), _obj(["api_key"], api_key={
    "type": "string", "description": "The key itself: shown this once, only its hash is stored."})]}
_SCHEMAS["CustomerWallet"] = {"allOf": [_obj(["customer_id"], customer_id=_ID), _ref("Wallet")]}
# The read API (control.http.read).
_STR_OR_NULL = {"type": ["string", "null"]}
_INT = {"type": "integer"}
_SCHEMAS["UsageRow"] = _obj(["bucket", "metric", "quantity", "amount", "events"], bucket=_TIME, metric={"type": "string"},
                            quantity=_INT, amount=_MONEY_OUT, events=_INT,
                            dimensions={"type": "object", "additionalProperties": _STR_OR_NULL,
                                        "description": "The group_by dimensions' values (null: events without it)."},
                            key_id=_STR_OR_NULL, team_id=_STR_OR_NULL, app_id=_STR_OR_NULL)
_SCHEMAS["Usage"] = _obj(["customer_id", "from", "to", "bucket", "group_by", "rows", "totals"],
                         customer_id=_ID, key_id=_ID, bucket={"enum": ["hour", "day"]},
                         group_by={"type": "array", "items": {"type": "string"}},
                         rows={"type": "array", "items": _ref("UsageRow")},
                         totals={"type": "array", "items": _obj(["metric", "quantity", "amount", "events"],
                                                                metric={"type": "string"}, quantity=_INT,
                                                                amount=_MONEY_OUT, events=_INT)},
                         **{"from": _TIME, "to": _TIME})
_MARGIN = dict(price={**_MONEY_OUT, "description": "Charged for the usage (discounts in, tax out)."},
               cost={**_MONEY_OUT, "description": "What the usage cost the provider (plan costs, cost catalog)."},
               margin=_MONEY_OUT, margin_percent={"type": ["string", "null"],
                                                  "description": "margin / price x 100, 2 decimals; null when price is 0."})
_SCHEMAS["Margin"] = _obj(
    ["customer_id", "period", "period_start", "period_end", "currency", "by", "rows", "total"],
    customer_id=_ID, period={"type": "string"}, period_start=_TIME, period_end=_TIME, currency={"type": "string"},
    by={"type": "array", "items": {"type": "string"}},
    rows={"type": "array", "items": {"type": "object", "required": ["price", "cost", "margin", "margin_percent"],
                                     "description": "One per group: the `by` names as keys (day: a date; outcome, "
                                     "key or a dimension: null when none), `quantity` when grouped by metric.",
                                     "properties": {**_MARGIN, "day": {"type": "string", "format": "date"},
                                                    "metric": {"type": "string"}, "outcome": _STR_OR_NULL,
                                                    "key": _STR_OR_NULL, "quantity": _INT}}},
    total=_obj(["price", "cost", "margin", "margin_percent"], **_MARGIN))
_SCHEMAS["CostCatalog"] = _obj(["id", "name", "currency", "version", "updated_at", "document"], id=_ID,
                               name={"type": "string"}, currency={"type": "string"}, version=_INT,
                               updated_at=_TIME, document={"type": "object"})
_UNITS = {"type": "string", "pattern": "^[0-9]+$"}
_LINE = _obj(["kind", "description", "amount"], kind={"type": "string"}, description={"type": "string"},
             charge_id=_STR_OR_NULL, metric=_STR_OR_NULL, dimension_key=_STR_OR_NULL,
             quantity={"type": "string"}, amount=_MONEY_OUT)
_SCHEMAS["Preview"] = _obj(
    ["customer_id", "period", "period_start", "period_end", "plan_id", "currency", "billing_mode", "lines", "subtotal",
     "discount", "tax", "total", "spend_to_date", "close", "allowances", "minimum_commit", "projected_commit_true_up",
     "balance", "tier", "next_tier", "pending_sessions"],
    pending_sessions={**_obj(["count", "amount"], count=_INT, amount=_MONEY_OUT), "description": "Agent sessions "
                      "still open: in the lines and totals as if closed now (the close bills them first)."},
    customer_id=_ID, period={"type": "string"}, period_start=_TIME, period_end=_TIME, plan_id=_ID,
    currency={"type": "string"}, billing_mode={"enum": list(BILLING_MODES)}, lines={"type": "array", "items": _LINE},
    subtotal=_MONEY_OUT, discount=_MONEY_OUT, tax=_MONEY_OUT, total=_MONEY_OUT, spend_to_date=_MONEY_OUT,
    close=_obj(["lines", "commit_true_up", "total"], lines={"type": "array", "items": _LINE},
               commit_true_up=_MONEY_OUT, total=_MONEY_OUT),
    allowances={"type": "array", "description": "Each included charge's quota per dimension key: the plan's units "
                "plus those carried in by rollover (units as decimal strings); carried_out: what the period would "
                "carry into the next if it closed now (null: the charge has no rollover).",
                "items": _obj(["charge_id", "metric", "dimension_key", "included_units", "carried_in", "allowance",
                               "used", "remaining", "carried_out"],
                              charge_id=_ID, metric={"type": "string"}, dimension_key={"type": "string"},
                              included_units=_UNITS, carried_in=_UNITS, allowance=_UNITS, used=_UNITS,
                              remaining=_UNITS, carried_out={"anyOf": [{"type": "null"}, _UNITS]})},
    minimum_commit=_MONEY_OUT, projected_commit_true_up=_MONEY_OUT, balance=_ref("Wallet"), tier={"type": "string"},
    next_tier={"anyOf": [{"type": "null"}, _obj(["name", "threshold", "remaining"], name={"type": "string"},
                                                threshold=_MONEY_OUT, remaining=_MONEY_OUT)]})
_INVOICE_SUMMARY = dict(invoice_id=_ID, customer_id=_ID, period={"type": "string"}, subtotal=_MONEY_OUT,
                        discount=_MONEY_OUT, tax=_MONEY_OUT, total=_MONEY_OUT, prepaid=_MONEY_OUT,
                        amount_due=_MONEY_OUT, currency={"type": "string"}, status={"type": "string"}, closed_at=_TIME)
_SCHEMAS["InvoiceSummary"] = _obj(["invoice_id", "customer_id", "period", "total", "amount_due", "currency"],
                                  **_INVOICE_SUMMARY)
_SCHEMAS["Invoice"] = _obj(["invoice_id", "customer_id", "period", "total", "amount_due", "currency", "lines"],
                           **_INVOICE_SUMMARY, billing_mode={"enum": list(BILLING_MODES)},
                           lines={"type": "array", "items": {"allOf": [_LINE, _obj(
                               ["line_no", "ledger_lines"], line_no=_INT, ledger_lines=_INT)]}})
_SCHEMAS["InvoiceList"] = _obj(["invoices", "next_after"], invoices={"type": "array", "items": _ref("InvoiceSummary")},
                               next_after=_STR_OR_NULL)
_SCHEMAS["LineSources"] = _obj(
    ["invoice_id", "line_no", "sources", "next"], invoice_id=_ID, line_no=_INT,
    sources={"type": "array", "items": _obj(["event_id", "line_no", "correlation_id", "quantity", "amount"],
                                            event_id={"type": "string"}, line_no=_INT, correlation_id=_STR_OR_NULL,
                                            quantity=_INT, amount=_MONEY_OUT)},
    next={"anyOf": [{"type": "null"}, _obj(["after_event", "after_line"], after_event={"type": "string"},
                                           after_line=_INT)]})
_SCHEMAS["TierTransition"] = _obj(["period", "old_tier", "new_tier", "reason", "spend", "at"],
                                  period={"type": "string"}, old_tier={"type": "string"}, new_tier={"type": "string"},
                                  reason={"enum": ["promotion", "period_reset"]}, event_id=_STR_OR_NULL,
                                  spend=_MONEY_OUT, at=_TIME)
_SCHEMAS["Trace"] = _obj(["correlation_id", "holds", "events", "tier_transitions"], correlation_id={"type": "string"},
                         holds={"type": "array", "items": {"type": "object", "description": "A hold (by request id or "
                                "named by a usage event) with its lifecycle: placed, settled or expired."}},
                         events={"type": "array", "items": {"type": "object", "description": "A processed usage event "
                                 "with its settlement (spend, wallet, invoice, settle_seq) and ledger lines."}},
                         tier_transitions={"type": "array", "items": _ref("TierTransition")})
_SESSION = dict(
    session_id=_ID, status={"enum": ["open", "closed"]}, key_id=_STR_OR_NULL, first_ts=_TIME, last_ts=_TIME,
    idle_at={"type": ["string", "null"], "description": "When the idle sweeper may close it (open sessions)."},
    period={"type": "string"}, dimensions={"type": "object"},
    measurements={"type": "object", "additionalProperties": {"type": "integer"}, "description": "Summed."},
    event_count=_INT, amount={"type": ["string", "null"], "description": "What the billable session was charged; "
                              "null while open."},
    cost={"type": ["string", "null"], "description": "What the billable session cost the provider (plan costs)."},
    billable_event_id={"type": ["string", "null"]}, close_reason={"enum": ["end", "idle", "period_close", None]},
    closed_at={"type": ["string", "null"]})
_SCHEMAS["Session"] = _obj(["session_id", "status", "first_ts", "last_ts", "period", "measurements", "event_count",
                            "amount"], **_SESSION)
_SCHEMAS["SessionList"] = _obj(["sessions", "next_after"], sessions={"type": "array", "items": _ref("Session")},
                               next_after=_STR_OR_NULL)
_SCHEMAS["SessionDetail"] = _obj(
    ["session_id", "status", "events", "ledger_lines", "ledger_total", "truncated"],
    **{**_SESSION, "status": {"enum": ["open", "closed", "not_aggregated"], "description": "not_aggregated: a "
                              "session_id on a plan without `sessions` (attribution only: lines, no session)."}},
    events={"type": "array", "items": _obj(["event_id", "ts", "measurements", "handled"], event_id={"type": "string"},
                                           event_type=_STR_OR_NULL, ts=_TIME, measurements={"type": "object"},
                                           handled={"enum": ["aggregated", "rated_alone", "ignored"]})},
    ledger_lines={"type": "array", "items": _obj(["event_id", "line_no", "kind", "charge_id", "quantity", "amount"],
                                                 event_id={"type": "string"}, line_no=_INT, kind={"type": "string"},
                                                 charge_id={"type": "string"}, metric=_STR_OR_NULL,
                                                 dimension_key={"type": "string"}, quantity=_INT,
                                                 unit_price=_STR_OR_NULL, amount=_MONEY_OUT,
                                                 period={"type": "string"})},
    ledger_total=_MONEY_OUT, truncated={"type": "boolean"})
_SCHEMAS["Hold"] = _obj(["hold_id", "amount", "placed_at", "expires_at"], hold_id={"type": "string"},
                        request_id=_STR_OR_NULL, key_id=_STR_OR_NULL, amount=_STR_OR_NULL, estimated_tokens=_INT,
                        placed_at={"type": ["string", "null"]}, expires_at={"type": ["string", "null"]})
_SCHEMAS["DeadLetter"] = _obj(["id", "event_id", "customer_id", "reason", "detail", "status", "attempts", "created_at",
                               "raw"], id=_INT, event_id=_STR_OR_NULL, customer_id=_STR_OR_NULL,
                              reason={"type": "string"}, detail={"type": "string"}, status={"type": "string"},
                              attempts=_INT, created_at=_TIME, replayed_at={"type": ["string", "null"]},
                              raw={"type": "string"})
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
_NEW_WEBHOOK = {"type": "object", "required": ["url"], "additionalProperties": False, "properties": {
    "url": {"type": "string", "maxLength": MAX_URL, "description": "http:// or https:// URL the alerts are POSTed to."},
    "customer_id": _or_null({**_ID, "description": "Only this customer's alerts (default: every customer's)."}),
    "kinds": _or_null({"type": "array", "items": {"enum": list(ALERT_KINDS)}, "description": "Default: every kind."}),
    "description": _or_null({"type": "string", "minLength": 1, "maxLength": 500}),
}}
_PERCENTS = {"type": "array", "maxItems": 20, "items": {"type": "integer", "minimum": 1, "maximum": 1000}}
_SETTINGS_IN = {"type": "object", "additionalProperties": False, "description": "Overrides of the plan's "
                "`alerts:` section, key by key (replacing earlier overrides); null turns an alert off.", "properties": {
    "spend_cap_percents": _or_null(_PERCENTS),
    "balance_below": _or_null(_MONEY_IN),
    "tier_promoted": {"type": "boolean"},
    "commit_at_risk": _or_null({"type": "object", "additionalProperties": False,
                                "properties": {"after_percent": {"type": "integer", "minimum": 1, "maximum": 99}}}),
    "usage_spike": _or_null({"type": "object", "additionalProperties": False, "required": ["factor"], "properties": {
        "factor": {"type": ["string", "integer"], "description": "Over 1, at most 1000 (a decimal string or integer)."},
        "min_amount": _MONEY_IN}}),
}}
_PAGE = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": ALERTS_PAGE, "default": 100}}
_VERSION_IN = {"type": "integer", "minimum": 1, "description": "The version read (instead of If-Match)."}
_CUSTOMER_CHANGE = {"type": "object", "additionalProperties": False, "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 200},
    "billing_mode": {"enum": list(BILLING_MODES), "description": "From now on (checks and settlement)."},
    "spend_cap": _or_null({**_MONEY_IN, "description": "The customer's own monthly cap (null: the plan's again), "
                           "scaled by the tier multipliers like the plan's. " + _MONEY_IN["description"]}),
    "prices": {"type": "array", "items": _ref("NegotiatedPrice"), "description": "The whole list ([]: none)."},
    "version": _VERSION_IN,
}}
_PLAN_CHANGE = {"type": "object", "required": ["plan_id"], "additionalProperties": False, "properties": {
    "plan_id": _ID,
    "effective": {"enum": ["now", "period_end"], "description": "Default: period_end when the current or the new "
                  "plan has a minimum commit, else now. The current plan's id cancels a pending change."},
    "version": _VERSION_IN,
}}
_IF_MATCH = {"name": "If-Match", "in": "header", "schema": {"type": "string"},
             "description": 'The customer\'s ETag as read ("<version>"); or `version` in the body.'}
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

_CATALOG_DOCUMENT = {"type": "object", "description": "A cost catalog document (see examples/costs/): id, currency, "
                     "costs (metric -> unit_cost, overrides, costs_by); validated in full (422 naming the field)."}
_CATALOG_APPLIED = _obj(["id", "name", "currency", "version", "changed", "metrics", "plans"], id=_ID,
                        name={"type": "string"}, currency={"type": "string"}, version={"type": "integer"},
                        changed={"type": "boolean"}, metrics={"type": "integer"},
                        plans={"type": "integer", "description": "Plans that name this catalog."})

_OK_SCHEMAS = {  # (method, path) -> {status: schema}
    ("POST", "/admin/cost-catalogs"): {"200": _CATALOG_APPLIED, "201": _CATALOG_APPLIED},
    ("GET", "/admin/cost-catalogs"): {"200": _obj(["cost_catalogs"], cost_catalogs={"type": "array", "items": _obj(
        ["id", "name", "version", "plans", "updated_at"], id=_ID, name={"type": "string"},
        version={"type": "integer"}, plans={"type": "integer"}, updated_at=_TIME)})},
    ("GET", "/admin/cost-catalogs/{id}"): {"200": _ref("CostCatalog")},
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
    ("POST", "/admin/webhooks"): {"201": _ref("NewWebhook")},
    ("GET", "/admin/webhooks"): {"200": _obj(["webhooks"], webhooks={"type": "array", "items": _ref("Webhook")})},
    ("GET", "/admin/webhooks/{id}"): {"200": _ref("Webhook")},
    ("DELETE", "/admin/webhooks/{id}"): {"200": _ref("Webhook")},
    ("GET", "/admin/customers/{id}/alert-settings"): {"200": _ref("CustomerAlertSettings")},
    ("PUT", "/admin/customers/{id}/alert-settings"): {"200": _ref("CustomerAlertSettings")},
    ("GET", "/admin/alerts"): {"200": _obj(["alerts"], alerts={"type": "array", "items": _ref("Alert")})},
    ("GET", "/admin/deliveries"): {"200": _obj(["deliveries"], deliveries={"type": "array", "items": _ref("Delivery")})},
    ("GET", "/admin/deliveries/{id}"): {"200": _ref("DeliveryLog")},
    ("POST", "/admin/deliveries/{id}/redeliver"): {"200": _ref("Delivery")},
    ("PATCH", "/admin/customers/{id}"): {"200": _ref("Customer")},
    ("POST", "/admin/customers/{id}/plan-change"): {"200": _ref("Customer")},
    ("POST", "/admin/customers/{id}/suspend"): {"200": _ref("Customer")},
    ("POST", "/admin/customers/{id}/reactivate"): {"200": _ref("Customer")},
    ("POST", "/admin/customers/{id}/archive"): {"200": _ref("Customer")},
    ("GET", "/admin/customers/{id}/audit"): {"200": _obj(["entries", "next_before_id"], entries={
        "type": "array", "items": _ref("AuditEntry")}, next_before_id={"type": ["integer", "null"]})},
    ("POST", "/admin/customers/{id}/wallet/adjustments"): {"200": _ref("Adjustment"), "201": _ref("Adjustment")},
    ("GET", "/admin/customers/{id}/wallet/adjustments"): {"200": _obj(["adjustments"], adjustments={
        "type": "array", "items": _ref("Adjustment")})},
    ("POST", "/admin/customers/{id}/credit-grants"): {"200": _ref("CreditGrant"), "201": _ref("CreditGrant")},
    ("GET", "/admin/customers/{id}/credit-grants"): {"200": _obj(["credit_grants"], credit_grants={
        "type": "array", "items": _ref("CreditGrant")})},
    ("PUT", "/admin/customers/{id}/wallet/auto-recharge"): {"200": _ref("AutoRecharge")},
    ("GET", "/admin/customers/{id}/wallet/auto-recharge"): {"200": _ref("AutoRecharge")},
}
_OK_SCHEMAS.update({
    ("GET", "/admin/customers/{id}/usage"): {"200": _ref("Usage")},
    ("GET", "/admin/customers/{id}/margin"): {"200": _ref("Margin")},
    ("GET", "/admin/keys/{id}/usage"): {"200": _ref("Usage")},
    ("GET", "/admin/customers/{id}/preview"): {"200": _ref("Preview")},
    ("GET", "/admin/customers/{id}/invoices"): {"200": _ref("InvoiceList")},
    ("GET", "/admin/invoices/{id}"): {"200": _ref("Invoice")},
    ("GET", "/admin/invoices/{id}/lines/{line_no}/sources"): {"200": _ref("LineSources")},
    ("GET", "/admin/trace/{correlation_id}"): {"200": _ref("Trace")},
    ("GET", "/admin/customers/{id}/tier-transitions"): {"200": _obj(["tier_transitions"], tier_transitions={
        "type": "array", "items": _ref("TierTransition")})},
    ("GET", "/admin/customers/{id}/holds"): {"200": _obj(["holds"], holds={"type": "array", "items": _ref("Hold")})},
    ("GET", "/admin/dead-letters"): {"200": _obj(["dead_letters", "next_after"], dead_letters={
        "type": "array", "items": _ref("DeadLetter")}, next_after={"type": ["integer", "null"]})},
    ("POST", "/admin/dead-letters/replay"): {"200": _obj(
        ["replayed", "unreadable", "not_open"], replayed={"type": "array", "items": _INT},
        unreadable={"type": "array", "items": _INT}, not_open={"type": "array", "items": _INT})},
    ("GET", "/v1/customer/usage"): {"200": _ref("Usage")},
    ("GET", "/v1/customer/preview"): {"200": _ref("Preview")},
    ("GET", "/v1/customer/invoices"): {"200": _ref("InvoiceList")},
    ("GET", "/v1/customer/invoices/{id}"): {"200": _ref("Invoice")},
    ("GET", "/admin/customers/{id}/sessions"): {"200": _ref("SessionList")},
    ("GET", "/admin/customers/{id}/sessions/{session_id}"): {"200": _ref("SessionDetail")},
    ("GET", "/v1/customer/sessions"): {"200": _ref("SessionList")},
    ("GET", "/v1/customer/sessions/{session_id}"): {"200": _ref("SessionDetail")},
})
_OK_TEXT = {"200": "Done (for an apply: unchanged or a new version; for a top-up: a retry, credited before).",
            "201": "Created."}
_SUMMARY = {  # (method, path) -> (operationId, summary)
    ("POST", "/admin/plans"): ("applyPlan", "Create or update a plan (JSON or YAML); its version goes up only when it changed."),
    ("GET", "/admin/plans"): ("listPlans", "List plans."),
    ("GET", "/admin/plans/{id}"): ("getPlan", "A plan with its document."),
    ("POST", "/admin/cost-catalogs"): ("applyCostCatalog", "Create or update a shared cost catalog (JSON or YAML), "
                                       "named by plans with cost_catalog; its version goes up only when it changed."),
    ("GET", "/admin/cost-catalogs"): ("listCostCatalogs", "List cost catalogs."),
    ("GET", "/admin/cost-catalogs/{id}"): ("getCostCatalog", "A cost catalog with its document."),
    ("POST", "/admin/customers"): ("createCustomer", "Create a customer (projected to Redis before it commits)."),
    ("GET", "/admin/customers"): ("listCustomers", "List customers by id; page with `after`."),
    ("GET", "/admin/customers/{id}"): ("getCustomer", "A customer with key counts and wallet."),
    ("POST", "/admin/customers/{id}/keys"): ("createKey", "Create an API key (returned once)."),
    ("GET", "/admin/customers/{id}/keys"): ("listKeys", "A customer's API keys (never the key itself)."),
    ("POST", "/admin/keys/{id}/revoke"): ("revokeKey", "Revoke an API key (idempotent)."),
    ("POST", "/admin/customers/{id}/wallet/topups"): ("topup", "Credit the prepaid wallet (idempotent by id)."),
    ("GET", "/admin/customers/{id}/wallet"): ("getWallet", "Balance, held and available amounts."),
    ("POST", "/admin/webhooks"): ("createWebhook", "Register a webhook endpoint for alerts (its signing secret is returned once)."),
    ("GET", "/admin/webhooks"): ("listWebhooks", "Webhook endpoints (a customer's and the global ones with `customer_id`)."),
    ("GET", "/admin/webhooks/{id}"): ("getWebhook", "A webhook endpoint (never its secret)."),
    ("DELETE", "/admin/webhooks/{id}"): ("disableWebhook", "Disable an endpoint: nothing more is sent to it; its log stays."),
    ("GET", "/admin/customers/{id}/alert-settings"): ("getAlertSettings", "A customer's alert settings: plan defaults, overrides, effective."),
    ("PUT", "/admin/customers/{id}/alert-settings"): ("putAlertSettings", "Replace a customer's overrides of its plan's alert settings."),
    ("GET", "/admin/alerts"): ("listAlerts", "Alerts raised, newest first."),
    ("GET", "/admin/deliveries"): ("listDeliveries", "The webhook delivery log, newest first."),
    ("GET", "/admin/deliveries/{id}"): ("getDelivery", "A delivery with every attempt."),
    ("POST", "/admin/deliveries/{id}/redeliver"): ("redeliver", "Send a delivery again now, with a fresh retry window."),
    ("PATCH", "/admin/customers/{id}"): ("updateCustomer", "Change name, billing mode, spend cap or negotiated prices "
                                         "(If-Match: the ETag read)."),
    ("POST", "/admin/customers/{id}/plan-change"): ("changePlan", "Change the plan now or at the period's end "
                                                    "(If-Match)."),
    ("POST", "/admin/customers/{id}/suspend"): ("suspendCustomer", "Suspend: every check is DENY `suspended`; usage "
                                                "is still rated (If-Match)."),
    ("POST", "/admin/customers/{id}/reactivate"): ("reactivateCustomer", "Make a suspended customer active (If-Match)."),
    ("POST", "/admin/customers/{id}/archive"): ("archiveCustomer", "Archive (final): keys revoked, hidden from "
                                                "listings, no further change (If-Match)."),
    ("GET", "/admin/customers/{id}/audit"): ("customerAudit", "Every change of the customer, newest first: when, "
                                             "what, by which token."),
    ("GET", "/admin/customers/{id}/usage"): ("customerUsage", "Usage by metric (and dimensions), per hour or day, "
                                             "from the rollups (never the ledger)."),
    ("GET", "/admin/keys/{id}/usage"): ("keyUsage", "One API key's usage, as customerUsage."),
    ("GET", "/admin/customers/{id}/margin"): ("customerMargin", "Price, cost, margin and margin % of a billing "
                                              "period's usage, by day, metric, outcome, key or a dimension (model, "
                                              "tool), from the rollups (never the ledger)."),
    ("GET", "/admin/customers/{id}/preview"): ("customerPreview", "The current period's invoice so far, as the close "
                                               "would write it now; commit true-up, balance, tier, next tier."),
    ("GET", "/admin/customers/{id}/invoices"): ("listInvoices", "A customer's invoices, newest first; page with `after`."),
    ("GET", "/admin/invoices/{id}"): ("getInvoice", "An invoice with its lines."),
    ("GET", "/admin/invoices/{id}/lines/{line_no}/sources"): ("invoiceLineSources", "The ledger lines an invoice line "
                                                              "sums, with their correlation ids; paged."),
    ("GET", "/admin/trace/{correlation_id}"): ("trace", "A request's hold, usage events, ledger lines, settlement and "
                                               "tier promotion, by correlation (request) id."),
    ("GET", "/admin/customers/{id}/tier-transitions"): ("tierTransitions", "A customer's tier changes, newest first."),
    ("GET", "/admin/customers/{id}/holds"): ("openHolds", "A customer's open holds."),
    ("GET", "/admin/dead-letters"): ("listDeadLetters", "Events the rater could not rate; page with `after`."),
    ("POST", "/admin/dead-letters/replay"): ("replayDeadLetters", "Send open dead letters back to the rater through "
                                             "the event bus (marked replayed; a new failure is a new dead letter)."),
    ("GET", "/v1/customer/usage"): ("myUsage", "The calling customer's usage (its API key as bearer token)."),
    ("GET", "/v1/customer/preview"): ("myPreview", "The calling customer's current-period preview."),
    ("GET", "/v1/customer/invoices"): ("myInvoices", "The calling customer's invoices."),
    ("GET", "/v1/customer/invoices/{id}"): ("myInvoice", "One of the calling customer's invoices."),
    ("GET", "/admin/customers/{id}/sessions"): ("listSessions", "A customer's agent sessions, newest first: open or "
                                                "closed, measurements summed, amount billed; page with `after`."),
    ("GET", "/admin/customers/{id}/sessions/{session_id}"): ("getSession", "An agent session with its events (how each "
                                                             "was handled) and its ledger lines."),
    ("GET", "/v1/customer/sessions"): ("mySessions", "The calling customer's agent sessions."),
    ("GET", "/v1/customer/sessions/{session_id}"): ("mySession", "One of the calling customer's agent sessions."),
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
    ("POST", "/admin/cost-catalogs"): {"application/json": {"schema": _CATALOG_DOCUMENT},
                                       **{t: {"schema": {"type": "string"}} for t in YAML_TYPES}},
    ("POST", "/admin/customers"): json_content(_NEW_CUSTOMER),
    ("POST", "/admin/customers/{id}/wallet/topups"): json_content(_NEW_TOPUP),
    ("POST", "/admin/webhooks"): json_content(_NEW_WEBHOOK),
    ("PUT", "/admin/customers/{id}/alert-settings"): json_content(_SETTINGS_IN),
    ("PATCH", "/admin/customers/{id}"): json_content(_CUSTOMER_CHANGE),
    ("POST", "/admin/customers/{id}/plan-change"): json_content(_PLAN_CHANGE),
    ("POST", "/admin/customers/{id}/wallet/adjustments"): json_content(_NEW_ADJUSTMENT),
    ("POST", "/admin/customers/{id}/credit-grants"): json_content(_NEW_GRANT),
    ("PUT", "/admin/customers/{id}/wallet/auto-recharge"): json_content(_AUTO_RECHARGE),
}
_QUERY = {("GET", "/admin/customers"): [
    {"name": "plan_id", "in": "query", "schema": _ID},
    {"name": "after", "in": "query", "schema": _ID, "description": "The last id of the previous page."},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100}},
    {"name": "status", "in": "query", "schema": {"enum": ["active", "suspended", "archived"]},
     "description": "Only these; without it every customer but the archived ones."},
]}
_BODIES[("POST", "/admin/dead-letters/replay")] = json_content(_obj(["ids"], ids={
    "type": "array", "minItems": 1, "maxItems": 500, "items": {"type": "integer", "minimum": 1}}))
_READ_LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}
_USAGE_QUERY = [
    {"name": "from", "in": "query", "schema": {"type": "string"}, "description": "ISO 8601 date or date-time (UTC "
     "unless an offset is given); default: 30 days before `to`. Aligned down to the bucket."},
    {"name": "to", "in": "query", "schema": {"type": "string"}, "description": "Exclusive; default now. Aligned up."},
    {"name": "bucket", "in": "query", "schema": {"enum": ["hour", "day"], "default": "day"},
     "description": "UTC hours or days; at most 93 days of hours, 1,098 of days."},
    {"name": "group_by", "in": "query", "schema": {"type": "string"}, "description": "Comma-separated dimension "
     "names (event properties: model, tool, ...) and/or `key`, `team`, `app` (the API key and its path in the "
     "billing hierarchy); at most 4."},
    {"name": "metric", "in": "query", "schema": {"type": "string"}, "description": "Only this metric."},
]
_INVOICE_PAGE = [{"name": "after", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]{6}$"},
                  "description": "The last period of the previous page."}, _READ_LIMIT]
_QUERY.update({
    ("GET", "/admin/customers/{id}/usage"): _USAGE_QUERY,
    ("GET", "/admin/customers/{id}/margin"): [
        {"name": "period", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]{6}$"},
         "description": "The billing period, YYYYMM; default the current one."},
        {"name": "by", "in": "query", "schema": {"type": "string"}, "description": "Comma-separated, at most 4: "
         "day, metric, outcome (composite charge), key, or a dimension name (model, tool, ...)."}],
    ("GET", "/admin/keys/{id}/usage"): _USAGE_QUERY,
    ("GET", "/v1/customer/usage"): _USAGE_QUERY,
    ("GET", "/admin/customers/{id}/invoices"): _INVOICE_PAGE,
    ("GET", "/v1/customer/invoices"): _INVOICE_PAGE,
    ("GET", "/admin/invoices/{id}/lines/{line_no}/sources"): [
        {"name": "after_event", "in": "query", "schema": {"type": "string"}},
        {"name": "after_line", "in": "query", "schema": {"type": "integer", "minimum": 0}}, _READ_LIMIT],
    ("GET", "/admin/customers/{id}/tier-transitions"): [_READ_LIMIT],
    **{("GET", p): [{"name": "status", "in": "query", "schema": {"enum": ["open", "closed"]}},
                    {"name": "after", "in": "query", "schema": _ID, "description": "The last session_id of the "
                     "previous page."}, _READ_LIMIT] for p in ("/admin/customers/{id}/sessions", "/v1/customer/sessions")},
    ("GET", "/admin/customers/{id}/holds"): [_READ_LIMIT],
    ("GET", "/admin/dead-letters"): [
        {"name": "status", "in": "query", "schema": {"enum": ["open", "replayed", "discarded"], "default": "open"}},
        {"name": "reason", "in": "query", "schema": {"type": "string"}},
        {"name": "customer_id", "in": "query", "schema": {"type": "string"}},
        {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}}, _READ_LIMIT],
})
_QUERY.update({
    ("GET", "/admin/webhooks"): [{"name": "customer_id", "in": "query", "schema": _ID}],
    ("GET", "/admin/alerts"): [{"name": "customer_id", "in": "query", "schema": _ID},
                               {"name": "kind", "in": "query", "schema": {"enum": list(ALERT_KINDS)}}, _PAGE],
    ("GET", "/admin/deliveries"): [{"name": n, "in": "query", "schema": _ID} for n in ("customer_id", "alert_id", "endpoint_id")]
    + [{"name": "status", "in": "query", "schema": {"enum": list(DELIVERY_STATUSES)}}, _PAGE],
})
_QUERY.update({(m, p): [_IF_MATCH] for m, p in _SUMMARY if p == "/admin/customers/{id}" and m == "PATCH"
               or p.rsplit("/", 1)[-1] in ("plan-change", "suspend", "reactivate", "archive")})
_QUERY[("GET", "/admin/customers/{id}/audit")] = [
    {"name": "before_id", "in": "query", "schema": {"type": "integer", "minimum": 0},
     "description": "The last id of the previous page."},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100}},
]
# Answers some operations give beyond the common ones (control.accounts.lifecycle: optimistic concurrency)
_ERRORS = {k: {"409": "Conflict: archived, already in that state, or a plan change that cannot apply now.",
               "412": "The customer changed since it was read (`field`: version): read it again.",
               "428": "No version named: send If-Match (the ETag read) or `version`."}
           for k in _QUERY if k[0] != "GET" and _IF_MATCH in _QUERY[k]}


# Margin Guard (control.margin_guard): rules and trips, the operator's reset.
_PERCENT = {"type": ["string", "integer"], "description": "A percent: a decimal string or an integer."}
_GUARD_RULE = {"type": "object", "description": "A Margin Guard rule (tollgate.margin_guard): `when` session_cost "
               "(percent_of_outcome + outcome, or max_cost) or period_margin (below_percent, min_revenue); `action` "
               "deny | alert; `stop` session | agent | customer.", "required": ["id", "when"],
               "properties": {"id": _ID, "when": {"enum": ["session_cost", "period_margin"]},
                              "action": {"enum": ["deny", "alert"]}, "stop": {"enum": ["session", "agent", "customer"]},
                              "percent_of_outcome": _PERCENT, "outcome": _ID, "max_cost": _MONEY_IN,
                              "below_percent": _PERCENT, "min_revenue": _MONEY_IN}}
_SCHEMAS["MarginGuardRule"] = _GUARD_RULE
_SCHEMAS["MarginGuardTrip"] = _obj(
    ["id", "rule_id", "subject", "action", "period", "detail", "tripped_at", "reset_at", "reset_by", "active"],
    id={"type": "string"}, rule_id={"type": "string"}, subject={"type": "string", "description": "customer, team:<id>, "
    "app:<id>, key:<id> or session:<id>: what the next /v1/check is denied for (action deny)"},
    action={"enum": ["deny", "alert"]}, period={"type": "string"}, detail={"type": "object"},
    tripped_at={"type": "string"}, reset_at={"type": ["string", "null"]}, reset_by={"type": ["string", "null"]},
    active={"type": "boolean"})
_SCHEMAS["CustomerMarginGuard"] = _obj(
    ["customer_id", "plan_id", "source", "rules", "plan_rules", "trips"], customer_id=_ID, plan_id=_ID,
    source={"enum": ["plan", "customer"]}, rules={"type": "array", "items": _ref("MarginGuardRule")},
    plan_rules={"type": "array", "items": _ref("MarginGuardRule")},
    trips={"type": "array", "items": _ref("MarginGuardTrip")})
for _m, _summary in (("GET", ("getMarginGuard", "A customer's Margin Guard rules (its own or its plan's) and trips, newest first.")),
                     ("PUT", ("putMarginGuard", "Replace a customer's Margin Guard rules ([]: off).")),
                     ("DELETE", ("deleteMarginGuard", "Drop a customer's own rules: its plan's apply again."))):
    _SUMMARY[(_m, "/admin/customers/{id}/margin-guard")] = _summary
    _OK_SCHEMAS[(_m, "/admin/customers/{id}/margin-guard")] = {"200": _ref("CustomerMarginGuard")}
_BODIES[("PUT", "/admin/customers/{id}/margin-guard")] = json_content(_obj(["rules"], rules={
    "type": "array", "items": _ref("MarginGuardRule")}))
_QUERY[("GET", "/admin/customers/{id}/margin-guard")] = [
    {"name": "active", "in": "query", "schema": {"type": "boolean", "default": False}, "description": "Only trips not reset."}]
_SUMMARY[("POST", "/admin/customers/{id}/margin-guard/reset")] = (
    "resetMarginGuard", "Reset active trips: one (trip_id), all of a subject, or all; the next check passes again.")
_OK_SCHEMAS[("POST", "/admin/customers/{id}/margin-guard/reset")] = {"200": _obj(
    ["customer_id", "reset"], customer_id=_ID, reset={"type": "array", "items": _ref("MarginGuardTrip")})}
_BODIES[("POST", "/admin/customers/{id}/margin-guard/reset")] = json_content(_obj(
    [], trip_id=_or_null({"type": "string", "pattern": "^mgt_"}), subject=_or_null({"type": "string"})))
# --------------------------------------------------------------------------- the billing hierarchy
_RATE = {"type": "integer", "minimum": 0, "maximum": MAX_RATE}
_LIMITS = {"type": "object", "additionalProperties": False, "description": "A level's limits, each optional and "
           "absolute (no tier multiplier): requests and tokens per minute (GCRA), a spend cap per billing period, "
           "the most requests in flight (open holds).", "properties": {
               "requests_per_minute": _RATE, "tokens_per_minute": _RATE,
               "spend_cap": {**_MONEY_IN, "description": "Per billing period. " + _MONEY_IN["description"]},
               "max_in_flight": {"type": "integer", "minimum": 1, "maximum": MAX_RATE}}}
_CUSTOMER_LIMITS = {**_LIMITS, "description": "The customer's rate limits and max_in_flight (its spend cap is "
                    "`spend_cap` of the customer, or the plan's).", "properties": {
                        k: v for k, v in _LIMITS["properties"].items() if k != "spend_cap"}}
_LIMITS_OUT = {"type": "object", "description": "The level's limits as set (spend_cap a decimal string)."}
_SCHEMAS["ApiKey"]["properties"].update(app_id=_STR_OR_NULL, limits=_LIMITS_OUT)
_SCHEMAS["Team"] = _obj(["id", "customer_id", "name", "limits", "created_at"], id=_ID, customer_id=_ID,
                        name={"type": "string"}, limits=_LIMITS_OUT, created_at=_TIME)
_SCHEMAS["App"] = _obj(["id", "customer_id", "team_id", "kind", "name", "limits", "created_at"], id=_ID,
                       customer_id=_ID, team_id=_ID, kind={"enum": list(APP_KINDS)}, name={"type": "string"},
                       limits=_LIMITS_OUT, created_at=_TIME)
_LEVEL = {"spend": {**_MONEY_OUT, "description": "Spend of the current billing period (PostgreSQL)."},
          "in_flight": {"type": ["integer", "null"], "description": "Open holds counted at this level (only for a "
                        "level with max_in_flight or a spend cap)."}}
_TREE_KEY = _obj(["id", "prefix", "status", "app_id", "limits", "spend", "in_flight"], id=_ID,
                 prefix={"type": "string"}, status={"enum": ["active", "revoked"]}, app_id=_STR_OR_NULL,
                 limits=_LIMITS_OUT, **_LEVEL)
_TREE_APP = {"allOf": [_ref("App"), _obj(["spend", "in_flight", "keys"], keys={"type": "array", "items": _TREE_KEY},
                                         **_LEVEL)]}
_TREE_TEAM = {"allOf": [_ref("Team"), _obj(["spend", "in_flight", "apps"], apps={"type": "array", "items": _TREE_APP},
                                           **_LEVEL)]}
_SCHEMAS["Tree"] = _obj(["customer_id", "period", "limits", "spend_cap", "spend", "in_flight", "teams", "keys"],
                        customer_id=_ID, period={"type": "string"}, limits=_LIMITS_OUT,
                        spend_cap={"type": ["string", "null"]}, teams={"type": "array", "items": _TREE_TEAM},
                        keys={"type": "array", "items": _TREE_KEY, "description": "Keys without an app."}, **_LEVEL)
_NAME = {"type": "string", "minLength": 1, "maxLength": 200}
_BODIES.update({
    ("POST", "/admin/customers/{id}/teams"): json_content({"type": "object", "required": ["name"],
        "additionalProperties": False, "properties": {"id": _or_null({**_ID, "description": "Default: team_<random>."}),
                                                      "name": _NAME, "limits": _or_null(_LIMITS)}}),
    ("PATCH", "/admin/teams/{id}"): json_content({"type": "object", "additionalProperties": False, "minProperties": 1,
        "properties": {"name": _NAME, "limits": _or_null({**_LIMITS, "description": "Replaces them all ({}: none)."})}}),
    ("POST", "/admin/customers/{id}/apps"): json_content({"type": "object", "required": ["team_id", "name"],
        "additionalProperties": False, "properties": {
            "id": _or_null({**_ID, "description": "Default: <kind>_<random>."}), "team_id": _ID, "name": _NAME,
            "kind": _or_null({"enum": list(APP_KINDS), "description": "Default app."}), "limits": _or_null(_LIMITS)}}),
    ("PATCH", "/admin/apps/{id}"): json_content({"type": "object", "additionalProperties": False, "minProperties": 1,
        "properties": {"name": _NAME, "limits": _or_null({**_LIMITS, "description": "Replaces them all ({}: none)."})}}),
    ("PATCH", "/admin/keys/{id}"): json_content({"type": "object", "additionalProperties": False, "required": ["limits"],
        "properties": {"limits": _or_null({**_LIMITS, "description": "The key's own (replacing the plan's per-key "
                                                                     "rate limits); replaces them all ({}: none)."})}}),
    ("PUT", "/admin/customers/{id}/limits"): json_content({"type": "object", "additionalProperties": False,
        "required": ["limits"], "properties": {"limits": _or_null(_CUSTOMER_LIMITS)}}),
    ("POST", "/admin/customers/{id}/keys"): json_content({"type": "object", "additionalProperties": False,
        "properties": {"app_id": _or_null({**_ID, "description": "The customer's app or agent (fixed for good)."}),
                       "limits": _or_null(_LIMITS)}}),
})
_OPTIONAL_BODY = {("POST", "/admin/customers/{id}/keys")}  # no body: a key straight under the customer
_OK_SCHEMAS.update({
    ("POST", "/admin/customers/{id}/teams"): {"201": _ref("Team")},
    ("GET", "/admin/customers/{id}/teams"): {"200": _obj(["teams"], teams={"type": "array", "items": _ref("Team")})},
    ("PATCH", "/admin/teams/{id}"): {"200": _ref("Team")},
    ("POST", "/admin/customers/{id}/apps"): {"201": _ref("App")},
    ("GET", "/admin/customers/{id}/apps"): {"200": _obj(["apps"], apps={"type": "array", "items": _ref("App")})},
    ("PATCH", "/admin/apps/{id}"): {"200": _ref("App")},
    ("PATCH", "/admin/keys/{id}"): {"200": _ref("ApiKey")},
    ("PUT", "/admin/customers/{id}/limits"): {"200": _obj(["customer_id", "limits"], customer_id=_ID,
                                                          limits=_LIMITS_OUT)},
    ("GET", "/admin/customers/{id}/tree"): {"200": _ref("Tree")},
    ("GET", "/v1/customer/tree"): {"200": _ref("Tree")},
})
_SUMMARY.update({
    ("POST", "/admin/customers/{id}/teams"): ("createTeam", "Create a team under the customer, with optional limits."),
    ("GET", "/admin/customers/{id}/teams"): ("listTeams", "A customer's teams."),
    ("PATCH", "/admin/teams/{id}"): ("updateTeam", "Rename a team or replace its limits (from the next check)."),
    ("POST", "/admin/customers/{id}/apps"): ("createApp", "Create an app or agent under one of the customer's teams."),
    ("GET", "/admin/customers/{id}/apps"): ("listApps", "A customer's apps and agents (optionally of one team)."),
    ("PATCH", "/admin/apps/{id}"): ("updateApp", "Rename an app or agent or replace its limits."),
    ("PATCH", "/admin/keys/{id}"): ("updateKey", "Replace an API key's own limits."),
    ("PUT", "/admin/customers/{id}/limits"): ("putCustomerLimits", "Replace the customer-level rate and in-flight limits."),
    ("GET", "/admin/customers/{id}/tree"): ("customerTree", "Teams > apps/agents > keys, each with its limits, "
                                            "period-to-date spend and open holds."),
    ("GET", "/v1/customer/tree"): ("myTree", "The calling customer's hierarchy, as customerTree."),
})
_QUERY[("GET", "/admin/customers/{id}/apps")] = [{"name": "team_id", "in": "query", "schema": _ID}]

# The billing simulator (control.simulator): a past period's usage under a draft plan.
_SIM_LINE = _obj(["kind", "charge_id", "metric", "dimension_key", "description", "current", "draft", "difference"],
                 kind={"type": "string"}, charge_id={"type": ["string", "null"]}, metric={"type": ["string", "null"]},
                 dimension_key={"type": ["string", "null"]}, description={"type": "string"}, current=_MONEY_OUT,
                 draft=_MONEY_OUT, difference=_MONEY_OUT)
_SIM_CUSTOMER = _obj(
    ["customer_id", "current_plan_id", "period_start", "period_end", "current_source", "current_total", "draft_total",
     "difference", "lines", "unpriced", "error"],
    customer_id=_ID, current_plan_id=_ID, period_start=_TIME, period_end=_TIME,
    current_source={"enum": ["invoice", "cumulatives"], "description": "The period's invoice, or (not closed yet) "
                    "the batch rating of its recorded cumulatives under the customer's plan."},
    current_total=_MONEY_OUT, draft_total=_MONEY_OUT, difference={**_MONEY_OUT, "description": "draft - current."},
    lines={"type": "array", "items": _SIM_LINE},
    unpriced={"type": "object", "additionalProperties": {"type": "integer"},
              "description": "Metrics the draft does not price: units left out."},
    error={"type": ["string", "null"], "description": "Why a side could not be rated (it then counts 0)."})
_SIM_RESULT = _obj(["period", "draft_plan_id", "currency", "customers", "totals"], period={"type": "string"},
                   draft_plan_id=_ID, currency={"type": "string"},
                   customers={"type": "array", "items": _SIM_CUSTOMER},
                   totals=_obj(["customers", "current", "draft", "difference"], customers={"type": "integer"},
                               current=_MONEY_OUT, draft=_MONEY_OUT, difference=_MONEY_OUT))
_SUMMARY[("POST", "/admin/simulate")] = (
    "simulate", "Rate a past period's usage under a draft plan (not applied): per customer and line the current "
                "amount (its invoice), the draft's and the difference, with totals.")
_OK_SCHEMAS[("POST", "/admin/simulate")] = {"200": _SIM_RESULT}
_BODIES[("POST", "/admin/simulate")] = {
    "application/json": {"schema": {"type": "object", "description": "The draft plan document, or "
                                    "{plan: <document>, period, customers: [ids]}."}},
    **{t: {"schema": {"type": "string"}} for t in YAML_TYPES}}
_QUERY[("POST", "/admin/simulate")] = [
    {"name": "period", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]{6}$"},
     "description": "YYYYMM, not in the future (required here or in a wrapped body)."},
    {"name": "customers", "in": "query", "schema": {"type": "string"},
     "description": "Comma-separated customer ids (default: the customers on the plan with the draft's id)."}]
_ERRORS[("POST", "/admin/simulate")] = {"404": "A customer named in `customers` does not exist."}


# The enforcer's decisions counted by reason (rater.decisions): denials by reason for the console.
_SUMMARY[("GET", "/admin/customers/{id}/decisions")] = (
    "decisionCounts", "The enforcer's decisions of the last `hours` hours by decision, reason and deciding level "
                      "(counted from the bus at least once: operator figures).")
_OK_SCHEMAS[("GET", "/admin/customers/{id}/decisions")] = {"200": _obj(
    ["hours", "decisions"], hours=_INT, decisions={"type": "array", "items": _obj(
        ["decision", "reason", "level", "count"], decision={"enum": ["ALLOW", "DENY"]}, reason={"type": "string"},
        level=_STR_OR_NULL, count=_INT)})}
_QUERY[("GET", "/admin/customers/{id}/decisions")] = [
    {"name": "hours", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 24 * 90, "default": 24}}]


# A plan's history (control.accounts.plans.plan_versions).
_SUMMARY[("GET", "/admin/plans/{id}/versions")] = ("planVersions", "A plan's versions as applied, newest first (at most 50).")
_OK_SCHEMAS[("GET", "/admin/plans/{id}/versions")] = {"200": _obj(["versions"], versions={"type": "array", "items": _obj(
    ["version", "applied_at", "document"], version=_INT, applied_at={"type": "string"}, document=_PLAN_DOCUMENT)})}


def _operation(method: str, path: str) -> dict[str, Any]:
    op_id, summary = _SUMMARY[(method, path)]
    customer = path.startswith("/v1/customer/")  # the customer's own API key, not the admin token
    op: dict[str, Any] = {"operationId": op_id, "summary": summary,
                          "security": [{"customerKey": []}] if customer else [{"bearer": []}]}
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in re.findall(r"{(\w+)}", path)] + list(_QUERY.get((method, path), []))
    if params:
        op["parameters"] = params
    responses: dict[str, Any] = {s: {"description": _OK_TEXT[s], "content": json_content(schema)}
                                 for s, schema in _OK_SCHEMAS[(method, path)].items()}
    body = _BODIES.get((method, path))
    if body is not None:
        op["requestBody"] = {"required": (method, path) not in _OPTIONAL_BODY, "content": body}
    responses["400"] = error_response("Malformed body, or a value PostgreSQL refuses.")
    responses["401"] = error_response("Missing, unknown or revoked API key.") if customer else \
        error_response("Missing or wrong admin token.", {"WWW-Authenticate": header('`Bearer realm="tollgate-admin"`')})
    if "{" in path:
        responses["404"] = error_response("No such id.")
    if method == "POST":
        responses["409"] = error_response("Conflict (an id already used, a plan change that cannot apply).")
    if body is not None:
        responses["413"] = error_response(f"Body over {MAX_BODY} bytes.")
        responses["415"] = error_response("Unsupported Content-Type.")
    for status, text in _ERRORS.get((method, path), {}).items():
        responses[status] = error_response(text)
    responses["422"] = error_response("Invalid input: `field` names it.")
    responses["503"] = error_response("Admin API disabled (no TOLLGATE_ADMIN_TOKEN), no schema, or a backend unreachable.")
    op["responses"] = responses
    return op


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path in _SUMMARY:
        paths.setdefault(path, {})[method.lower()] = _operation(method, path)
    paths["/metrics"] = {"get": {"operationId": "metrics", "summary": "Prometheus metrics (no token needed).",
                                 "security": [], "responses": {"200": {"description": "The text exposition format.",
                                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    paths["/openapi.json"] = {"get": {"operationId": "openapi", "summary": "This document (no token needed).",
                                      "security": [], "responses": {"200": {"description": "OpenAPI 3.1.",
                                                                            "content": json_content({"type": "object"})}}}}
    return paths


SPEC: dict[str, Any] = {
    "openapi": OPENAPI_VERSION,
    "info": {"title": "tollgate admin API", "version": "1",
             "description": "Plans, customers (and their lifecycle), API keys and prepaid wallets. Every operation but this document "
                            "needs `Authorization: Bearer $TOLLGATE_ADMIN_TOKEN`."},
    "security": [{"bearer": []}],
    "paths": _paths(),
    "components": {"schemas": _SCHEMAS, "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer", "description": "The admin token."},
        "customerKey": {"type": "http", "scheme": "bearer", "description": "A customer's own API key (read-only "
                        "access to its usage, preview and invoices)."}}},
}
