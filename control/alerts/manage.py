"""Alerts: webhook endpoints, per-customer alert settings, and reading alerts and their deliveries
(used by the CLI and the admin API). Raising is the raisers' (tollgate.alerts), delivery the
worker's (control.alerts.delivery).

An endpoint belongs to one customer or, without one, to every customer; `kinds` limits it to some
alert kinds (empty: all). Its secret signs every delivery and is returned only at creation.
"""
from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson

from control.errors import InvalidInput, NotFound
from control.fields import ident, iso, text
from control.lookup import known_id, require_customer, require_plan
from tollgate import alert_rules
from tollgate.alerts import NOTIFY_CHANNEL

MAX_PAGE = 1000
MAX_URL = 2000
STATUSES = ("pending", "delivered", "failed")


def new_endpoint_id() -> str:
    return f"whe_{secrets.token_hex(8)}"


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _url(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in value):
        raise InvalidInput("url", f"required: an http(s) URL of at most {MAX_URL} characters, no spaces")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (a bad port raises here)
    except ValueError:
        raise InvalidInput("url", "not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("url", "must be an http:// or https:// URL with a host")
    return value


def _kinds(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput("kinds", f"must be a list of alert kinds ({', '.join(alert_rules.KINDS)})")
    for i, k in enumerate(value):
        if k not in alert_rules.KINDS:
            raise InvalidInput(f"kinds[{i}]", f"must be one of {', '.join(alert_rules.KINDS)}")
    return sorted(set(value))


def _limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidInput("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    return limit


# --------------------------------------------------------------------------- endpoints


async def create_endpoint(db: asyncpg.Pool, *, url: Any, customer_id: Any = None, kinds: Any = None,
                          description: Any = None) -> dict:
    """The new endpoint with its `secret`: the only time the secret is shown."""
    url = _url(url)
    kinds = _kinds(kinds)
    description = text(description, "description", max_len=500, required=False)
    async with db.acquire() as conn:
        if customer_id is not None:
            await require_customer(conn, ident(customer_id, "customer_id"), missing=InvalidInput)
        row = await conn.fetchrow(
            "INSERT INTO webhook_endpoints (id, customer_id, url, secret, kinds, description)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
            new_endpoint_id(), customer_id, url, new_secret(), kinds, description)
    return {**endpoint_view(row), "secret": row["secret"]}


async def list_endpoints(db: asyncpg.Pool, customer_id: Any = None) -> list[dict]:
    """A customer's endpoints and the global ones (all endpoints without a customer)."""
    cid = None if customer_id is None else ident(customer_id, "customer_id")
    rows = await db.fetch("SELECT * FROM webhook_endpoints WHERE $1::text IS NULL OR customer_id = $1"
                          " OR customer_id IS NULL ORDER BY created_at, id", cid)
    return [endpoint_view(r) for r in rows]


async def get_endpoint(db: asyncpg.Pool, endpoint_id: str) -> dict:
    return endpoint_view(await _require_endpoint(db, endpoint_id))


async def disable_endpoint(db: asyncpg.Pool, endpoint_id: str) -> dict:
    """Stops deliveries to it (pending ones end `failed`); its delivery log stays."""
    await _require_endpoint(db, endpoint_id)
    row = await db.fetchrow("UPDATE webhook_endpoints SET enabled = false WHERE id = $1 RETURNING *", endpoint_id)
    return endpoint_view(row)


async def _require_endpoint(db, endpoint_id: str) -> asyncpg.Record:
    return await _require(db, "webhook_endpoints", "webhook endpoint", endpoint_id)


async def _require(db, table: str, what: str, row_id: str) -> asyncpg.Record:
    """The row of `table` (one of ours, never input) by id, or 404 naming `id`."""
    row = await db.fetchrow(f"SELECT * FROM {table} WHERE id = $1", row_id) if known_id(row_id) else None
    if row is None:
        raise NotFound("id", f"no {what} {row_id!r}")
    return row


def endpoint_view(row: asyncpg.Record) -> dict:
    return {"id": row["id"], "customer_id": row["customer_id"], "url": row["url"], "kinds": list(row["kinds"]),
            "description": row["description"], "enabled": row["enabled"], "created_at": iso(row["created_at"])}


# --------------------------------------------------------------------------- settings


async def get_settings(db: asyncpg.Pool, customer_id: str) -> dict:
    async with db.acquire() as conn:
        row = await require_customer(conn, customer_id)
        plan = await require_plan(conn, row["plan_id"])
        doc = await conn.fetchval("SELECT settings FROM alert_settings WHERE customer_id = $1", customer_id)
    overrides = orjson.loads(doc) if doc else {}
    return _settings_view(customer_id, plan, overrides)


async def set_settings(db: asyncpg.Pool, customer_id: str, overrides: Any) -> dict:
    """Replace the customer's overrides (the plan's `alerts:` keys; null turns one off)."""
    if not isinstance(overrides, dict):
        raise InvalidInput("body", "must be a JSON object of alert settings")
    async with db.acquire() as conn, conn.transaction():
        row = await require_customer(conn, customer_id)
        plan = await require_plan(conn, row["plan_id"])
        try:
            alert_rules.merged(plan.document.get("alerts"), overrides)
        except alert_rules.AlertSettingsError as e:
            raise InvalidInput(e.field.removeprefix("alerts."), e.message) from None
        await conn.execute(
            "INSERT INTO alert_settings (customer_id, settings) VALUES ($1, $2::jsonb)"
            " ON CONFLICT (customer_id) DO UPDATE SET settings = excluded.settings, updated_at = now()",
            customer_id, orjson.dumps(overrides).decode())
    return _settings_view(customer_id, plan, overrides)


def _settings_view(customer_id: str, plan, overrides: dict) -> dict:
    try:
        effective = alert_rules.merged(plan.document.get("alerts"), overrides)
    except alert_rules.AlertSettingsError:  # overrides that no longer fit a changed plan
        effective = plan.alerts
    return {"customer_id": customer_id, "plan_id": plan.id, "overrides": overrides,
            "plan_defaults": plan.alerts.to_json(), "effective": effective.to_json()}


# --------------------------------------------------------------------------- alerts and deliveries


def event_of(row: asyncpg.Record) -> dict:
    """An alert as delivered: the webhook body and the bus event (docs/ARCHITECTURE.md, "Alerts")."""
    payload = row["payload"]
    return {"id": row["id"], "type": row["kind"], "customer_id": row["customer_id"], "threshold": row["threshold"],
            "period": row["period"], "raised_at": iso(row["raised_at"]),
            "data": orjson.loads(payload) if isinstance(payload, (str, bytes)) else payload,
            "source_event_id": row["source_event_id"]}


async def list_alerts(db: asyncpg.Pool, *, customer_id: Any = None, kind: Any = None, limit: Any = 100) -> list[dict]:
    """Newest first."""
    limit = _limit(limit)
    cid = None if customer_id is None else ident(customer_id, "customer_id")
    if kind is not None and kind not in alert_rules.KINDS:
        raise InvalidInput("kind", f"must be one of {', '.join(alert_rules.KINDS)}")
    rows = await db.fetch("SELECT * FROM alerts WHERE ($1::text IS NULL OR customer_id = $1)"
                          " AND ($2::text IS NULL OR kind = $2) ORDER BY raised_at DESC, id LIMIT $3", cid, kind, limit)
    return [event_of(r) for r in rows]


async def list_deliveries(db: asyncpg.Pool, *, customer_id: Any = None, alert_id: Any = None, endpoint_id: Any = None,
                          status: Any = None, limit: Any = 100) -> list[dict]:
    """The delivery log, newest first."""
    limit = _limit(limit)
    cid = None if customer_id is None else ident(customer_id, "customer_id")
    aid = None if alert_id is None else ident(alert_id, "alert_id")
    eid = None if endpoint_id is None else ident(endpoint_id, "endpoint_id")
    if status is not None and status not in STATUSES:
        raise InvalidInput("status", f"must be one of {', '.join(STATUSES)}")
    rows = await db.fetch(
        "SELECT * FROM webhook_deliveries WHERE ($1::text IS NULL OR customer_id = $1)"
        " AND ($2::text IS NULL OR alert_id = $2) AND ($3::text IS NULL OR endpoint_id = $3)"
        " AND ($4::text IS NULL OR status = $4) ORDER BY created_at DESC, id LIMIT $5", cid, aid, eid, status, limit)
    return [delivery_view(r) for r in rows]


async def get_delivery(db: asyncpg.Pool, delivery_id: str) -> dict:
    """A delivery with every attempt."""
    row = await _require_delivery(db, delivery_id)
    attempts = await db.fetch("SELECT * FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt", delivery_id)
    return {**delivery_view(row), "attempt_log": [
        {"attempt": a["attempt"], "at": iso(a["at"]), "status_code": a["status_code"], "error": a["error"],
         "duration_ms": a["duration_ms"]} for a in attempts]}


async def redeliver(db: asyncpg.Pool, delivery_id: str) -> dict:
    """Send it again now (whatever its status), with a fresh retry window."""
    await _require_delivery(db, delivery_id)
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), delivered_at = NULL,"
            " give_up_at = now() + (give_up_at - created_at) WHERE id = $1 RETURNING *", delivery_id)
        await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return delivery_view(row)


async def _require_delivery(db, delivery_id: str) -> asyncpg.Record:
    return await _require(db, "webhook_deliveries", "delivery", delivery_id)


def delivery_view(row: asyncpg.Record) -> dict:
    return {"id": row["id"], "alert_id": row["alert_id"], "endpoint_id": row["endpoint_id"],
            "customer_id": row["customer_id"], "status": row["status"], "attempts": row["attempts"],
            "next_attempt_at": iso(row["next_attempt_at"]) if row["status"] == "pending" else None,
            "give_up_at": iso(row["give_up_at"]), "last_status_code": row["last_status_code"],
            "last_error": row["last_error"], "created_at": iso(row["created_at"]),
            "delivered_at": iso(row["delivered_at"])}
