"""What happened to a request, and a customer's tier transitions and open holds.

A trace by correlation id (the gateway's request id, which the check and the usage report share):
the decision's hold (holds by request_id) and its lifecycle (hold_events), the usage events that
carried it (ledger_lines by correlation_id, then processed_events), their ledger lines, their
settlement (the processed_events figures: wallet / invoice split, settle sequence number) and any
tier promotion they caused. Every lookup is an index lookup.
"""
from __future__ import annotations

import asyncpg

from control.errors import InvalidInput, NotFound
from control.lookup import require_customer
from tollgate.money import format_micros

MAX_ID = 200


def _iso(ts) -> str | None:
    return None if ts is None else ts.isoformat()


def _money(v: int | None) -> str | None:
    return None if v is None else format_micros(v)


async def trace(db: asyncpg.Pool, correlation_id: str) -> dict:
    if not correlation_id or len(correlation_id) > MAX_ID or "\x00" in correlation_id:
        raise InvalidInput("correlation_id", f"1-{MAX_ID} characters")
    async with db.acquire() as conn:
        lines = await conn.fetch(
            "SELECT * FROM ledger_lines WHERE correlation_id = $1 ORDER BY event_id, line_no", correlation_id)
        event_ids = sorted({r["event_id"] for r in lines})
        events = await conn.fetch(
            "SELECT * FROM processed_events WHERE event_id = ANY($1::text[]) ORDER BY processed_at, event_id", event_ids)
        hold_ids = {r["hold_id"] for r in events if r["hold_id"]}
        holds = await conn.fetch(
            "SELECT * FROM holds WHERE request_id = $1 OR hold_id = ANY($2::text[]) ORDER BY placed_at NULLS LAST, hold_id",
            correlation_id, sorted(hold_ids))
        hold_events = await conn.fetch(
            "SELECT * FROM hold_events WHERE hold_id = ANY($1::text[]) ORDER BY at, id", [h["hold_id"] for h in holds])
        promotions = await conn.fetch(
            "SELECT * FROM tier_transitions WHERE event_id = ANY($1::text[]) ORDER BY at", event_ids)
    if not (lines or events or holds):
        raise NotFound("correlation_id", f"nothing recorded for {correlation_id!r}")
    by_event: dict[str, list] = {}
    for r in lines:
        by_event.setdefault(r["event_id"], []).append(
            {"line_no": r["line_no"], "kind": r["kind"], "charge_id": r["charge_id"], "metric": r["metric"],
             "dimension_key": r["dimension_key"], "quantity": r["quantity"],
             "unit_price": None if r["unit_price"] is None else str(r["unit_price"]),
             "amount": format_micros(r["amount_micros"]), "period": r["period"]})
    by_hold: dict[str, list] = {}
    for r in hold_events:
        by_hold.setdefault(r["hold_id"], []).append(
            {"kind": r["kind"], "amount": format_micros(r["amount_micros"]), "event_id": r["event_id"], "at": _iso(r["at"])})
    return {
        "correlation_id": correlation_id,
        "holds": [{"hold_id": h["hold_id"], "customer_id": h["customer_id"], "request_id": h["request_id"],
                   "key_id": h["key_id"], "amount": _money(h["amount_micros"]), "status": h["status"],
                   "placed_at": _iso(h["placed_at"]), "expires_at": _iso(h["expires_at"]),
                   "released": _money(h["released_micros"]), "event_id": h["event_id"],
                   "closed_at": _iso(h["closed_at"]), "lifecycle": by_hold.get(h["hold_id"], [])} for h in holds],
        "events": [{"event_id": e["event_id"], "kind": e["kind"], "customer_id": e["customer_id"],
                    "period": e["period"], "key_id": e["key_id"], "hold_id": e["hold_id"],
                    "processed_at": _iso(e["processed_at"]),
                    "settlement": {"spend": format_micros(e["spend_micros"]), "wallet": format_micros(e["wallet_micros"]),
                                   "invoice": format_micros(e["invoice_micros"]), "settle_seq": e["settle_seq"],
                                   "actual_tokens": e["actual_tokens"]},
                    "ledger_lines": by_event.get(e["event_id"], [])} for e in events],
        "tier_transitions": [_transition(r) for r in promotions],
    }


def _transition(r) -> dict:
    return {"period": r["period"], "old_tier": r["old_tier"], "new_tier": r["new_tier"], "reason": r["reason"],
            "event_id": r["event_id"], "spend": format_micros(r["spend_micros"]), "at": _iso(r["at"])}


async def tier_transitions(db: asyncpg.Pool, customer_id: str, *, limit: int = 100) -> list[dict]:
    """The customer's tier changes, newest first (promotions and period resets)."""
    async with db.acquire() as conn:
        await require_customer(conn, customer_id)
        rows = await conn.fetch(
            "SELECT * FROM tier_transitions WHERE customer_id = $1 ORDER BY at DESC, id DESC LIMIT $2", customer_id, limit)
    return [_transition(r) for r in rows]


async def open_holds(db: asyncpg.Pool, customer_id: str, *, limit: int = 100) -> list[dict]:
    """The customer's open holds as PostgreSQL recorded them, soonest to expire first."""
    async with db.acquire() as conn:
        await require_customer(conn, customer_id)
        rows = await conn.fetch(
            "SELECT * FROM holds WHERE customer_id = $1 AND status = 'open' ORDER BY expires_at, hold_id LIMIT $2",
            customer_id, limit)
    return [{"hold_id": h["hold_id"], "request_id": h["request_id"], "key_id": h["key_id"],
             "amount": _money(h["amount_micros"]), "estimated_tokens": h["estimated_tokens"],
             "placed_at": _iso(h["placed_at"]), "expires_at": _iso(h["expires_at"])} for h in rows]


async def decisions(db: asyncpg.Pool, customer_id: str, *, hours: int = 24) -> list[dict]:
    """The enforcer's decisions of the last `hours` hours (the current one included) by decision,
    reason and deciding level, most first (rater.decisions counts them from the bus)."""
    async with db.acquire() as conn:
        await require_customer(conn, customer_id)
        rows = await conn.fetch(
            "SELECT decision, reason, level, sum(count)::int8 AS count FROM decision_counts WHERE customer_id = $1"
            " AND hour >= date_trunc('hour', now()) - make_interval(hours => $2 - 1)"
            " GROUP BY decision, reason, level ORDER BY count DESC, decision, reason, level", customer_id, hours)
    return [{"decision": r["decision"], "reason": r["reason"], "level": r["level"] or None, "count": r["count"]}
            for r in rows]

