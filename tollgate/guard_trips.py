"""Margin Guard trips: recorded in PostgreSQL (`margin_guard_trips`, the truth), projected as
fields of the customer's guard hash in Redis (what lua/check.lua reads), reset by the session's
end or an operator. Shared by the rater (trips, session-end resets), the control plane (operator
resets, listing) and the projection rebuild (active deny trips -> fields).

Order of writes: the row first, then the Redis field. A crash in between leaves an active row
without its field; the next proposal of the same trip (the condition still holds, the batch is
redelivered) finds the row active and sets the field again, and a rebuild sets it from the row.
"""
from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any, NamedTuple

import orjson

from tollgate.alerts import raise_many
from tollgate.keys import CustomerKeys
from tollgate.margin_guard import ALERT_KIND


class Trip(NamedTuple):
    customer_id: str
    rule_id: str
    subject: str  # the guard hash field: customer | team:<id> | app:<id> | key:<id> | session:<id>
    period: str
    action: str  # deny | alert
    detail: dict[str, Any]
    source_event_id: str | None = None


def new_trip_id() -> str:
    return "mgt_" + secrets.token_hex(10)


async def record(conn, trips: list[Trip]) -> tuple[list[str], list[Trip]]:
    """Insert the proposed trips (once per rule, subject and period) and raise an alert for each
    new one, in the caller's transaction. Returns (new trip ids, the proposed deny trips that are
    active now: new, or recorded earlier and not reset), whose fields the caller sets in Redis."""
    if not trips:
        return [], []
    rows = await conn.fetch(
        "INSERT INTO margin_guard_trips (id, customer_id, rule_id, subject, period, action, detail, source_event_id)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::text[])"
        " ON CONFLICT (customer_id, rule_id, subject, period) DO NOTHING RETURNING id, customer_id, rule_id, subject, period",
        [new_trip_id() for _ in trips], [t.customer_id for t in trips], [t.rule_id for t in trips],
        [t.subject for t in trips], [t.period for t in trips], [t.action for t in trips],
        [orjson.dumps(t.detail).decode() for t in trips], [t.source_event_id for t in trips])
    new = {(r["customer_id"], r["rule_id"], r["subject"], r["period"]): r["id"] for r in rows}
    alerts = [(t.customer_id, ALERT_KIND, f"{t.rule_id}:{t.subject}", t.period,
               {"trip_id": new[(t.customer_id, t.rule_id, t.subject, t.period)], "rule_id": t.rule_id,
                "subject": t.subject, "action": t.action, **t.detail}, t.source_event_id)
              for t in trips if (t.customer_id, t.rule_id, t.subject, t.period) in new]
    await raise_many(conn, alerts)
    deny = [t for t in trips if t.action == "deny"]
    if not deny:
        return list(new.values()), []
    active = await conn.fetch(
        "SELECT m.customer_id, m.rule_id, m.subject, m.period FROM margin_guard_trips m"
        " JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(c, r, s, p)"
        " ON m.customer_id = u.c AND m.rule_id = u.r AND m.subject = u.s AND m.period = u.p WHERE m.reset_at IS NULL",
        [t.customer_id for t in deny], [t.rule_id for t in deny], [t.subject for t in deny], [t.period for t in deny])
    live = {tuple(r.values()) for r in active} | set(new)
    return list(new.values()), [t for t in deny if (t.customer_id, t.rule_id, t.subject, t.period) in live]


async def set_fields(redis, trips: Iterable[Trip]) -> None:
    """The Redis side of active deny trips: one HSET per customer."""
    by_customer: dict[str, dict[str, str]] = {}
    for t in trips:
        by_customer.setdefault(t.customer_id, {})[t.subject] = t.rule_id
    for customer_id, fields in by_customer.items():
        await redis.hset(CustomerKeys(customer_id).guard, mapping=fields)


async def reset(conn, redis, customer_id: str, *, trip_id: str | None = None, subject: str | None = None,
                by: str) -> list[dict[str, Any]]:
    """Reset the customer's active trips (one by id, or all of a subject); their Redis fields go
    unless another active deny trip still holds the same subject. Returns the trips reset."""
    async with conn.transaction():
        rows = await conn.fetch(
            "UPDATE margin_guard_trips SET reset_at = now(), reset_by = $4"
            " WHERE customer_id = $1 AND reset_at IS NULL AND ($2::text IS NULL OR id = $2) AND ($3::text IS NULL OR subject = $3)"
            " RETURNING id, rule_id, subject, period, action, reset_at, reset_by",
            customer_id, trip_id, subject, by)
        subjects = {r["subject"] for r in rows if r["action"] == "deny"}
        still = {r["subject"] for r in await conn.fetch(
            "SELECT DISTINCT subject FROM margin_guard_trips WHERE customer_id = $1 AND reset_at IS NULL AND action = 'deny'"
            " AND subject = ANY($2::text[])", customer_id, list(subjects))} if subjects else set()
    gone = sorted(subjects - still)
    if gone:
        await redis.hdel(CustomerKeys(customer_id).guard, *gone)
    return [dict(r) for r in rows]


async def active_deny_fields(conn, customer_ids: list[str] | None = None) -> dict[str, dict[str, str]]:
    """customer -> {guard field: rule id} of the active deny trips (the projection rebuild)."""
    rows = await conn.fetch(
        "SELECT customer_id, subject, rule_id FROM margin_guard_trips WHERE reset_at IS NULL AND action = 'deny'"
        " AND ($1::text[] IS NULL OR customer_id = ANY($1::text[])) ORDER BY tripped_at", customer_ids)
    out: dict[str, dict[str, str]] = {}
    for c, s, r in rows:
        out.setdefault(c, {})[s] = r
    return out
